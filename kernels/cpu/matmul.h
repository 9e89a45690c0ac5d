// y = x W^T with bf16, fp16 or fp32 weights and fp32 inputs/accumulation (the CPU analogue of
// a cuBLAS GEMM with fp32 accumulate). The caller rounds y to the model dtype where fla does.
#pragma once

#include <cstdint>

#include "base/half.h"

namespace mesa::cpu {

// Makes BLAS single-threaded (once): our OpenMP threads call it on independent blocks,
// and nested thread pools would oversubscribe the cores.
void InitBlasThreads();

// y: [m, n] fp32 (overwritten), x: [m, k] fp32, w: [n, k] row-major, elements of `w_type`
// (uint16 bits for bf16/fp16, float for fp32).
// Small m (decode) streams each weight row once for all m inputs; larger m (prefill)
// converts 64-row panels of W to fp32 and runs single-threaded BLIS sgemm per panel,
// with the panels spread over the OpenMP threads.
void MatMul(float* y, const float* x, int64_t m, const void* w, ScalarType w_type, int64_t n,
            int64_t k);

// Like MatMul, but each output row is computed by the same instruction sequence whatever m is
// (groups of at most 8 rows stream W once each). Decode uses it so that a sequence's tokens do
// not depend on which other sequences share its batch.
void MatMulRowInvariant(float* y, const float* x, int64_t m, const void* w, ScalarType w_type,
                        int64_t n, int64_t k);

}  // namespace mesa::cpu
