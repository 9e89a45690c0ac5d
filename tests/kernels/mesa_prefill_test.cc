// Parity of the CUDA chunked prefill (kernels/cuda/mesa_prefill.cu) with the CPU reference
// kernels/cpu/mesa_prefill.cc: several chunk counts (one partial chunk, exact multiples of 64,
// a ragged tail), head dims 16 to 128 (odd 50 too), bf16 and fp16 models, fixed (fla) and
// adaptive CG, from empty states and continuing from a state an earlier prefill left.
//
// Tolerances (error ratio = RMS(diff) / RMS(reference), fla's metric):
//  * Both sides run the same operations with the same rounding points (fp16 operands and
//    scores, TF32 and bf16 chunk-start snapshots, model-dtype outputs) but sum in different
//    orders (BLAS blocks on the CPU, per-thread loops and warp trees here). A different fp32
//    sum can put a value on the other side of an fp16/bf16 rounding boundary, which moves it
//    by one ulp of that format (2^-11 / 2^-8 relative), and the CG carries such flips along.
//  * States: error ratio <= 1e-5 (the update's fp16 operands flip rarely; the fp32 sums agree
//    to about 1e-7; measured on an H200: at most 1.2e-6). Outputs: <= 5e-3 for bf16 models,
//    2e-3 for fp16 (one ulp of the output format is 3.9e-3 / 4.9e-4 relative and only a small
//    fraction of the elements flip; measured: at most 8.0e-4 and 1.4e-4).
//  * Fixed mode: every token runs exactly max_iters steps on both sides. Adaptive mode: a
//    token whose residual lands within rounding of the threshold may stop one step earlier or
//    later: at most a tenth of the (token, head) solves may differ, by at most 2 steps.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/cg_control.h"
#include "kernels/cpu/mesa_prefill.h"
#include "kernels/cuda/mesa_prefill.h"
#include "tests/kernels/gpu_test_util.h"

