// Accumulates CG statistics over many steps and formats them for the CLI.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/model_runner.h"

namespace mesa::cli {

class CgSummary {
 public:
  void Add(const CgStats& stats, int32_t cap, bool adaptive);
  double mean_iters() const { return head_tokens_ ? static_cast<double>(total_) / head_tokens_ : 0.0; }
  int64_t head_tokens() const { return head_tokens_; }
  int64_t cap_hits() const { return cap_hits_; }
  // "mean 7.31 iters per head-token; by layer: 5.1 6.0 ...; cap hits 0.12%"
  std::string Format() const;

 private:
  int64_t total_ = 0, head_tokens_ = 0, cap_hits_ = 0;
  std::vector<int64_t> per_layer_total_, per_layer_count_;
};

}  // namespace mesa::cli
