// Parity of the CUDA RMSNorm kernels (kernels/cuda/norm.cu) with kernels/cpu/norm.cc.
//
// Tolerance: the sum of squares is a block tree sum on the GPU and a sequential sum on the
// CPU, so 1/rms differs by a few fp32 ulps; everything after it is the same multiplications.
// Stored in bf16/fp16 that is at most 1 ulp of the stored dtype (a value next to a rounding
// boundary); in fp32, rtol 3e-5 (the two sums of up to 2048 squares differ by rounding noise
// of order sqrt(d) fp32 ulps, far below that). The fused residual output is a plain rounded sum:
// bit-exact.
#include <cstdint>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/cpu/norm.h"
#include "kernels/cuda/norm.h"
#include "tests/kernels/gpu_test_util.h"

namespace mesa::gpu::testing {
namespace {

// (rows, width, dtype)
using NormShape = std::tuple<int, int, ScalarType>;

class NormTest : public GpuTest, public ::testing::WithParamInterface<NormShape> {
 protected:
  float Rtol(ScalarType act) const { return act == ScalarType::kFp32 ? 3e-5f : 0.0f; }
  float Ulps(ScalarType act) const { return act == ScalarType::kFp32 ? 0.0f : 1.0f; }
};

TEST_P(NormTest, RmsNormMatchesCpu) {
  const auto [rows, d, act] = GetParam();
  const Rounding r = RoundingFor(act);
  std::mt19937 rng(5u + d);
  const std::vector<float> x = Normal(rng, static_cast<size_t>(rows) * d, 2.0f, r);
  const std::vector<float> w = Uniform(rng, d, 0.8f, 1.2f);
  std::vector<float> want(x.size());
  cpu::RmsNorm(want.data(), x.data(), w.data(), rows, d, 1e-6f, r);

  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_x, UploadAct(x, act));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_w, Upload(w));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_out, UploadAct(std::vector<float>(x.size(), 0.0f), act));
  MESA_ASSERT_OK(RmsNorm(d_out.data(), d_x.data(), d_w.as<float>(), rows, d, 1e-6f, act, nullptr));
  MESA_ASSERT_OK_AND_ASSIGN(std::vector<float> got, DownloadAct(d_out, x.size(), act));
  EXPECT_TRUE(AllClose(got, want, 0.0f, Rtol(act), Ulps(act), act, "RmsNorm"));

  // Gathered rows (the prefill's logit rows): the rows listed, in that order, the same bits.
  std::vector<int32_t> pick;
  for (int32_t r = rows - 1; r >= 0; r -= 2) pick.push_back(r);
  pick.push_back(0);
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_pick, Upload(pick));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_gathered,
                            UploadAct(std::vector<float>(pick.size() * d, 0.0f), act));
  MESA_ASSERT_OK(RmsNorm(d_gathered.data(), d_x.data(), d_w.as<float>(),
                         static_cast<int64_t>(pick.size()), d, 1e-6f, act, nullptr,
                         d_pick.as<int32_t>()));
  MESA_ASSERT_OK_AND_ASSIGN(std::vector<float> gathered, DownloadAct(d_gathered, pick.size() * d, act));
  std::vector<float> want_gathered;
  for (int32_t r : pick) {
    want_gathered.insert(want_gathered.end(), got.begin() + static_cast<int64_t>(r) * d,
                         got.begin() + static_cast<int64_t>(r + 1) * d);
  }
  EXPECT_TRUE(AllClose(gathered, want_gathered, 0.0f, 0.0f, 0.0f, act, "RmsNorm gathered rows"));

  // In place (out aliases x) gives the same values.
  MESA_ASSERT_OK(RmsNorm(d_x.data(), d_x.data(), d_w.as<float>(), rows, d, 1e-6f, act, nullptr));
  MESA_ASSERT_OK_AND_ASSIGN(std::vector<float> got_inplace, DownloadAct(d_x, x.size(), act));
  EXPECT_TRUE(AllClose(got_inplace, got, 0.0f, 0.0f, 0.0f, act, "RmsNorm in place"));
}

