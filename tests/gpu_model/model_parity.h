// Model-level parity harness for the CUDA runner (tests/gpu_model): random checkpoints in a
// chosen dtype and shape, a decode scenario run through the CPU runner, the reference decoder
// and a decoder under test, and the differences measured as fla's error ratio.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/cuda_model_runner.h"
#include "engine/model_runner.h"
#include "models/mesa_weights.h"

namespace mesa::testing {

struct ModelCase {
  std::string name;
  ScalarType dtype = ScalarType::kBf16;
  bool output_gate = true;
  bool fuse_norm = true;
  bool tied = false;
  int32_t num_heads = 4, head_dim = 16, hidden_size = 64;
};
// Readable test listings (gtest finds PrintTo by ADL).
inline void PrintTo(const ModelCase& c, std::ostream* os) { *os << c.name; }

// The cases every model-level GPU test runs: bf16 and fp16, gated and not, fused residual norm
// and not, tied embeddings, and a wider head (K = 64, two warps per block).
std::vector<ModelCase> ModelCases();

// Writes a random checkpoint for `c` (once per case and process) and loads it.
absl::StatusOr<MesaWeights> LoadCaseWeights(const ModelCase& c);

// A CUDA runner on the first case's checkpoint with `slots` slots (null after a test failure).
std::unique_ptr<CudaModelRunner> MakeFirstCaseRunner(int32_t slots);

// The decode under test: ModelRunner::Decode, or a reference decoder.
using DecodeFn = std::function<absl::Status(absl::Span<const DecodeRow>, DecodeResult*)>;
// The state of a slot in the CPU runner's layout.
using StateFn = std::function<absl::Status(SlotId, std::vector<float>*)>;

// Worst differences of a decoder against the expected one over a scenario.
struct ParityStats {
  double logits_ratio = 0;     // max over steps of ErrorRatio(logits of live rows)
  double logits_max_frac = 0;  // max |diff| / max |expected| over steps
  double h_ratio = 0;          // max over live slots and layers of ErrorRatio(H_kk | H_kv)
  double conv_ratio = 0;       // same for the conv states
  int32_t iter_max_diff = 0;   // max |iterations - expected| over (row, step, layer, head)
  double iter_mismatch_frac = 0;  // fraction of live (row, step, layer, head) that differ
  bool pad_rows_zero = true;   // pad rows: logits and statistics all zero
  std::string Summary() const;
};

// Decodes `steps` random tokens into `slots` (kPadSlot = a pad row) from fresh (zero) slots,
// with the decoder under test and the expected one, and compares them. Slots must be zero on
// entry for both. Empty state functions skip the state comparison.
ParityStats CompareDecode(const MesaConfig& config, absl::Span<const SlotId> slots, int steps,
                          const CgControl& cg, uint64_t seed, const DecodeFn& test,
                          const StateFn& test_state, const DecodeFn& expected,
                          const StateFn& expected_state);

}  // namespace mesa::testing
