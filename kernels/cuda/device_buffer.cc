#include "kernels/cuda/device_buffer.h"

#include <cuda_runtime_api.h>

#include <atomic>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "kernels/cuda/cuda_status.h"

namespace mesa::gpu {
namespace {

std::atomic<int64_t> allocations{0};

absl::Status CheckRange(size_t offset, size_t bytes, size_t size, const char* what) {
  if (offset > size || bytes > size - offset) {
    return absl::OutOfRangeError(absl::StrCat(what, ": ", bytes, " bytes at offset ", offset,
                                              " do not fit a buffer of ", size, " bytes"));
  }
  return absl::OkStatus();
}

}  // namespace

int64_t CudaAllocationCount() { return allocations.load(std::memory_order_relaxed); }
void CountAllocation() { allocations.fetch_add(1, std::memory_order_relaxed); }

absl::StatusOr<DeviceBuffer> DeviceBuffer::Allocate(size_t bytes) {
  DeviceBuffer buffer;
  if (bytes == 0) return buffer;
  void* ptr = nullptr;
  const cudaError_t err = cudaMalloc(&ptr, bytes);
  if (err != cudaSuccess) {
    return CudaErrorToStatus(err, absl::StrCat("cudaMalloc(", bytes, " bytes = ",
                                               bytes / (1024.0 * 1024.0), " MiB)").c_str(),
                             __FILE__, __LINE__);
  }
  CountAllocation();
  buffer.ptr_ = ptr;
  buffer.bytes_ = bytes;
  return buffer;
}

void DeviceBuffer::Free() {
  // cudaFree's error cannot be reported from a destructor; a failure here means the context is
  // already broken, which the next checked call reports.
  if (ptr_ != nullptr) cudaFree(ptr_);
  ptr_ = nullptr;
  bytes_ = 0;
}

absl::Status DeviceBuffer::CopyFromHost(const void* src, size_t bytes, size_t offset) {
  MESA_RETURN_IF_ERROR(CheckRange(offset, bytes, bytes_, "DeviceBuffer::CopyFromHost"));
  if (bytes == 0) return absl::OkStatus();
  MESA_CUDA_RETURN_IF_ERROR(
      cudaMemcpy(static_cast<char*>(ptr_) + offset, src, bytes, cudaMemcpyHostToDevice));
  return absl::OkStatus();
}

absl::Status DeviceBuffer::CopyToHost(void* dst, size_t bytes, size_t offset) const {
  MESA_RETURN_IF_ERROR(CheckRange(offset, bytes, bytes_, "DeviceBuffer::CopyToHost"));
  if (bytes == 0) return absl::OkStatus();
  MESA_CUDA_RETURN_IF_ERROR(
      cudaMemcpy(dst, static_cast<const char*>(ptr_) + offset, bytes, cudaMemcpyDeviceToHost));
  return absl::OkStatus();
}

absl::Status DeviceBuffer::Zero() {
  if (bytes_ == 0) return absl::OkStatus();
  MESA_CUDA_RETURN_IF_ERROR(cudaMemset(ptr_, 0, bytes_));
  return absl::OkStatus();
}

}  // namespace mesa::gpu