TEST_P(NormTest, FusedAddRmsNormMatchesCpu) {
  const auto [rows, d, act] = GetParam();
  const Rounding r = RoundingFor(act);
  std::mt19937 rng(6u + d);
  // x: the o_proj GEMM output (fp32, unrounded); the CPU runner rounds it before the call.
  const std::vector<float> x_raw = Normal(rng, static_cast<size_t>(rows) * d, 1.0f);
  std::vector<float> x_rounded = x_raw;
  for (float& v : x_rounded) v = ApplyRounding(v, r);
  const std::vector<float> residual = Normal(rng, x_raw.size(), 3.0f, r);
  const std::vector<float> w = Uniform(rng, d, 0.8f, 1.2f);
  std::vector<float> want(x_raw.size()), want_residual(x_raw.size());
  cpu::FusedAddRmsNorm(want.data(), want_residual.data(), x_rounded.data(), residual.data(),
                       w.data(), rows, d, 1e-6f, r);

  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_x, Upload(x_raw));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_res, UploadAct(residual, act));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_w, Upload(w));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_out, UploadAct(std::vector<float>(x_raw.size()), act));
  // residual_out aliases residual, as in the runner.
  MESA_ASSERT_OK(FusedAddRmsNorm(d_out.data(), d_res.data(), d_x.as<float>(), d_res.data(),
                                 d_w.as<float>(), rows, d, 1e-6f, act, nullptr));
  MESA_ASSERT_OK_AND_ASSIGN(std::vector<float> got, DownloadAct(d_out, x_raw.size(), act));
  MESA_ASSERT_OK_AND_ASSIGN(std::vector<float> got_residual,
                            DownloadAct(d_res, x_raw.size(), act));
  EXPECT_TRUE(AllClose(got, want, 0.0f, Rtol(act), Ulps(act), act, "FusedAddRmsNorm out"));
  EXPECT_TRUE(AllClose(got_residual, want_residual, 0.0f, 0.0f, 0.0f, act,
                       "FusedAddRmsNorm residual"));
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, NormTest,
    ::testing::Combine(::testing::Values(1, 5), ::testing::Values(64, 96, 1000, 2048, 4100, 9000),
                       ::testing::Values(ScalarType::kBf16, ScalarType::kFp16,
                                         ScalarType::kFp32)),
    [](const ::testing::TestParamInfo<NormShape>& info) {
      const ScalarType t = std::get<2>(info.param);
      return absl::StrCat("r", std::get<0>(info.param), "_d", std::get<1>(info.param), "_",
                          t == ScalarType::kBf16 ? "bf16" : t == ScalarType::kFp16 ? "fp16" : "fp32");
    });

// (rows, heads, k, gated, dtype)
using HeadShape = std::tuple<int, int, int, bool, ScalarType>;

class HeadRmsNormTest : public GpuTest, public ::testing::WithParamInterface<HeadShape> {};

TEST_P(HeadRmsNormTest, MatchesCpu) {
  const auto [rows, heads, k, gated, act] = GetParam();
  const Rounding r = RoundingFor(act);
  std::mt19937 rng(7u + k);
  const size_t n = static_cast<size_t>(rows) * heads * k;
  const std::vector<float> o = Normal(rng, n, 0.7f, r);
  const std::vector<float> z = Normal(rng, n, 2.0f, r);
  const std::vector<float> w = Uniform(rng, k, 0.8f, 1.2f);
  std::vector<float> want(n);
  cpu::HeadRmsNorm(want.data(), o.data(), gated ? z.data() : nullptr, w.data(), rows, heads, k,
                   1e-6f, r);

  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_o, UploadAct(o, act));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_z, UploadAct(z, act));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_w, Upload(w));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_out, UploadAct(std::vector<float>(n), act));
  MESA_ASSERT_OK(HeadRmsNorm(d_out.data(), d_o.data(), gated ? d_z.data() : nullptr,
                             d_w.as<float>(), rows, heads, k, 1e-6f, act, nullptr));
  MESA_ASSERT_OK_AND_ASSIGN(std::vector<float> got, DownloadAct(d_out, n, act));
  // Gated: silu(z)'s expf may differ by an ulp too; still within 1 ulp of the stored dtype
  // (fp32: rtol 3e-5).
  EXPECT_TRUE(AllClose(got, want, 0.0f, act == ScalarType::kFp32 ? 3e-5f : 0.0f,
                       act == ScalarType::kFp32 ? 0.0f : 1.0f, act, "HeadRmsNorm"));
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, HeadRmsNormTest,
    ::testing::Values(HeadShape{1, 2, 16, false, ScalarType::kBf16},
                      HeadShape{3, 4, 64, true, ScalarType::kBf16},
                      HeadShape{2, 3, 50, true, ScalarType::kFp16},
                      HeadShape{4, 2, 48, false, ScalarType::kFp32},
                      HeadShape{2, 16, 128, true, ScalarType::kFp32},
                      HeadShape{5, 16, 128, false, ScalarType::kBf16},
                      HeadShape{2, 3, 256, true, ScalarType::kFp16},     // 8 channels per lane
                      HeadShape{3, 2, 300, true, ScalarType::kBf16}));  // the 32-per-lane kernel

}  // namespace
}  // namespace mesa::gpu::testing
