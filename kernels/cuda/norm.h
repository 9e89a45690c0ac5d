// RMSNorm variants of fla on the GPU (spec 3.2), twins of kernels/cpu/norm.h: fp32 compute,
// multiply by 1/rms first, then by the weight, one rounding to the model dtype at the end
// (storing the result as `act`). All pointers are device pointers; "act" arrays hold the model
// dtype (bf16/fp16 bits, or float for fp32 models). One block per row (per (row, head) for
// HeadRmsNorm); the sum of squares is a block tree sum, where the GPU and CPU round differently.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "base/half.h"

namespace mesa::gpu {

// out[r] = act(x[r] * rsqrt(mean(x[r]^2) + eps) * w). x, out: act [rows, d]; w: [d].
// `out` may alias `x`. With `x_rows` (int32 [rows], device), out[r] normalises row x_rows[r] of
// x instead (a gather: the prefill's logit rows in one launch); then `out` must not alias `x`.
absl::Status RmsNorm(void* out, const void* x, const float* w, int64_t rows, int64_t d, float eps,
                     ScalarType act, cudaStream_t stream, const int32_t* x_rows = nullptr);

// fla's fused residual add + RMSNorm (prenorm=True), after the o_proj GEMM:
// s = act(x) + residual in fp32 (x is the fp32 GEMM output; act(x) is the CPU runner's
// Round(u) before its FusedAddRmsNorm call); residual_out = act(s); out = act(norm(s) * w)
// from the unrounded s. x: fp32 [rows, d]; residual, residual_out, out: act [rows, d].
// `residual_out` may alias `residual`.
absl::Status FusedAddRmsNorm(void* out, void* residual_out, const float* x, const void* residual,
                             const float* w, int64_t rows, int64_t d, float eps, ScalarType act,
                             cudaStream_t stream);

// Per-head RMSNorm of the mixer output, optionally gated by silu(z) (FusedRMSNormGated):
// y = act(((o * r) * w) * silu(z)). o, z, out: act [rows, heads*k]; w: [k]; z may be null.
// `out` may alias `o`.
absl::Status HeadRmsNorm(void* out, const void* o, const void* z, const float* w, int64_t rows,
                         int64_t heads, int64_t k, float eps, ScalarType act, cudaStream_t stream);

}  // namespace mesa::gpu
