// The batch-1 down projection fused with its residual add (kernels/cuda/gemv.h) against the two
// launches it replaces, Gemv then AddResidual: the same bits. (Gemv itself is checked against
// the CPU in gemm_test.cc, through Gemm.)
#include <cstdint>
#include <random>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/gemv.h"
#include "tests/kernels/gpu_test_util.h"

namespace mesa::gpu::testing {
namespace {

// (n, k, dtype)
using GemvShape = std::tuple<int, int, ScalarType>;

class GemvAddResidualTest : public GpuTest, public ::testing::WithParamInterface<GemvShape> {};

TEST_P(GemvAddResidualTest, IsGemvThenAddResidualBitForBit) {
  const auto [n, k, type] = GetParam();
  const Rounding r = RoundingFor(type);
  std::mt19937 rng(5u + n + k);
  const std::vector<float> row = Normal(rng, k, 1.0f, r);
  const std::vector<float> w = Normal(rng, static_cast<size_t>(n) * k, 1.0f / 64, r);
  const std::vector<float> residual = Normal(rng, n, 3.0f, r);
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_row, UploadAct(row, type));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_w, UploadAct(w, type));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_y, Upload(std::vector<float>(n, 0.0f)));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_two, UploadAct(residual, type));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_fused, UploadAct(residual, type));
  MESA_ASSERT_OK(Gemv(d_y.as<float>(), d_row.data(), d_w.data(), n, k, type, nullptr));
  MESA_ASSERT_OK(AddResidual(d_two.data(), d_y.as<float>(), n, type, nullptr));
  MESA_ASSERT_OK(GemvAddResidual(d_fused.data(), d_row.data(), d_w.data(), n, k, type, nullptr));
  MESA_ASSERT_OK(Sync());
  MESA_ASSERT_OK_AND_ASSIGN(std::vector<float> two, DownloadAct(d_two, n, type));
  MESA_ASSERT_OK_AND_ASSIGN(std::vector<float> fused, DownloadAct(d_fused, n, type));
  EXPECT_EQ(fused, two);
  EXPECT_NE(fused, residual) << "the residual was not updated";
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, GemvAddResidualTest,
    ::testing::Values(GemvShape{2048, 5632, ScalarType::kBf16}, GemvShape{1001, 1000, ScalarType::kFp16},
                      GemvShape{37, 104, ScalarType::kBf16}),
    [](const ::testing::TestParamInfo<GemvShape>& info) {
      return absl::StrCat("n", std::get<0>(info.param), "_k", std::get<1>(info.param), "_",
                          std::get<2>(info.param) == ScalarType::kBf16 ? "bf16" : "fp16");
    });

TEST_F(GpuTest, GemvRefusesWhatItDoesNotTake) {
  // Two rows, float32 inputs, k not a multiple of 8: Gemm's business, named in the error.
  EXPECT_FALSE(GemvApplies(2, 64, nullptr, nullptr, ScalarType::kBf16));
  EXPECT_FALSE(GemvApplies(1, 64, nullptr, nullptr, ScalarType::kFp32));
  EXPECT_FALSE(GemvApplies(1, 60, nullptr, nullptr, ScalarType::kBf16));
  const absl::Status s = GemvAddResidual(nullptr, nullptr, nullptr, 8, 60, ScalarType::kBf16, nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("k=60"), std::string::npos) << s;
}

}  // namespace
}  // namespace mesa::gpu::testing
