// CUDA runtime and cuBLAS errors as absl::Status values (errors are values in this project: a
// failed launch or allocation must never abort the server), and a move-only device buffer.
//
// Codes: out of memory -> kResourceExhausted (the error is cleared, the context stays usable);
// no device / no driver -> kUnavailable; a sticky fault (illegal address, launch failure, ...)
// -> kInternal with "sticky" in the message: the context is dead and the process must restart
// (IsStickyCudaError tells a runner to mark itself poisoned); anything else -> kInternal.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cublas_api.h>
#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace mesa::gpu {

// `what` names the call (e.g. "cudaMalloc(4096 bytes)"); file:line says where it was made.
absl::Status CudaErrorToStatus(cudaError_t err, const char* what, const char* file, int line);
absl::Status CublasErrorToStatus(cublasStatus_t err, const char* what, const char* file, int line);

// True for errors after which the CUDA context cannot be used again.
bool IsStickyCudaError(cudaError_t err);

// The error of the last kernel launch on this thread, as a Status (clears non-sticky errors).
absl::Status LastLaunchStatus(const char* kernel, const char* file, int line);

// Number of usable CUDA devices. A machine without a GPU or driver gives an error status
// (kUnavailable, with CUDA's own message), never 0 silently and never an abort.
absl::StatusOr<int> CudaDeviceCount();

}  // namespace mesa::gpu

#define MESA_CUDA_RETURN_IF_ERROR(expr)                                                    \
  do {                                                                                     \
    const cudaError_t mesa_cuda_err_ = (expr);                                             \
    if (mesa_cuda_err_ != cudaSuccess) {                                                   \
      return ::mesa::gpu::CudaErrorToStatus(mesa_cuda_err_, #expr, __FILE__, __LINE__);    \
    }                                                                                      \
  } while (0)

#define MESA_CUBLAS_RETURN_IF_ERROR(expr)                                                  \
  do {                                                                                     \
    const cublasStatus_t mesa_cublas_err_ = (expr);                                        \
    if (mesa_cublas_err_ != CUBLAS_STATUS_SUCCESS) {                                       \
      return ::mesa::gpu::CublasErrorToStatus(mesa_cublas_err_, #expr, __FILE__, __LINE__); \
    }                                                                                      \
  } while (0)

// After a <<<...>>> launch: returns the launch error, if any, from the enclosing function.
#define MESA_CUDA_RETURN_IF_LAUNCH_FAILED(kernel_name)                                     \
  do {                                                                                     \
    ::absl::Status mesa_launch_status_ =                                                   \
        ::mesa::gpu::LastLaunchStatus(kernel_name, __FILE__, __LINE__);                    \
    if (!mesa_launch_status_.ok()) return mesa_launch_status_;                             \
  } while (0)
