// Shared helpers of the GPU kernel parity tests (tests/kernels): the skip-without-GPU fixture,
// host <-> device copies in the model dtype, random inputs, and comparisons that report the
// worst element. Every CUDA op is compared with its CPU reference (kernels/cpu), the ground
// truth, with a tolerance stated and justified at each test.
#pragma once

#include <cstdint>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "base/half.h"
#include "gtest/gtest.h"
#include "kernels/cuda/device_buffer.h"

namespace mesa {
// Readable dtype names in test listings (gtest prints parameters with PrintTo, found by ADL).
inline void PrintTo(ScalarType t, std::ostream* os) { *os << ScalarTypeName(t); }
}  // namespace mesa

namespace mesa::gpu::testing {

#define MESA_ASSERT_OK(expr)                                  \
  do {                                                        \
    const ::absl::Status mesa_test_status_ = (expr);          \
    ASSERT_TRUE(mesa_test_status_.ok()) << mesa_test_status_; \
  } while (0)

// Assigns the value of a StatusOr expression or fails the test.
#define MESA_ASSERT_OK_AND_ASSIGN(lhs, expr)                              \
  auto MESA_TEST_CONCAT_(mesa_sor_, __LINE__) = (expr);                   \
  ASSERT_TRUE(MESA_TEST_CONCAT_(mesa_sor_, __LINE__).ok())                \
      << MESA_TEST_CONCAT_(mesa_sor_, __LINE__).status();                 \
  lhs = std::move(MESA_TEST_CONCAT_(mesa_sor_, __LINE__)).value()
#define MESA_TEST_CONCAT_INNER_(a, b) a##b
#define MESA_TEST_CONCAT_(a, b) MESA_TEST_CONCAT_INNER_(a, b)

// The reason GPU tests cannot run here ("" when a device is present). Checked once.
const std::string& NoGpuReason();

// Base fixture of every test that needs a device: skips with the reason when there is none
// (cudaGetDeviceCount fails on a machine without a GPU or driver), and checks after the test
// that the device reported no error.
class GpuTest : public ::testing::Test {
 protected:
  void SetUp() override;
  void TearDown() override;
};

// Copies of host float vectors into device memory as the model dtype (bf16/fp16 bits or
// float; values are rounded to nearest even, so pre-rounded values are copied exactly).
absl::StatusOr<DeviceBuffer> UploadAct(const std::vector<float>& values, ScalarType act);
absl::StatusOr<std::vector<float>> DownloadAct(const DeviceBuffer& buffer, size_t n,
                                               ScalarType act);

template <typename T>
absl::StatusOr<DeviceBuffer> Upload(const std::vector<T>& values) {
  absl::StatusOr<DeviceBuffer> buffer = DeviceBuffer::Allocate(values.size() * sizeof(T));
  if (!buffer.ok()) return buffer.status();
  absl::Status s = buffer->CopyFromHost(values.data(), values.size() * sizeof(T));
  if (!s.ok()) return s;
  return buffer;
}

template <typename T>
absl::StatusOr<std::vector<T>> Download(const DeviceBuffer& buffer, size_t n) {
  std::vector<T> out(n);
  absl::Status s = buffer.CopyToHost(out.data(), n * sizeof(T));
  if (!s.ok()) return s;
  return out;
}

// Waits for the device and returns its error, if any.
absl::Status Sync();

// Uniform values in [lo, hi) from a fixed-seed generator, optionally rounded to a dtype.
std::vector<float> Uniform(std::mt19937& rng, size_t n, float lo, float hi,
                           Rounding rounding = Rounding::kNone);
std::vector<float> Normal(std::mt19937& rng, size_t n, float stddev,
                          Rounding rounding = Rounding::kNone);

// One unit in the last place of `x` stored as `act` (0 for kFp32: no storage rounding).
float ActUlp(float x, ScalarType act);

// Element-wise |actual - expected| <= atol + rtol * |expected| + ulps * ActUlp(expected, act).
// Reports the count of failures and the worst element; `what` names the array.
::testing::AssertionResult AllClose(const std::vector<float>& actual,
                                    const std::vector<float>& expected, float atol, float rtol,
                                    float ulps, ScalarType act, const std::string& what);

// RMS(actual - expected) / (RMS(expected) + 1e-30): fla's error-ratio metric (spec section 9).
double ErrorRatio(const std::vector<float>& actual, const std::vector<float>& expected);

const char* ActName(ScalarType act);

}  // namespace mesa::gpu::testing
