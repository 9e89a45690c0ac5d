#include "tests/gpu_model/device_trap.h"

namespace mesa::testing {
namespace {

__global__ void Trap() { __trap(); }

}  // namespace

void LaunchDeviceTrap() { Trap<<<1, 1>>>(); }

}  // namespace mesa::testing
