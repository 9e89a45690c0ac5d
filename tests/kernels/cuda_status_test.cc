// CUDA/cuBLAS error conversion and the device buffer. The conversion tests need no GPU (they
// only name error codes), so they also run, and pass, on machines without one.
#include <cstdint>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_buffer.h"
#include "tests/kernels/gpu_test_util.h"

namespace mesa::gpu::testing {
namespace {

TEST(CudaStatus, MapsErrorsToCodes) {
  EXPECT_TRUE(CudaErrorToStatus(cudaSuccess, "x", __FILE__, __LINE__).ok());
  const absl::Status oom = CudaErrorToStatus(cudaErrorMemoryAllocation, "cudaMalloc(1 TB)",
                                             "f.cc", 7);
  EXPECT_EQ(oom.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(oom.message().find("cudaMalloc(1 TB)"), std::string::npos) << oom;
  EXPECT_NE(oom.message().find("f.cc:7"), std::string::npos) << oom;
  EXPECT_EQ(CudaErrorToStatus(cudaErrorNoDevice, "x", "f", 1).code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(CudaErrorToStatus(cudaErrorInvalidValue, "x", "f", 1).code(),
            absl::StatusCode::kInvalidArgument);
  const absl::Status sticky = CudaErrorToStatus(cudaErrorIllegalAddress, "kernel", "f", 1);
  EXPECT_EQ(sticky.code(), absl::StatusCode::kInternal);
  EXPECT_NE(sticky.message().find("sticky"), std::string::npos) << sticky;
}

TEST(CudaStatus, StickyErrors) {
  EXPECT_TRUE(IsStickyCudaError(cudaErrorIllegalAddress));
  EXPECT_TRUE(IsStickyCudaError(cudaErrorLaunchFailure));
  EXPECT_TRUE(IsStickyCudaError(cudaErrorMisalignedAddress));
  EXPECT_FALSE(IsStickyCudaError(cudaErrorMemoryAllocation));
  EXPECT_FALSE(IsStickyCudaError(cudaErrorInvalidValue));
  EXPECT_FALSE(IsStickyCudaError(cudaSuccess));
}

TEST(CudaStatus, MapsCublasErrors) {
  EXPECT_TRUE(CublasErrorToStatus(CUBLAS_STATUS_SUCCESS, "x", "f", 1).ok());
  EXPECT_EQ(CublasErrorToStatus(CUBLAS_STATUS_ALLOC_FAILED, "x", "f", 1).code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(CublasErrorToStatus(CUBLAS_STATUS_INVALID_VALUE, "x", "f", 1).code(),
            absl::StatusCode::kInvalidArgument);
  const absl::Status s = CublasErrorToStatus(CUBLAS_STATUS_EXECUTION_FAILED, "cublasGemmEx",
                                             "g.cc", 3);
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  EXPECT_NE(s.message().find("CUBLAS_STATUS_EXECUTION_FAILED"), std::string::npos) << s;
}

// On a machine without a GPU this is the path every GPU test takes to skip: it must give an
// error status, never crash or report a device.
TEST(CudaStatus, DeviceCountIsAValueOrAnUnavailableError) {
  const absl::StatusOr<int> count = CudaDeviceCount();
  if (count.ok()) {
    EXPECT_GT(*count, 0);
  } else {
    EXPECT_EQ(count.status().code(), absl::StatusCode::kUnavailable) << count.status();
  }
}

TEST(DeviceBufferArgs, EmptyBufferNeedsNoDevice) {
  absl::StatusOr<DeviceBuffer> b = DeviceBuffer::Allocate(0);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->data(), nullptr);
  EXPECT_EQ(b->bytes(), 0u);
  uint8_t byte = 0;
  EXPECT_EQ(b->CopyFromHost(&byte, 1).code(), absl::StatusCode::kOutOfRange);
}

TEST_F(GpuTest, DeviceBufferRoundTrip) {
  std::vector<float> host = {1.0f, -2.0f, 3.5f, 0.25f};
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer b, Upload(host));
  EXPECT_EQ(b.bytes(), host.size() * sizeof(float));
  MESA_ASSERT_OK_AND_ASSIGN(std::vector<float> back, Download<float>(b, host.size()));
  EXPECT_EQ(back, host);
  // A partial copy at an offset, then out-of-range requests.
  const float x = 9.0f;
  MESA_ASSERT_OK(b.CopyFromHost(&x, sizeof(x), 2 * sizeof(float)));
  MESA_ASSERT_OK_AND_ASSIGN(back, Download<float>(b, host.size()));
  EXPECT_EQ(back[2], 9.0f);
  EXPECT_EQ(b.CopyFromHost(&x, sizeof(x), 4 * sizeof(float)).code(),
            absl::StatusCode::kOutOfRange);
  MESA_ASSERT_OK(b.Zero());
  MESA_ASSERT_OK_AND_ASSIGN(back, Download<float>(b, host.size()));
  EXPECT_EQ(back, std::vector<float>(4, 0.0f));
  // Moves transfer ownership.
  DeviceBuffer moved = std::move(b);
  EXPECT_EQ(b.data(), nullptr);
  EXPECT_EQ(moved.bytes(), host.size() * sizeof(float));
}

TEST_F(GpuTest, HugeAllocationIsResourceExhaustedAndRecoverable) {
  // 1 PiB: no card has it. The error is a value and the context stays usable.
  absl::StatusOr<DeviceBuffer> huge = DeviceBuffer::Allocate(size_t{1} << 50);
  ASSERT_FALSE(huge.ok());
  EXPECT_EQ(huge.status().code(), absl::StatusCode::kResourceExhausted) << huge.status();
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer small, DeviceBuffer::Allocate(256));
  MESA_ASSERT_OK(small.Zero());
  MESA_ASSERT_OK(Sync());
}

}  // namespace
}  // namespace mesa::gpu::testing
