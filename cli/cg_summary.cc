#include "cli/cg_summary.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace mesa::cli {

void CgSummary::Add(const CgStats& s, int32_t cap, bool adaptive) {
  if (per_layer_total_.size() < static_cast<size_t>(s.layers)) {
    per_layer_total_.resize(s.layers, 0);
    per_layer_count_.resize(s.layers, 0);
  }
  for (int32_t r = 0; r < s.rows; ++r) {
    for (int32_t l = 0; l < s.layers; ++l) {
      for (int32_t h = 0; h < s.heads; ++h) {
        const int32_t it = s.iters[s.index(r, l, h)];
        total_ += it;
        per_layer_total_[l] += it;
        per_layer_count_[l] += 1;
        ++head_tokens_;
        if (adaptive && it >= cap) ++cap_hits_;
      }
    }
  }
}

std::string CgSummary::Format() const {
  std::string out = absl::StrFormat("mean %.2f CG iterations per head-token; by layer:", mean_iters());
  for (size_t l = 0; l < per_layer_total_.size(); ++l) {
    const double m = per_layer_count_[l] ? static_cast<double>(per_layer_total_[l]) / per_layer_count_[l] : 0.0;
    absl::StrAppend(&out, absl::StrFormat(" %.1f", m));
  }
  absl::StrAppend(&out, absl::StrFormat("; cap hits %d (%.3f%%)", cap_hits_,
                                        head_tokens_ ? 100.0 * cap_hits_ / head_tokens_ : 0.0));
  return out;
}

}  // namespace mesa::cli
