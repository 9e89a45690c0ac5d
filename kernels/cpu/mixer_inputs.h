// Per-token preparation of the MesaNet mixer inputs: l2 normalisation of q and k per head
// and the beta / log-decay gates (spec 3.4).
#pragma once

#include <cstdint>

#include "base/half.h"

namespace mesa::cpu {

using ::mesa::ApplyRounding;
using ::mesa::Rounding;

// x: [rows, heads*k]; each head's k-vector becomes x / sqrt(|x|^2 + 1e-6), then rounded
// (fla: fp16 in prefill, bf16 in decode). In place.
void L2NormHeads(float* x, int64_t rows, int64_t heads, int64_t k, int64_t ld, Rounding rounding);

// a_logits, b_logits: bf16-valued gate logits (bias included), [rows, heads], rows `ld` apart.
// log_decay = logsigmoid(a), beta = sigmoid(b), both fp32 [rows, heads].
void MesaGates(float* log_decay, float* beta, const float* a_logits, const float* b_logits,
               int64_t rows, int64_t heads, int64_t ld);


}  // namespace mesa::cpu
