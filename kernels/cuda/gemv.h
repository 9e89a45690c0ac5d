// y = x W^T for one row of x: the decode steps' batch-1 GEMMs, where cuBLASLt's kernels reached
// about half the memory bandwidth that streaming the weights needs (Nsight Compute on an H200,
// random 1.3B at batch 1: 50 us per layer for 26 us of weight bytes). One warp per output
// column streams that row of W with 16-byte loads (narrow products, too few columns to fill the
// card, split each row along k over 2 to 8 warps: the 1.3B's o_proj and down projections went
// from 5.0 and 11.3 us to 4.0 and 8.3 us, H200 23:37 UTC); x comes from L1. Inputs bf16 or fp16, fp32
// accumulation and output, like Gemm's fp32-output case (the sum's order differs, within Gemm's
// tolerance). Measured (H200, 2026-11-26 21:42 UTC, with and without it alternated in one call):
// a batch-1 step of the random 1.3B 2.17 -> 2.08 ms fixed 30, 1.76 -> 1.67 ms adaptive; the
// bundled model 0.37 -> 0.35 ms. The same kernel for 2 and 4 rows was slower than cuBLASLt
// (21:40 UTC: 2.21 -> 2.32 ms and 2.27 -> 2.46 ms), hence one row.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "base/half.h"

namespace mesa::gpu {

inline constexpr int64_t kGemvMaxRows = 1;

// Whether Gemv takes a product of m rows: kGemvMaxRows (one) row, bf16/fp16 inputs, k a
// multiple of 8 and x and W 16-byte aligned (W's rows then are too). One row has no strides.
bool GemvApplies(int64_t m, int64_t k, const void* x, const void* w, ScalarType in_type);

// y[n] (fp32) = W[n, k] x[k]; requires GemvApplies(1, k, x, w, in_type).
absl::Status Gemv(float* y, const void* x, const void* w, int64_t n, int64_t k, ScalarType in_type,
                  cudaStream_t stream);

// x[n] += y as AddResidual does (x in the model dtype `in_type`, y rounded to it first) for
// y = W[n, k] row[k], without writing y: the batch-1 down projection and its residual in one
// launch. Bit for bit Gemv then AddResidual. Requires GemvApplies(1, k, row, w, in_type).
absl::Status GemvAddResidual(void* x, const void* row, const void* w, int64_t n, int64_t k,
                             ScalarType in_type, cudaStream_t stream);

}  // namespace mesa::gpu
