// RMSNorm variants of fla (spec 3.2): fp32 compute, multiply by 1/rms first, then by the
// weight, one rounding to the model dtype (bf16) at the end.
#pragma once

#include <cstdint>

namespace mesa::cpu {

// out[r] = bf16(x[r] * rsqrt(mean(x[r]^2) + eps) * w) for each of `rows` rows of width d.
// `out` may alias `x`.
void RmsNorm(float* out, const float* x, const float* w, int64_t rows, int64_t d, float eps);

// fla's fused residual add + RMSNorm (prenorm=True): s = x + residual in fp32;
// residual_out = bf16(s); out = bf16(norm(s) * w) from the unrounded s.
// `residual_out` may alias `residual`.
void FusedAddRmsNorm(float* out, float* residual_out, const float* x, const float* residual,
                     const float* w, int64_t rows, int64_t d, float eps);

// Per-head RMSNorm of the mixer output, optionally gated by silu(z) (FusedRMSNormGated):
// y = bf16(((o * r) * w) * z * sigmoid(z)). o, z: [rows, heads*k]; w: [k]; z may be null.
void HeadRmsNorm(float* out, const float* o, const float* z, const float* w, int64_t rows,
                 int64_t heads, int64_t k, float eps);

}  // namespace mesa::cpu
