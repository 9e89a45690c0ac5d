#include "kernels/cuda/gemm.h"

#include <limits>
#include <utility>

#include <cublas_v2.h>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"

namespace mesa::gpu {
namespace {

cudaDataType_t CudaType(ScalarType t) {
  switch (t) {
    case ScalarType::kBf16: return CUDA_R_16BF;
    case ScalarType::kFp16: return CUDA_R_16F;
    case ScalarType::kFp32: return CUDA_R_32F;
  }
  return CUDA_R_32F;
}

bool FitsInt(int64_t v) { return v >= 0 && v <= std::numeric_limits<int>::max(); }

}  // namespace

absl::StatusOr<CublasHandle> CublasHandle::Create() {
  CublasHandle h;
  MESA_CUBLAS_RETURN_IF_ERROR(cublasCreate(&h.handle_));
  // Results must not depend on the run: no atomics-based split-K reductions.
  MESA_CUBLAS_RETURN_IF_ERROR(cublasSetAtomicsMode(h.handle_, CUBLAS_ATOMICS_NOT_ALLOWED));
  return h;
}

CublasHandle::~CublasHandle() {
  if (handle_ != nullptr) cublasDestroy(handle_);
}

CublasHandle::CublasHandle(CublasHandle&& other) noexcept
    : handle_(std::exchange(other.handle_, nullptr)) {}

CublasHandle& CublasHandle::operator=(CublasHandle&& other) noexcept {
  if (this != &other) {
    if (handle_ != nullptr) cublasDestroy(handle_);
    handle_ = std::exchange(other.handle_, nullptr);
  }
  return *this;
}

absl::Status Gemm(const CublasHandle& handle, const GemmParams& p) {
  const int64_t ldx = p.ldx > 0 ? p.ldx : p.k;
  const int64_t ldy = p.ldy > 0 ? p.ldy : p.n;
  if (!FitsInt(p.m) || !FitsInt(p.n) || !FitsInt(p.k) || !FitsInt(ldx) || !FitsInt(ldy) ||
      ldx < p.k || ldy < p.n) {
    return absl::InvalidArgumentError(absl::StrCat("Gemm: shape m=", p.m, " n=", p.n, " k=", p.k,
                                                   " ldx=", ldx, " ldy=", ldy,
                                                   " is not supported"));
  }
  if (p.out_type != ScalarType::kFp32 && p.out_type != p.in_type) {
    return absl::InvalidArgumentError(
        absl::StrCat("Gemm: output type ", ScalarTypeName(p.out_type), " must be float32 or ",
                     ScalarTypeName(p.in_type)));
  }
  if (handle.get() == nullptr) return absl::FailedPreconditionError("Gemm: no cuBLAS handle");
  if (p.m == 0 || p.n == 0) return absl::OkStatus();
  MESA_CUBLAS_RETURN_IF_ERROR(cublasSetStream(handle.get(), p.stream));
  const float alpha = 1.0f;
  const float beta = 0.0f;
  // cuBLAS is column-major: row-major y[m, n] is a column-major n x m matrix (ldc = ldy), and
  // y^T = W x^T where W's row-major storage is a column-major k x n matrix (lda = k), taken
  // transposed, and x's storage is a column-major k x m matrix (ldb = ldx).
  MESA_CUBLAS_RETURN_IF_ERROR(cublasGemmEx(
      handle.get(), CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(p.n), static_cast<int>(p.m),
      static_cast<int>(p.k), &alpha, p.w, CudaType(p.in_type), static_cast<int>(p.k), p.x,
      CudaType(p.in_type), static_cast<int>(ldx), &beta, p.y, CudaType(p.out_type),
      static_cast<int>(ldy), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return absl::OkStatus();
}

}  // namespace mesa::gpu
