// fla's short causal depthwise convolution with SiLU (spec 3.4, 5.3), on one sequence.
#pragma once

#include <cstdint>

#include "base/half.h"

namespace mesa::cpu {

// x: [t, c] pre-conv projections (bf16 values), rows `ldx` floats apart.
// w: [c, width] (tap width-1 multiplies the current token).
// state: [width-1, c], the previous width-1 inputs, oldest first (zeros at sequence start);
//        updated in place to the last width-1 inputs.
// out: [t, c] = round(silu(sum_j w[c,j] * x[t-width+1+j, c])), rows `ldo` floats apart.
void ShortConvSilu(float* out, int64_t ldo, const float* x, int64_t ldx, int64_t t, int64_t c,
                   const float* w, int64_t width, float* state, Rounding out_rounding);

}  // namespace mesa::cpu
