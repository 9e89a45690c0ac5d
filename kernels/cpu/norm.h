// RMSNorm variants of fla (spec 3.2): fp32 compute, multiply by 1/rms first, then by the
// weight, one rounding to the model dtype (`out_rounding`) at the end.
#pragma once

#include <cstdint>

#include "base/half.h"

namespace mesa::cpu {

// out[r] = round(x[r] * rsqrt(mean(x[r]^2) + eps) * w) for each of `rows` rows of width d.
// `out` may alias `x`.
void RmsNorm(float* out, const float* x, const float* w, int64_t rows, int64_t d, float eps,
             Rounding out_rounding);

// fla's fused residual add + RMSNorm (prenorm=True): s = x + residual in fp32;
// residual_out = round(s); out = round(norm(s) * w) from the unrounded s.
// `residual_out` may alias `residual`.
void FusedAddRmsNorm(float* out, float* residual_out, const float* x, const float* residual,
                     const float* w, int64_t rows, int64_t d, float eps, Rounding out_rounding);

// Per-head RMSNorm of the mixer output, optionally gated by silu(z) (FusedRMSNormGated):
// y = round(((o * r) * w) * z * sigmoid(z)). o, z: [rows, heads*k]; w: [k]; z may be null.
void HeadRmsNorm(float* out, const float* o, const float* z, const float* w, int64_t rows,
                 int64_t heads, int64_t k, float eps, Rounding out_rounding);

}  // namespace mesa::cpu
