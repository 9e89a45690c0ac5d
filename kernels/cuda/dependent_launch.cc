#include "kernels/cuda/dependent_launch.h"

namespace mesa::gpu {
namespace {

thread_local bool dependent_launch = false;

}  // namespace

bool DependentLaunchOn() { return dependent_launch; }

DependentLaunchScope::DependentLaunchScope(bool on) : previous_(dependent_launch) {
  dependent_launch = on;
}

DependentLaunchScope::~DependentLaunchScope() { dependent_launch = previous_; }

}  // namespace mesa::gpu
