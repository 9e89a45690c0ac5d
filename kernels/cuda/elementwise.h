// Element-wise steps of a MesaNet block on the GPU, each the twin of a line of the CPU runner
// (engine/cpu_model_runner.cc) with its rounding points. All pointers are device pointers;
// "act" arrays hold the model dtype `act` (bf16/fp16 bits, or float for fp32 models); fp32
// inputs are raw GEMM outputs, rounded here where the CPU runner rounds them.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "base/half.h"

namespace mesa::gpu {

// SwiGLU: out[r, j] = act(silu(act(g)) * act(up)) with g = gate_up[r, j],
// up = gate_up[r, inter + j]. gate_up: fp32 [rows, 2*inter]; out: act [rows, inter].
absl::Status SwiGlu(void* out, const float* gate_up, int64_t rows, int64_t inter, ScalarType act,
                    cudaStream_t stream);

// The block's last residual add: x = act(x + act(u)). x: act [n] in place; u: fp32 [n].
absl::Status AddResidual(void* x, const float* u, int64_t n, ScalarType act, cudaStream_t stream);

// y = act(y) in place, fp32 storage (the logits: fla returns them in the model dtype).
absl::Status RoundInPlace(float* y, int64_t n, ScalarType act, cudaStream_t stream);

// out = act(in): fp32 values stored in the model dtype (the prefill mixer's output, which the
// chunk kernel writes as fp32 already rounded to the model dtype). out: act [n]; in: fp32 [n].
absl::Status ToAct(void* out, const float* in, int64_t n, ScalarType act, cudaStream_t stream);

// Embedding lookup: x[r] = table[tokens[r]]; x, table: act; tokens: int32 [rows], each in
// [0, vocab) (checked by the caller on the host: the kernel clamps to stay in bounds).
// With `feed` (int32 [rows]), a row r with feed[r] >= 0 takes fed_tokens[feed[r]] instead: a
// pipelined decode step's token chosen on the device by the step before.
absl::Status Embed(void* x, const void* table, const int32_t* tokens, int64_t rows, int64_t d,
                   int64_t vocab, ScalarType act, cudaStream_t stream,
                   const int32_t* feed = nullptr, const int32_t* fed_tokens = nullptr);

}  // namespace mesa::gpu
