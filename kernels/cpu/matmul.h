// y = x W^T with bf16 weights and fp32 inputs/accumulation (the CPU analogue of a cuBLAS
// bf16 GEMM with fp32 accumulate). The caller rounds y to the model dtype where fla does.
#pragma once

#include <cstdint>

namespace mesa::cpu {

// y: [m, n] fp32 (overwritten), x: [m, k] fp32, w: [n, k] bf16 bits, row-major.
// Small m (decode) streams each weight row once for all m inputs; larger m (prefill)
// converts 64-row panels of W to fp32 and runs single-threaded OpenBLAS sgemm per panel,
// with the panels spread over the OpenMP threads.
// Makes OpenBLAS single-threaded (once): our OpenMP threads call it on independent blocks,
// and nested thread pools would oversubscribe the cores.
void InitBlasThreads();

void MatMulBf16(float* y, const float* x, int64_t m, const uint16_t* w, int64_t n, int64_t k);

}  // namespace mesa::cpu
