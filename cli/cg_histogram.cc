#include "cli/cg_histogram.h"

#include <algorithm>

namespace mesa::cli {
namespace {

nlohmann::json Summarize(const std::vector<int64_t>& hist) {
  int64_t n = 0, total = 0;
  for (size_t i = 0; i < hist.size(); ++i) {
    n += hist[i];
    total += hist[i] * static_cast<int64_t>(i);
  }
  auto quantile = [&](double q) {
    int64_t seen = 0;
    const int64_t want = static_cast<int64_t>(q * static_cast<double>(n - 1));
    for (size_t i = 0; i < hist.size(); ++i) {
      seen += hist[i];
      if (seen > want) return static_cast<int64_t>(i);
    }
    return static_cast<int64_t>(hist.size()) - 1;
  };
  nlohmann::json j;
  j["count"] = n;
  j["mean"] = n ? static_cast<double>(total) / n : 0.0;
  j["p50"] = n ? quantile(0.5) : 0;
  j["p90"] = n ? quantile(0.9) : 0;
  j["p99"] = n ? quantile(0.99) : 0;
  j["max"] = n ? quantile(1.0) : 0;
  j["histogram"] = hist;
  return j;
}

}  // namespace

CgHistogram::CgHistogram(int32_t layers, int32_t cap, bool adaptive)
    : cap_(cap),
      adaptive_(adaptive),
      by_layer_(layers, std::vector<int64_t>(cap + 1, 0)),
      residual_sum_by_layer_(layers, 0.0),
      count_by_layer_(layers, 0) {}

int32_t CgHistogram::PositionBucket(int64_t pos) {
  int32_t b = 0;
  int64_t limit = 64;
  while (pos >= limit) {
    ++b;
    limit *= 2;
  }
  return b;
}

void CgHistogram::Add(const CgStats& s, int64_t start) {
  for (int32_t r = 0; r < s.rows; ++r) {
    const int32_t bucket = PositionBucket(start + r);
    if (static_cast<int32_t>(by_position_.size()) <= bucket) {
      by_position_.resize(bucket + 1, std::vector<int64_t>(cap_ + 1, 0));
    }
    for (int32_t l = 0; l < s.layers; ++l) {
      for (int32_t h = 0; h < s.heads; ++h) {
        const int32_t it = std::clamp(s.iters[s.index(r, l, h)], 0, cap_);
        ++by_layer_[l][it];
        ++by_position_[bucket][it];
        residual_sum_by_layer_[l] += s.residual[s.index(r, l, h)];
        ++count_by_layer_[l];
      }
    }
  }
}

nlohmann::json CgHistogram::ToJson() const {
  nlohmann::json j;
  std::vector<int64_t> all(cap_ + 1, 0);
  for (size_t l = 0; l < by_layer_.size(); ++l) {
    nlohmann::json layer = Summarize(by_layer_[l]);
    layer["layer"] = l;
    layer["mean_final_residual"] =
        count_by_layer_[l] ? residual_sum_by_layer_[l] / count_by_layer_[l] : 0.0;
    j["by_layer"].push_back(layer);
    for (int32_t i = 0; i <= cap_; ++i) all[i] += by_layer_[l][i];
  }
  int64_t lo = 0, hi = 64;
  for (const auto& hist : by_position_) {
    nlohmann::json b = Summarize(hist);
    b["positions"] = {lo, hi};
    j["by_position"].push_back(b);
    lo = hi;
    hi *= 2;
  }
  j["all"] = Summarize(all);
  // A solve at the cap may still have met the tolerance there; this counts the upper bound.
  j["cap_hits"] = adaptive_ ? all[cap_] : 0;
  return j;
}

}  // namespace mesa::cli
