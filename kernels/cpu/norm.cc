#include "kernels/cpu/norm.h"

#include <cmath>
#include <vector>

#include "base/half.h"
#include "kernels/cpu/elementwise.h"

namespace mesa::cpu {
namespace {

inline float InvRms(const float* x, int64_t d, float eps) {
  float ss = 0.0f;
  for (int64_t j = 0; j < d; ++j) ss += x[j] * x[j];
  return 1.0f / std::sqrt(ss / static_cast<float>(d) + eps);
}

}  // namespace

void RmsNorm(float* out, const float* x, const float* w, int64_t rows, int64_t d, float eps,
             Rounding out_rounding) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * d;
    float* yr = out + r * d;
    const float inv = InvRms(xr, d, eps);
    for (int64_t j = 0; j < d; ++j) yr[j] = ApplyRounding((xr[j] * inv) * w[j], out_rounding);
  }
}

void FusedAddRmsNorm(float* out, float* residual_out, const float* x, const float* residual,
                     const float* w, int64_t rows, int64_t d, float eps, Rounding out_rounding) {
  std::vector<float> s(static_cast<size_t>(d));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < d; ++j) s[j] = x[r * d + j] + residual[r * d + j];
    const float inv = InvRms(s.data(), d, eps);
    for (int64_t j = 0; j < d; ++j) {
      residual_out[r * d + j] = ApplyRounding(s[j], out_rounding);
      out[r * d + j] = ApplyRounding((s[j] * inv) * w[j], out_rounding);
    }
  }
}

void HeadRmsNorm(float* out, const float* o, const float* z, const float* w, int64_t rows,
                 int64_t heads, int64_t k, float eps, Rounding out_rounding) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t base = (r * heads + h) * k;
      const float inv = InvRms(o + base, k, eps);
      for (int64_t j = 0; j < k; ++j) {
        float y = (o[base + j] * inv) * w[j];
        if (z != nullptr) y = y * Silu(z[base + j]);
        out[base + j] = ApplyRounding(y, out_rounding);
      }
    }
  }
}

}  // namespace mesa::cpu
