// The fused MesaNet decode step for one layer on the GPU: the twin of
// kernels/cpu/mesa_decode.h (spec 3.6), with the same parameter semantics:
//   H_kk = exp(g) H_kk + (beta k) k^T,  H_kv = exp(g) H_kv + (beta k) v^T   (fp32, in place)
//   x ~= (H_kk + diag(lambda))^-1 q by CG from the Jacobi guess (fixed = fla's iteration,
//   adaptive = stop per (row, head) at |r| <= tol |q| or the cap),   o = H_kv^T x.
// One thread block per (row, head); each state matrix is read from device memory once and
// written once; the CG runs on chip in fp32.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "base/half.h"
#include "kernels/cg_control.h"

namespace mesa::gpu {

// Largest head_dim the kernel takes (the config parser's kMaxHeadDim).
inline constexpr int32_t kMaxDecodeHeadDim = 128;

// All pointers are device pointers. "act" arrays hold the model dtype `act`
// (bf16/fp16 bits, or float for fp32 models).
struct MesaDecodeParams {
  int32_t batch = 0;      // B
  int32_t num_heads = 0;  // H
  int32_t head_dim = 0;   // K (= V), 1..kMaxDecodeHeadDim
  float* const* h_kk = nullptr;  // [B] -> [H, K, K] this layer's state of the row's slot;
                                 // a null entry is a pad row: skipped, its output zeroed
  float* const* h_kv = nullptr;  // [B] -> [H, K, V]
  const void* q = nullptr;       // act [B, H*K] l2-normalised
  const void* k = nullptr;       // act [B, H*K] l2-normalised
  const void* v = nullptr;       // act [B, H*V]
  const float* log_decay = nullptr;  // [B, H] g = logsigmoid(a) <= 0
  const float* beta = nullptr;       // [B, H]
  const float* lambda = nullptr;     // [H*K]
  const CgControl* cg = nullptr;     // [B]: per-row (per-request) CG settings
  void* out = nullptr;               // act [B, H*V]
  ScalarType act = ScalarType::kBf16;
  int32_t* cg_iters = nullptr;       // [B, H] optional: CG steps taken
  float* cg_residual = nullptr;      // [B, H] optional: final |r| / |q|
  cudaStream_t stream = nullptr;
};

// Enqueues the step on p.stream. Returns kInvalidArgument for shapes the kernel does not take
// and the launch error otherwise; execution errors surface at the next synchronising call.
absl::Status MesaDecodeStep(const MesaDecodeParams& p);

// Dynamic shared memory one block of the decode kernel uses for head_dim k (bytes).
size_t MesaDecodeSharedBytes(int32_t k);

}  // namespace mesa::gpu
