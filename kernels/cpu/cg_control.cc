#include "kernels/cg_control.h"

namespace mesa {

const char* CgModeName(CgMode mode) {
  switch (mode) {
    case CgMode::kFixed: return "fixed";
    case CgMode::kAdaptive: return "adaptive";
  }
  return "unknown";
}

}  // namespace mesa
