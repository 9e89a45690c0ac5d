// The CPU reference backend: the full MesaNet forward pass with fla's rounding points,
// BLIS/AVX2 GEMMs over bf16/fp16/fp32 weights, and a state pool in host memory.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "engine/model_runner.h"
#include "models/mesa_weights.h"

namespace mesa {

struct CpuRunnerOptions {
  int32_t num_slots = 4;
  // Longest run of tokens pushed through one layer at a time; longer prompts are split at
  // multiples of the 64-token chunk so the result equals a single pass (bounds memory).
  int32_t max_prefill_segment = 1024;
};

// Bytes of recurrent and conv state one sequence needs on the CPU backend (fp32).
size_t CpuStateBytesPerSlot(const MesaConfig& config);

absl::StatusOr<std::unique_ptr<ModelRunner>> CreateCpuModelRunner(MesaWeights weights,
                                                                  const CpuRunnerOptions& options);

}  // namespace mesa
