// A CPU decoder with an inspectable state pool, for the CUDA runner's state checks: the CPU
// runner (engine/cpu_model_runner.cc) keeps its states private, so this is a copy of its
// Decode on the same CPU kernels and the same slot layout. The test
// `ReferenceDecoder.MatchesCpuRunnerBitExactly` proves the copy faithful (identical logits and
// CG statistics), so its states stand for the CPU runner's.
//
// `perturb_gemm_order` replaces the CPU runner's fp32 FMA chain in every GEMM by the exact sum
// moved by a random relative error of sqrt(k) * 2^-24, the typical error of another fp32
// summation order: how much that moves the logits and states measures the model's sensitivity
// to summation order, the way the GPU (cuBLAS GEMMs, tree sums) differs from the CPU. The GPU
// tolerances are checked against it.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "absl/types/span.h"
#include "engine/model_runner.h"
#include "models/mesa_weights.h"

namespace mesa::testing {

class ReferenceDecoder {
 public:
  ReferenceDecoder(MesaWeights weights, int32_t num_slots, bool perturb_gemm_order = false);

  // As ModelRunner::Decode (rows validated by the caller).
  void Decode(absl::Span<const DecodeRow> rows, DecodeResult* result);
  // The slot's state in the CPU runner's layout (per layer H_kk, H_kv, conv_q, conv_k).
  absl::Span<const float> SlotState(SlotId slot) const;
  int64_t slot_floats() const { return slot_floats_; }
  const MesaConfig& config() const { return w_.config; }

 private:
  void Gemm(float* y, const float* x, int64_t n, const WeightMatrix& w);
  float Round(float x) const;

  MesaWeights w_;
  bool perturb_;
  int64_t h_kv_ = 0, conv_q_ = 0, conv_k_ = 0, stride_ = 0, slot_floats_ = 0;
  std::vector<float> states_;
  std::mt19937_64 rng_{12345};  // the perturbation's, fixed: runs are reproducible
};

}  // namespace mesa::testing
