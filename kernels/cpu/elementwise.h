// Scalar element-wise functions in fp32, with the same definitions PyTorch/Triton use.
#pragma once

#include <algorithm>
#include <cmath>

namespace mesa::cpu {

inline float Sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }
inline float Silu(float x) { return x / (1.0f + std::exp(-x)); }
// log(sigmoid(x)) without overflow, as torch.nn.functional.logsigmoid.
inline float LogSigmoid(float x) { return std::min(x, 0.0f) - std::log1p(std::exp(-std::fabs(x))); }

}  // namespace mesa::cpu
