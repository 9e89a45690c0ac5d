#include "engine/cg_settings.h"

#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"

namespace mesa {

absl::StatusOr<CgMode> ParseCgMode(std::string_view text) {
  if (text == "fixed") return CgMode::kFixed;
  if (text == "adaptive") return CgMode::kAdaptive;
  return absl::InvalidArgumentError(
      absl::StrCat("CG mode '", std::string(text), "' is not one of: fixed, adaptive"));
}

absl::Status ValidateCgSettings(const CgSettings& s) {
  if (!(s.tol > 0.0f && s.tol < 1.0f) || !std::isfinite(s.tol)) {
    return absl::InvalidArgumentError(
        absl::StrCat("CG tolerance ", s.tol, " is outside the allowed range (0, 1)"));
  }
  if (s.max_iters < 0 || s.max_iters > kMaxCgIters) {
    return absl::InvalidArgumentError(absl::StrCat("CG iteration cap ", s.max_iters,
                                                   " is outside the allowed range [0, ",
                                                   kMaxCgIters, "] (0 = the model's default)"));
  }
  return absl::OkStatus();
}

CgControl PrefillCgControl(const CgSettings& s, const MesaConfig& config) {
  return CgControl{s.mode, s.max_iters > 0 ? s.max_iters : config.max_cg_step_training, s.tol};
}

CgControl DecodeCgControl(const CgSettings& s, const MesaConfig& config) {
  return CgControl{s.mode, s.max_iters > 0 ? s.max_iters : config.max_cg_step_decoding, s.tol};
}

}  // namespace mesa
