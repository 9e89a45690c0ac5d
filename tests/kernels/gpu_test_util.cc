#include "tests/kernels/gpu_test_util.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"

namespace mesa::gpu::testing {

const std::string& NoGpuReason() {
  static const std::string reason = [] {
    absl::StatusOr<int> count = CudaDeviceCount();
    if (!count.ok()) return std::string(count.status().message());
    return std::string();
  }();
  return reason;
}

void GpuTest::SetUp() {
  if (!NoGpuReason().empty()) {
    GTEST_SKIP() << "GPU test skipped: " << NoGpuReason()
                 << " (run on a CUDA machine: tools/cuda/device_check.sh)";
  }
}

void GpuTest::TearDown() {
  if (!NoGpuReason().empty()) return;
  const absl::Status s = Sync();
  EXPECT_TRUE(s.ok()) << "device error after the test: " << s;
}

absl::Status Sync() {
  MESA_CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize());
  MESA_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

absl::StatusOr<DeviceBuffer> UploadAct(const std::vector<float>& values, ScalarType act) {
  if (act == ScalarType::kFp32) return Upload(values);
  std::vector<uint16_t> bits(values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    bits[i] = act == ScalarType::kBf16 ? FloatToBf16(values[i]) : FloatToFp16(values[i]);
  }
  return Upload(bits);
}

absl::StatusOr<std::vector<float>> DownloadAct(const DeviceBuffer& buffer, size_t n,
                                               ScalarType act) {
  if (act == ScalarType::kFp32) return Download<float>(buffer, n);
  absl::StatusOr<std::vector<uint16_t>> bits = Download<uint16_t>(buffer, n);
  if (!bits.ok()) return bits.status();
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) {
    out[i] = act == ScalarType::kBf16 ? Bf16ToFloat((*bits)[i]) : Fp16ToFloat((*bits)[i]);
  }
  return out;
}

std::vector<float> Uniform(std::mt19937& rng, size_t n, float lo, float hi, Rounding rounding) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = ApplyRounding(dist(rng), rounding);
  return v;
}

std::vector<float> Normal(std::mt19937& rng, size_t n, float stddev, Rounding rounding) {
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> v(n);
  for (float& x : v) x = ApplyRounding(dist(rng), rounding);
  return v;
}

float ActUlp(float x, ScalarType act) {
  if (act == ScalarType::kFp32) return 0.0f;
  const int mantissa_bits = act == ScalarType::kBf16 ? 7 : 10;
  const float ax = std::fabs(x);
  // Below the smallest normal the spacing is fixed; fp16's subnormals are 2^-24 apart.
  const float min_normal = act == ScalarType::kBf16 ? 1.17549435e-38f : 6.10351562e-5f;
  if (ax < min_normal) return std::ldexp(1.0f, (act == ScalarType::kBf16 ? -126 : -14) - mantissa_bits);
  int e = 0;
  std::frexp(ax, &e);  // ax = m * 2^e, m in [0.5, 1)
  return std::ldexp(1.0f, e - 1 - mantissa_bits);
}

::testing::AssertionResult AllClose(const std::vector<float>& actual,
                                    const std::vector<float>& expected, float atol, float rtol,
                                    float ulps, ScalarType act, const std::string& what) {
  if (actual.size() != expected.size()) {
    return ::testing::AssertionFailure() << what << ": sizes differ, " << actual.size()
                                         << " vs " << expected.size();
  }
  size_t failures = 0, worst = 0;
  double worst_excess = -1.0;
  for (size_t i = 0; i < actual.size(); ++i) {
    const double tol = atol + rtol * std::fabs(expected[i]) + ulps * ActUlp(expected[i], act);
    const double err = std::fabs(static_cast<double>(actual[i]) - expected[i]);
    const bool bad = !(err <= tol);  // NaN fails
    if (bad) ++failures;
    const double excess = std::isnan(err) ? 1e300 : err - tol;
    if (excess > worst_excess) {
      worst_excess = excess;
      worst = i;
    }
  }
  if (failures == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << what << ": " << failures << " of " << actual.size()
         << " elements outside atol " << atol << " + rtol " << rtol << " + " << ulps << " ulp("
         << ActName(act) << "); worst at [" << worst << "]: got " << actual[worst]
         << ", expected " << expected[worst] << " (error ratio "
         << ErrorRatio(actual, expected) << ")";
}

double ErrorRatio(const std::vector<float>& actual, const std::vector<float>& expected) {
  double diff = 0.0, ref = 0.0;
  for (size_t i = 0; i < actual.size() && i < expected.size(); ++i) {
    const double d = static_cast<double>(actual[i]) - expected[i];
    diff += d * d;
    ref += static_cast<double>(expected[i]) * expected[i];
  }
  const size_t n = std::max<size_t>(1, expected.size());
  return std::sqrt(diff / n) / (std::sqrt(ref / n) + 1e-30);
}

const char* ActName(ScalarType act) { return ScalarTypeName(act); }

}  // namespace mesa::gpu::testing
