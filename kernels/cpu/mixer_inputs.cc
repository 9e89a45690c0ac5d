#include "kernels/cpu/mixer_inputs.h"

#include <cmath>

#include "base/half.h"
#include "kernels/cpu/elementwise.h"

namespace mesa::cpu {

void L2NormHeads(float* x, int64_t rows, int64_t heads, int64_t k, int64_t ld, Rounding rounding) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t h = 0; h < heads; ++h) {
      float* v = x + r * ld + h * k;
      float ss = 0.0f;
      for (int64_t j = 0; j < k; ++j) ss += v[j] * v[j];
      const float inv = 1.0f / std::sqrt(ss + 1e-6f);
      for (int64_t j = 0; j < k; ++j) v[j] = ApplyRounding(v[j] * inv, rounding);
    }
  }
}

void MesaGates(float* log_decay, float* beta, const float* a_logits, const float* b_logits,
               int64_t rows, int64_t heads, int64_t ld) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t h = 0; h < heads; ++h) {
      log_decay[r * heads + h] = LogSigmoid(a_logits[r * ld + h]);
      beta[r * heads + h] = Sigmoid(b_logits[r * ld + h]);
    }
  }
}

}  // namespace mesa::cpu
