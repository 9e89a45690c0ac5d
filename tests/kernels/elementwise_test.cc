// Parity of the CUDA element-wise kernels (kernels/cuda/elementwise.cu) with the CPU runner's
// lines they replace (engine/cpu_model_runner.cc FinishLayer / Logits / Embed).
//
// Tolerances: AddResidual, RoundInPlace and Embed are roundings and copies: bit-exact.
// SwiGlu's silu uses expf (within 2 ulp of glibc's exp), so the fp32 product may differ by a
// few ulps: at most 1 ulp of the stored dtype, rtol 1e-6 for fp32.
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cuda/elementwise.h"
#include "tests/kernels/gpu_test_util.h"

namespace mesa::gpu::testing {
namespace {

class ElementwiseTest : public GpuTest, public ::testing::WithParamInterface<ScalarType> {};

TEST_P(ElementwiseTest, SwiGluMatchesCpu) {
  const ScalarType act = GetParam();
  const Rounding r = RoundingFor(act);
  const int64_t rows = 3, inter = 1000;
  std::mt19937 rng(11);
  const std::vector<float> gate_up = Normal(rng, rows * 2 * inter, 3.0f);  // raw GEMM output
  std::vector<float> want(rows * inter);
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < inter; ++j) {
      const float g = gate_up[i * 2 * inter + j], up = gate_up[i * 2 * inter + inter + j];
      want[i * inter + j] = ApplyRounding(
          cpu::Silu(ApplyRounding(g, r)) * ApplyRounding(up, r), r);
    }
  }
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_in, Upload(gate_up));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_out, UploadAct(std::vector<float>(want.size()), act));
  MESA_ASSERT_OK(SwiGlu(d_out.data(), d_in.as<float>(), rows, inter, act, nullptr));
  MESA_ASSERT_OK_AND_ASSIGN(std::vector<float> got, DownloadAct(d_out, want.size(), act));
  EXPECT_TRUE(AllClose(got, want, 0.0f, act == ScalarType::kFp32 ? 1e-6f : 0.0f,
                       act == ScalarType::kFp32 ? 0.0f : 1.0f, act, "SwiGlu"));
}

TEST_P(ElementwiseTest, AddResidualIsExact) {
  const ScalarType act = GetParam();
  const Rounding r = RoundingFor(act);
  std::mt19937 rng(12);
  const std::vector<float> x = Normal(rng, 4099, 2.0f, r);
  const std::vector<float> u = Normal(rng, x.size(), 1.0f);
  std::vector<float> want(x.size());
  for (size_t i = 0; i < x.size(); ++i) want[i] = ApplyRounding(x[i] + ApplyRounding(u[i], r), r);
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_x, UploadAct(x, act));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_u, Upload(u));
  MESA_ASSERT_OK(AddResidual(d_x.data(), d_u.as<float>(), x.size(), act, nullptr));
  MESA_ASSERT_OK_AND_ASSIGN(std::vector<float> got, DownloadAct(d_x, x.size(), act));
  EXPECT_TRUE(AllClose(got, want, 0.0f, 0.0f, 0.0f, act, "AddResidual"));
}

TEST_P(ElementwiseTest, RoundInPlaceIsExact) {
  const ScalarType act = GetParam();
  std::mt19937 rng(13);
  const std::vector<float> y = Normal(rng, 1001, 10.0f);
  std::vector<float> want = y;
  for (float& v : want) v = ApplyRounding(v, RoundingFor(act));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_y, Upload(y));
  MESA_ASSERT_OK(RoundInPlace(d_y.as<float>(), y.size(), act, nullptr));
  MESA_ASSERT_OK_AND_ASSIGN(std::vector<float> got, Download<float>(d_y, y.size()));
  EXPECT_TRUE(AllClose(got, want, 0.0f, 0.0f, 0.0f, ScalarType::kFp32, "RoundInPlace"));
}

TEST_P(ElementwiseTest, EmbedCopiesRows) {
  const ScalarType act = GetParam();
  const int64_t vocab = 37, d = 96;
  std::mt19937 rng(14);
  const std::vector<float> table = Normal(rng, vocab * d, 1.0f, RoundingFor(act));
  const std::vector<int32_t> tokens = {5, 0, 36, 5, 17};
  std::vector<float> want;
  for (int32_t t : tokens) want.insert(want.end(), table.begin() + t * d, table.begin() + (t + 1) * d);
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_table, UploadAct(table, act));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_tokens, Upload(tokens));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_x, UploadAct(std::vector<float>(want.size()), act));
  MESA_ASSERT_OK(Embed(d_x.data(), d_table.data(), d_tokens.as<int32_t>(),
                       static_cast<int64_t>(tokens.size()), d, vocab, act, nullptr));
  MESA_ASSERT_OK_AND_ASSIGN(std::vector<float> got, DownloadAct(d_x, want.size(), act));
  EXPECT_TRUE(AllClose(got, want, 0.0f, 0.0f, 0.0f, act, "Embed"));
}

TEST_P(ElementwiseTest, EmbedTakesFedRowsFromTheChosenTokens) {
  // A pipelined decode step: rows with feed >= 0 take the token the step before chose.
  const ScalarType act = GetParam();
  const int64_t vocab = 37, d = 40;
  std::mt19937 rng(15);
  const std::vector<float> table = Normal(rng, vocab * d, 1.0f, RoundingFor(act));
  const std::vector<int32_t> tokens = {5, 0, 36, 0, 17};
  const std::vector<int32_t> feed = {-1, 2, -1, 0, 1};
  const std::vector<int32_t> chosen = {9, 30, 2};
  std::vector<float> want;
  for (size_t r = 0; r < tokens.size(); ++r) {
    const int32_t t = feed[r] >= 0 ? chosen[feed[r]] : tokens[r];
    want.insert(want.end(), table.begin() + t * d, table.begin() + (t + 1) * d);
  }
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_table, UploadAct(table, act));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_tokens, Upload(tokens));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_feed, Upload(feed));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_chosen, Upload(chosen));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_x, UploadAct(std::vector<float>(want.size()), act));
  MESA_ASSERT_OK(Embed(d_x.data(), d_table.data(), d_tokens.as<int32_t>(),
                       static_cast<int64_t>(tokens.size()), d, vocab, act, nullptr,
                       d_feed.as<int32_t>(), d_chosen.as<int32_t>()));
  MESA_ASSERT_OK_AND_ASSIGN(std::vector<float> got, DownloadAct(d_x, want.size(), act));
  EXPECT_TRUE(AllClose(got, want, 0.0f, 0.0f, 0.0f, act, "Embed with feed"));
  EXPECT_EQ(Embed(d_x.data(), d_table.data(), d_tokens.as<int32_t>(), 5, d, vocab, act, nullptr,
                  d_feed.as<int32_t>(), nullptr).code(),
            absl::StatusCode::kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, ElementwiseTest,
                         ::testing::Values(ScalarType::kBf16, ScalarType::kFp16,
                                           ScalarType::kFp32),
                         [](const ::testing::TestParamInfo<ScalarType>& info) {
                           return std::string(info.param == ScalarType::kBf16   ? "bf16"
                                              : info.param == ScalarType::kFp16 ? "fp16"
                                                                                : "fp32");
                         });

}  // namespace
}  // namespace mesa::gpu::testing
