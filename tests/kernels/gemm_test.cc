// Parity of the cuBLAS GEMM wrapper (kernels/cuda/gemm.cc) with kernels/cpu/matmul.cc:
// y = x W^T, inputs in the model dtype, fp32 accumulation.
//
// Tolerance: both sides sum the same exact products (a bf16 x bf16 or fp16 x fp16 product is
// exact in fp32; fp32 x fp32 products round once) in fp32, in different orders, so each
// output may differ by the summation's rounding error: |dy| <= 2e-5 * sum_l |x_l w_l|, about
// k * fp32 eps for k up to 2048 (the typical error is far smaller). TF32 (10-bit operands)
// would miss this by two orders of magnitude for fp32 inputs, so the test also checks that
// cuBLAS does not silently use it. Rounded (model-dtype) outputs add 1 ulp of that dtype.
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cuda/gemm.h"
#include "tests/kernels/gpu_test_util.h"

namespace mesa::gpu::testing {
namespace {

// (m, n, k, dtype, rounded output)
using GemmShape = std::tuple<int, int, int, ScalarType, bool>;

class GemmTest : public GpuTest, public ::testing::WithParamInterface<GemmShape> {};

TEST_P(GemmTest, MatchesCpuMatMul) {
  const auto [m, n, k, type, rounded_out] = GetParam();
  const Rounding r = RoundingFor(type);
  std::mt19937 rng(21u + m + n + k);
  const std::vector<float> x = Normal(rng, static_cast<size_t>(m) * k, 1.0f, r);
  const std::vector<float> w = Normal(rng, static_cast<size_t>(n) * k, 1.0f / std::sqrt(k), r);

  // CPU reference with weights in the same storage the model uses.
  std::vector<float> want(static_cast<size_t>(m) * n);
  if (type == ScalarType::kFp32) {
    cpu::MatMul(want.data(), x.data(), m, w.data(), type, n, k);
  } else {
    std::vector<uint16_t> bits(w.size());
    for (size_t i = 0; i < w.size(); ++i) {
      bits[i] = type == ScalarType::kBf16 ? FloatToBf16(w[i]) : FloatToFp16(w[i]);
    }
    cpu::MatMul(want.data(), x.data(), m, bits.data(), type, n, k);
  }
  std::vector<float> bound(want.size());
  for (int i = 0; i < m; ++i) {
    for (int j = 0; j < n; ++j) {
      double s = 0.0;
      for (int l = 0; l < k; ++l) s += std::fabs(x[i * k + l] * w[j * k + l]);
      bound[i * n + j] = static_cast<float>(2e-5 * s);
    }
  }
  const ScalarType out_type = rounded_out ? type : ScalarType::kFp32;
  std::vector<float> want_out = want;
  if (rounded_out) {
    for (float& v : want_out) v = ApplyRounding(v, r);
  }

  MESA_ASSERT_OK_AND_ASSIGN(CublasHandle handle, CublasHandle::Create());
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_x, UploadAct(x, type));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_w, UploadAct(w, type));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_y,
                            Upload(std::vector<uint8_t>(want.size() * sizeof(float), 0xff)));
  GemmParams p;
  p.m = m;
  p.n = n;
  p.k = k;
  p.x = d_x.data();
  p.w = d_w.data();
  p.y = d_y.data();
  p.in_type = type;
  p.out_type = out_type;
  MESA_ASSERT_OK(Gemm(handle, p));
  MESA_ASSERT_OK(Sync());
  MESA_ASSERT_OK_AND_ASSIGN(std::vector<float> got, DownloadAct(d_y, want.size(), out_type));
  size_t bad = 0, worst = 0;
  double worst_ratio = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double tol = bound[i] + (rounded_out ? ActUlp(want_out[i], type) : 0.0f) + 1e-30;
    const double err = std::fabs(static_cast<double>(got[i]) - want_out[i]);
    if (!(err <= tol)) ++bad;
    if (!(err / tol <= worst_ratio)) {
      worst_ratio = std::isnan(err) ? 1e300 : err / tol;
      worst = i;
    }
  }
  EXPECT_EQ(bad, 0u) << "worst [" << worst << "]: got " << got[worst] << ", expected "
                     << want_out[worst] << ", error/tolerance " << worst_ratio
                     << ", error ratio " << ErrorRatio(got, want_out);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, GemmTest,
    ::testing::Values(GemmShape{1, 64, 128, ScalarType::kBf16, false},
                      GemmShape{1, 200, 96, ScalarType::kBf16, true},
                      GemmShape{3, 200, 96, ScalarType::kFp16, false},
                      GemmShape{8, 1000, 512, ScalarType::kBf16, false},
                      GemmShape{5, 384, 256, ScalarType::kFp32, false},
                      GemmShape{64, 512, 2048, ScalarType::kBf16, false},
                      GemmShape{64, 512, 2048, ScalarType::kFp32, false},
                      GemmShape{17, 300, 1000, ScalarType::kFp16, true},
                      // Gemv (one row, fp32 out): a 1.3B model's gate_up and down at batch 1,
                      // and odd column counts.
                      GemmShape{1, 11264, 2048, ScalarType::kBf16, false},
                      GemmShape{1, 2048, 5632, ScalarType::kBf16, false},
                      // Columns split along k over 4 warps (o_proj; an fp16 case with one
                      // piece per lane and part).
                      GemmShape{1, 2048, 2048, ScalarType::kBf16, false},
                      GemmShape{1, 3000, 1024, ScalarType::kFp16, false},
                      GemmShape{1, 1001, 1000, ScalarType::kFp16, false},
                      GemmShape{1, 37, 104, ScalarType::kFp16, false},
                      GemmShape{4, 2048, 5632, ScalarType::kBf16, false}),
    [](const ::testing::TestParamInfo<GemmShape>& info) {
      const ScalarType t = std::get<3>(info.param);
      return absl::StrCat("m", std::get<0>(info.param), "_n", std::get<1>(info.param), "_k",
                          std::get<2>(info.param), "_",
                          t == ScalarType::kBf16 ? "bf16" : t == ScalarType::kFp16 ? "fp16" : "fp32",
                          std::get<4>(info.param) ? "_rounded" : "");
    });

