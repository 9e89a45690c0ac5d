// Distribution of CG iterations per (token, head), by layer and by position in the sequence,
// for the adaptive-CG study (`mesaserve perplexity --report`).
#pragma once

#include <cstdint>
#include <vector>

#include "engine/model_runner.h"
#include "nlohmann/json.hpp"

namespace mesa::cli {

class CgHistogram {
 public:
  // `adaptive`: whether solves that reach `cap` count as cap hits (in fixed mode they all do).
  CgHistogram(int32_t layers, int32_t cap, bool adaptive);
  // Adds the stats of `stats.rows` consecutive tokens starting at sequence position `start`.
  void Add(const CgStats& stats, int64_t start);
  nlohmann::json ToJson() const;

 private:
  static int32_t PositionBucket(int64_t pos);  // 0: [0,64), 1: [64,128), 2: [128,256), ...
  int32_t cap_;
  bool adaptive_;
  std::vector<std::vector<int64_t>> by_layer_;     // [layer][iters]
  std::vector<std::vector<int64_t>> by_position_;  // [bucket][iters]
  std::vector<double> residual_sum_by_layer_;
  std::vector<int64_t> count_by_layer_;
};

}  // namespace mesa::cli
