// y = x W^T on the GPU through cuBLASLt, the twin of kernels/cpu/matmul.h: x and W in the model
// dtype (bf16, fp16 or fp32), fp32 accumulation (CUBLAS_COMPUTE_32F: no TF32 for fp32 inputs,
// as PyTorch's default), y in fp32 (or the model dtype, rounded once from the fp32 result, as
// PyTorch's bf16 linear layers are).
//
// Why cuBLASLt and not cublasGemmEx: for small m and large k cuBLAS picks split-K, and its
// in-place reduction scheme sums the partial products in the *output* type. With a bf16/fp16
// output that rounds every partial sum (measured on an H200: fp16, m 17, n 300, k 1000 was
// off by 85 ulps of the result). Here the plan may only reduce in the compute type (fp32), in
// a workspace allocated once at creation (no allocation on the request path, and what CUDA
// graphs need).
//
// Products of at most kGemvMaxRows rows with fp32 output go to Gemv (kernels/cuda/gemv.h)
// unless algo_rows is set.
//
// By default not row-invariant: a different m may get a different algorithm, hence a different
// summation order, so a row's result can change in its last bits with the batch size.
// GemmParams::algo_rows pins one algorithm (without split-K) for every m of a shape, which
// makes each row's result independent of the other rows (the decode steps use it, as the CPU
// decode uses MatMulRowInvariant; see docs/cuda-backend.md). For algo_rows <= 256 (decode) the
// algorithm is chosen by timing 1 and algo_rows rows at the shape's first product, which
// allocates two scratch buffers then (up to 256 rows of x and y): make that first product
// outside stream capture (the CUDA runner's eager warm-up step does).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <tuple>

#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "base/half.h"
#include "kernels/cuda/device_buffer.h"

namespace mesa::gpu {

// Bytes of the fixed cuBLASLt workspace (NVIDIA's recommendation for Hopper).
inline constexpr size_t kGemmWorkspaceBytes = size_t{32} << 20;

struct GemmPlan;  // descriptors and the chosen algorithm of one shape (gemm.cc)

// Owns a cuBLASLt handle, its workspace and the plans chosen so far (one per shape, found by
// cuBLASLt's heuristic on first use). Not thread-safe: one per engine thread.
class CublasHandle {
 public:
  static absl::StatusOr<CublasHandle> Create();
  CublasHandle();
  ~CublasHandle();
  CublasHandle(CublasHandle&& other) noexcept;
  CublasHandle& operator=(CublasHandle&& other) noexcept;
  CublasHandle(const CublasHandle&) = delete;
  CublasHandle& operator=(const CublasHandle&) = delete;

  bool valid() const { return lt_ != nullptr; }

 private:
  friend absl::Status Gemm(CublasHandle& handle, const struct GemmParams& p);
  friend absl::StatusOr<std::unique_ptr<GemmPlan>> MakePinnedPlan(CublasHandle& handle,
                                                                  const struct GemmParams& p,
                                                                  int64_t ldx, int64_t ldy);
  // (m, n, k, ldx, ldy, in type, out type, algo_rows)
  using PlanKey = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int, int, int64_t>;

  void* lt_ = nullptr;  // cublasLtHandle_t (kept opaque: this header needs no cuBLAS header)
  DeviceBuffer workspace_;
  std::map<PlanKey, std::unique_ptr<GemmPlan>> plans_;
  std::map<PlanKey, std::unique_ptr<GemmPlan>> pinned_;  // the algorithms chosen for algo_rows
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
  // 0: cuBLASLt's choice for this m. > 0: the algorithm chosen (without split-K) for that many
  // rows of the same shape, for every m: a row's result then does not depend on m.
  int64_t algo_rows = 0;
};

// Enqueues the product on p.stream. The first call for a shape chooses its plan (host work,
// no device allocation).
absl::Status Gemm(CublasHandle& handle, const GemmParams& p);

// Whether Gemm runs `p` with Gemv (kernels/cuda/gemv.h) rather than cuBLASLt: callers that fuse
// a Gemv with what follows it use the same rule.
bool GemmRunsGemv(const GemmParams& p);

}  // namespace mesa::gpu
