// A move-only owner of one cudaMalloc allocation. Allocation failures are statuses
// (kResourceExhausted with the size asked for), never aborts. Not thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace mesa::gpu {

// cudaMalloc and cudaMallocHost calls that succeeded in this process (DeviceBuffer::Allocate
// and CountAllocation): the check that a serving process allocates nothing once started
// (reliability checklist M1).
int64_t CudaAllocationCount();
// Counts an allocation made outside DeviceBuffer (e.g. pinned host memory).
void CountAllocation();

class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  ~DeviceBuffer() { Free(); }
  DeviceBuffer(DeviceBuffer&& other) noexcept
      : ptr_(std::exchange(other.ptr_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    if (this != &other) {
      Free();
      ptr_ = std::exchange(other.ptr_, nullptr);
      bytes_ = std::exchange(other.bytes_, 0);
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  // `bytes` == 0 gives an empty buffer (null pointer) without touching the device.
  static absl::StatusOr<DeviceBuffer> Allocate(size_t bytes);

  void* data() { return ptr_; }
  const void* data() const { return ptr_; }
  template <typename T>
  T* as() { return static_cast<T*>(ptr_); }
  template <typename T>
  const T* as() const { return static_cast<const T*>(ptr_); }
  size_t bytes() const { return bytes_; }

  // Synchronous copies (the legacy default stream); sizes must fit the buffer.
  absl::Status CopyFromHost(const void* src, size_t bytes, size_t offset = 0);
  absl::Status CopyToHost(void* dst, size_t bytes, size_t offset = 0) const;
  absl::Status Zero();

  template <typename T>
  absl::Status Upload(absl::Span<const T> src) {
    return CopyFromHost(src.data(), src.size() * sizeof(T));
  }
  template <typename T>
  absl::Status Download(absl::Span<T> dst) const {
    return CopyToHost(dst.data(), dst.size() * sizeof(T));
  }

 private:
  void Free();

  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace mesa::gpu
