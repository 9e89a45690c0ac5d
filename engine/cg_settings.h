// User-facing CG settings (per server, per request) and how they become the CgControl of a
// prefill or decode step for a given model.
#pragma once

#include <cstdint>
#include <string_view>

#include "absl/status/statusor.h"
#include "kernels/cg_control.h"
#include "models/mesa_config.h"

namespace mesa {

// Defaults chosen from the adaptive-CG study on the bundled model (docs/adaptive-cg.md).
inline constexpr CgMode kDefaultCgMode = CgMode::kAdaptive;
inline constexpr float kDefaultCgTol = 1e-3f;
inline constexpr int32_t kMaxCgIters = 1000;

struct CgSettings {
  CgMode mode = kDefaultCgMode;
  float tol = kDefaultCgTol;
  // 0 = the model's own counts (config max_cg_step_training for prefill,
  // max_cg_step_decoding for decode), which is what fla runs.
  int32_t max_iters = 0;
};

absl::StatusOr<CgMode> ParseCgMode(std::string_view text);
absl::Status ValidateCgSettings(const CgSettings& s);

CgControl PrefillCgControl(const CgSettings& s, const MesaConfig& config);
CgControl DecodeCgControl(const CgSettings& s, const MesaConfig& config);

}  // namespace mesa
