#include "kernels/cpu/short_conv.h"

#include <vector>

#include "base/half.h"
#include "kernels/cpu/elementwise.h"

namespace mesa::cpu {

void ShortConvSilu(float* out, int64_t ldo, const float* x, int64_t ldx, int64_t t, int64_t c,
                   const float* w, int64_t width, float* state, Rounding out_rounding) {
  const int64_t hist = width - 1;
  // Window of the last `hist` inputs followed by this call's inputs, so every tap is one row.
  std::vector<float> window(static_cast<size_t>((hist + t) * c));
  for (int64_t i = 0; i < hist * c; ++i) window[i] = state[i];
  for (int64_t s = 0; s < t; ++s) {
    for (int64_t ch = 0; ch < c; ++ch) window[(hist + s) * c + ch] = x[s * ldx + ch];
  }
  for (int64_t s = 0; s < t; ++s) {
    for (int64_t ch = 0; ch < c; ++ch) {
      float acc = 0.0f;
      for (int64_t j = 0; j < width; ++j) acc += w[ch * width + j] * window[(s + j) * c + ch];
      out[s * ldo + ch] = ApplyRounding(Silu(acc), out_rounding);
    }
  }
  for (int64_t i = 0; i < hist * c; ++i) state[i] = window[t * c + i];
}

}  // namespace mesa::cpu