namespace mesa::gpu::testing {
namespace {

struct PrefillCase {
  std::string name;
  int seq_len = 64;
  int heads = 2;
  int k = 64;
  ScalarType act = ScalarType::kBf16;
  CgMode mode = CgMode::kFixed;
  int history = 0;  // tokens prefilled (on the CPU) before the compared call
};

std::ostream& operator<<(std::ostream& os, const PrefillCase& c) { return os << c.name; }

struct HostPrefill {
  std::vector<float> q, k, v, log_decay, beta, lambda;
};

// Realistic inputs: unit-norm q and k rows (fp16 values, as fla's l2-norm pass writes them),
// v in the model dtype, decays sigmoid(a) in [0.88, 0.998], beta in (0, 1), lambda >= 0.25.
HostPrefill MakeInputs(std::mt19937& rng, int T, int H, int K, ScalarType act) {
  HostPrefill in;
  std::normal_distribution<float> n01(0.0f, 1.0f);
  std::uniform_real_distribution<float> u01(0.0f, 1.0f);
  auto unit_rows = [&](std::vector<float>& x) {
    x.resize(static_cast<size_t>(T) * H * K);
    for (float& v : x) v = n01(rng);
    for (int r = 0; r < T * H; ++r) {
      double s = 0.0;
      for (int j = 0; j < K; ++j) s += x[r * K + j] * x[r * K + j];
      for (int j = 0; j < K; ++j) x[r * K + j] = RoundFp16(x[r * K + j] / static_cast<float>(std::sqrt(s)));
    }
  };
  unit_rows(in.q);
  unit_rows(in.k);
  in.v.resize(static_cast<size_t>(T) * H * K);
  for (float& v : in.v) v = ApplyRounding(n01(rng), RoundingFor(act));
  in.log_decay.resize(static_cast<size_t>(T) * H);
  in.beta.resize(in.log_decay.size());
  for (size_t i = 0; i < in.log_decay.size(); ++i) {
    const float a = 2.0f + 4.2f * u01(rng);
    in.log_decay[i] = -std::log1p(std::exp(-a));  // logsigmoid(a)
    in.beta[i] = 1.0f / (1.0f + std::exp(-n01(rng)));
  }
  in.lambda.resize(static_cast<size_t>(H) * K);
  for (float& l : in.lambda) l = 0.25f + std::log1p(std::exp(0.5f * n01(rng)));
  return in;
}

cpu::MesaPrefillParams CpuParams(const HostPrefill& in, int T, int H, int K, const CgControl& cg,
                                 ScalarType act, float* hkk, float* hkv, float* out, int32_t* iters,
                                 float* residual) {
  cpu::MesaPrefillParams p;
  p.seq_len = T;
  p.num_heads = H;
  p.head_dim = K;
  p.h_kk = hkk;
  p.h_kv = hkv;
  p.q = in.q.data();
  p.k = in.k.data();
  p.v = in.v.data();
  p.ld_in = static_cast<int64_t>(H) * K;
  p.log_decay = in.log_decay.data();
  p.beta = in.beta.data();
  p.lambda = in.lambda.data();
  p.cg = cg;
  p.value_rounding = RoundingFor(act);
  p.out = out;
  p.ld_out = static_cast<int64_t>(H) * K;
  p.cg_iters = iters;
  p.cg_residual = residual;
  return p;
}

class MesaPrefillTest : public GpuTest, public ::testing::WithParamInterface<PrefillCase> {};

TEST_P(MesaPrefillTest, MatchesCpuReference) {
  const PrefillCase& c = GetParam();
  const int T = c.seq_len, H = c.heads, K = c.k;
  std::mt19937 rng(1234u + T * 7 + H * 13 + K);
  CgControl cg;
  cg.mode = c.mode;
  cg.max_iters = 30;
  cg.tol = 1e-3f;
  const size_t state_n = static_cast<size_t>(H) * K * K;
  std::vector<float> hkk(state_n, 0.0f), hkv(state_n, 0.0f);
  if (c.history > 0) {  // a state left by an earlier call (fla's second user turn)
    const HostPrefill first = MakeInputs(rng, c.history, H, K, c.act);
    std::vector<float> out(static_cast<size_t>(c.history) * H * K);
    cpu::MesaPrefill(CpuParams(first, c.history, H, K, cg, c.act, hkk.data(), hkv.data(),
                               out.data(), nullptr, nullptr));
  }
  const HostPrefill in = MakeInputs(rng, T, H, K, c.act);

  std::vector<float> want_kk = hkk, want_kv = hkv;
  std::vector<float> want_out(static_cast<size_t>(T) * H * K);
  std::vector<int32_t> want_iters(static_cast<size_t>(T) * H);
  std::vector<float> want_res(want_iters.size());
  cpu::MesaPrefill(CpuParams(in, T, H, K, cg, c.act, want_kk.data(), want_kv.data(),
                             want_out.data(), want_iters.data(), want_res.data()));

  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_kk, Upload(hkk));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_kv, Upload(hkv));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_q, Upload(in.q));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_k, Upload(in.k));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_v, Upload(in.v));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_g, Upload(in.log_decay));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_beta, Upload(in.beta));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_lambda, Upload(in.lambda));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_out, Upload(std::vector<float>(want_out.size(), NAN)));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_iters, Upload(std::vector<int32_t>(want_iters.size(), -1)));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_res, Upload(std::vector<float>(want_res.size(), NAN)));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_ws, DeviceBuffer::Allocate(MesaPrefillWorkspaceBytes(H, K, T)));
  MesaPrefillParams p;
  p.seq_len = T;
  p.num_heads = H;
  p.head_dim = K;
  p.h_kk = d_kk.as<float>();
  p.h_kv = d_kv.as<float>();
  p.q = d_q.as<float>();
  p.k = d_k.as<float>();
  p.v = d_v.as<float>();
  p.ld_in = static_cast<int64_t>(H) * K;
  p.log_decay = d_g.as<float>();
  p.beta = d_beta.as<float>();
  p.lambda = d_lambda.as<float>();
  p.cg = cg;
  p.value_rounding = RoundingFor(c.act);
  p.out = d_out.as<float>();
  p.ld_out = static_cast<int64_t>(H) * K;
  p.cg_iters = d_iters.as<int32_t>();
  p.cg_residual = d_res.as<float>();
  p.max_seq_len = T;
  p.workspace = d_ws.data();
  MESA_ASSERT_OK(MesaPrefill(p));
  MESA_ASSERT_OK(Sync());
  MESA_ASSERT_OK_AND_ASSIGN(std::vector<float> got_out, Download<float>(d_out, want_out.size()));
  MESA_ASSERT_OK_AND_ASSIGN(std::vector<float> got_kk, Download<float>(d_kk, state_n));
  MESA_ASSERT_OK_AND_ASSIGN(std::vector<float> got_kv, Download<float>(d_kv, state_n));
  MESA_ASSERT_OK_AND_ASSIGN(std::vector<int32_t> got_iters, Download<int32_t>(d_iters, want_iters.size()));

  const double out_ratio = ErrorRatio(got_out, want_out);
  const double kk_ratio = ErrorRatio(got_kk, want_kk);
  const double kv_ratio = ErrorRatio(got_kv, want_kv);
  RecordProperty("out_error_ratio", absl::StrCat(out_ratio));
  RecordProperty("state_error_ratio", absl::StrCat(std::max(kk_ratio, kv_ratio)));
  std::printf("[ prefill ] %s: error ratio out %.2e, H_kk %.2e, H_kv %.2e\n", c.name.c_str(),
              out_ratio, kk_ratio, kv_ratio);
  EXPECT_LE(kk_ratio, 1e-5);
  EXPECT_LE(kv_ratio, 1e-5);
  EXPECT_LE(out_ratio, c.act == ScalarType::kFp16 ? 2e-3 : 5e-3);
  int differ = 0, worst = 0;
  for (size_t i = 0; i < got_iters.size(); ++i) {
    const int d = std::abs(got_iters[i] - want_iters[i]);
    differ += d != 0;
    worst = std::max(worst, d);
  }
  if (c.mode == CgMode::kFixed) {
    EXPECT_EQ(got_iters, want_iters);
  } else {
    EXPECT_LE(differ, static_cast<int>(got_iters.size() / 10)) << "solves whose step count differs";
    EXPECT_LE(worst, 2);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, MesaPrefillTest,
    ::testing::Values(
        PrefillCase{"t20_h2_k16_bf16_fixed", 20, 2, 16, ScalarType::kBf16, CgMode::kFixed, 0},
        PrefillCase{"t64_h2_k64_bf16_fixed", 64, 2, 64, ScalarType::kBf16, CgMode::kFixed, 0},
        PrefillCase{"t150_h3_k64_bf16_fixed", 150, 3, 64, ScalarType::kBf16, CgMode::kFixed, 0},
        PrefillCase{"t130_h2_k128_bf16_fixed", 130, 2, 128, ScalarType::kBf16, CgMode::kFixed, 0},
        PrefillCase{"t100_h2_k50_fp16_fixed", 100, 2, 50, ScalarType::kFp16, CgMode::kFixed, 0},
        PrefillCase{"t70_h2_k64_bf16_fixed_continued", 70, 2, 64, ScalarType::kBf16, CgMode::kFixed, 100},
        PrefillCase{"t150_h3_k64_bf16_adaptive", 150, 3, 64, ScalarType::kBf16, CgMode::kAdaptive, 0},
        PrefillCase{"t128_h2_k128_fp16_adaptive_continued", 128, 2, 128, ScalarType::kFp16, CgMode::kAdaptive, 64},
        // Many chunks (the per-chunk increments and the scan over them) and more blocks than SMs.
        PrefillCase{"t1000_h9_k128_bf16_fixed", 1000, 9, 128, ScalarType::kBf16, CgMode::kFixed, 0},
        PrefillCase{"t700_h5_k32_fp32_fixed_continued", 700, 5, 32, ScalarType::kFp32, CgMode::kFixed, 130},
        PrefillCase{"t900_h9_k64_bf16_adaptive", 900, 9, 64, ScalarType::kBf16, CgMode::kAdaptive, 0}),
    [](const ::testing::TestParamInfo<PrefillCase>& info) { return info.param.name; });

TEST(MesaPrefillArgs, BadShapesAreInvalidArgument) {
  MesaPrefillParams p;
  p.seq_len = 4;
  p.num_heads = 1;
  p.head_dim = 129;
  EXPECT_EQ(MesaPrefill(p).code(), absl::StatusCode::kInvalidArgument);
  p.head_dim = 64;  // shapes fine, pointers null
  EXPECT_EQ(MesaPrefill(p).code(), absl::StatusCode::kInvalidArgument);
  float dummy = 0.0f;
  p.h_kk = p.h_kv = p.out = &dummy;
  p.q = p.k = p.v = p.log_decay = p.beta = p.lambda = &dummy;
  p.workspace = &dummy;
  p.ld_in = p.ld_out = 64;
  p.max_seq_len = 2;  // shorter than seq_len: the workspace would overflow
  const absl::Status too_long = MesaPrefill(p);
  EXPECT_EQ(too_long.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(too_long.message()).find("max_seq_len 2"), std::string::npos) << too_long;
  p.seq_len = 0;  // nothing to do
  EXPECT_TRUE(MesaPrefill(p).ok());
}

}  // namespace
}  // namespace mesa::gpu::testing