// Row strides: y written into a wider buffer, x read from one.
TEST_F(GpuTest, GemmHonoursLeadingDimensions) {
  const int m = 3, n = 5, k = 8, ldx = 11, ldy = 7;
  std::mt19937 rng(3);
  const std::vector<float> x = Normal(rng, m * ldx, 1.0f);
  const std::vector<float> w = Normal(rng, n * k, 1.0f);
  MESA_ASSERT_OK_AND_ASSIGN(CublasHandle handle, CublasHandle::Create());
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_x, Upload(x));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_w, Upload(w));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_y, Upload(std::vector<float>(m * ldy, 42.0f)));
  GemmParams p;
  p.m = m;
  p.n = n;
  p.k = k;
  p.x = d_x.data();
  p.ldx = ldx;
  p.w = d_w.data();
  p.y = d_y.data();
  p.ldy = ldy;
  p.in_type = ScalarType::kFp32;
  MESA_ASSERT_OK(Gemm(handle, p));
  MESA_ASSERT_OK_AND_ASSIGN(std::vector<float> got, Download<float>(d_y, m * ldy));
  for (int i = 0; i < m; ++i) {
    for (int j = 0; j < ldy; ++j) {
      if (j >= n) {
        EXPECT_EQ(got[i * ldy + j], 42.0f) << "padding column overwritten";
        continue;
      }
      double s = 0.0;
      for (int l = 0; l < k; ++l) s += static_cast<double>(x[i * ldx + l]) * w[j * k + l];
      EXPECT_NEAR(got[i * ldy + j], s, 1e-5) << "y[" << i << "][" << j << "]";
    }
  }
}

// Argument checks come before any device work, so these run without a GPU.
TEST(GemmArgs, RejectsBadArguments) {
  CublasHandle none;
  GemmParams p;
  p.m = p.n = p.k = 1;
  EXPECT_EQ(Gemm(none, p).code(), absl::StatusCode::kFailedPrecondition);
  p.in_type = ScalarType::kBf16;
  p.out_type = ScalarType::kFp16;
  EXPECT_EQ(Gemm(none, p).code(), absl::StatusCode::kInvalidArgument);
  p.out_type = ScalarType::kFp32;
  p.ldx = 0;
  p.k = -1;
  EXPECT_EQ(Gemm(none, p).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace mesa::gpu::testing
