// y = x W^T on the GPU through cuBLAS (cublasGemmEx), the twin of kernels/cpu/matmul.h:
// x and W in the model dtype (bf16, fp16 or fp32), fp32 accumulation (CUBLAS_COMPUTE_32F: no
// TF32 for fp32 inputs, as PyTorch's default), y in fp32 (or the model dtype, rounded once
// from the fp32 result by cuBLAS, as PyTorch's bf16 linear layers are).
//
// Not row-invariant: cuBLAS may pick a different algorithm, hence a different summation order,
// for a different m, so a row's result can change in its last bits with the batch size
// (the CPU decode uses MatMulRowInvariant to avoid that; see docs/cuda-backend.md).
#pragma once

#include <cstdint>

#include <cublas_api.h>
#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "base/half.h"

namespace mesa::gpu {

// Owns a cuBLAS handle. Not thread-safe: one per engine thread (cuBLAS handles are not meant
// to be shared between threads issuing work concurrently).
class CublasHandle {
 public:
  static absl::StatusOr<CublasHandle> Create();
  CublasHandle() = default;
  ~CublasHandle();
  CublasHandle(CublasHandle&& other) noexcept;
  CublasHandle& operator=(CublasHandle&& other) noexcept;
  CublasHandle(const CublasHandle&) = delete;
  CublasHandle& operator=(const CublasHandle&) = delete;

  cublasHandle_t get() const { return handle_; }

 private:
  cublasHandle_t handle_ = nullptr;
};

// All pointers are device pointers, row-major.
struct GemmParams {
  int64_t m = 0;             // rows of x and y
  int64_t n = 0;             // rows of W = columns of y
  int64_t k = 0;             // columns of x and W
  const void* x = nullptr;   // [m, k] (rows ldx elements apart), type `in_type`
  int64_t ldx = 0;           // 0: k
  const void* w = nullptr;   // [n, k] contiguous, type `in_type`
  void* y = nullptr;         // [m, n] (rows ldy elements apart), type `out_type`
  int64_t ldy = 0;           // 0: n
  ScalarType in_type = ScalarType::kBf16;
  ScalarType out_type = ScalarType::kFp32;  // kFp32, or the same as in_type
  cudaStream_t stream = nullptr;
};

absl::Status Gemm(const CublasHandle& handle, const GemmParams& p);

}  // namespace mesa::gpu
