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
#include "tests/kernels/prefill_inputs.h"

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
  ASSERT_EQ(p.AddSequence(T, d_kk.as<float>(), d_kv.as<float>(), cg), 0);
  p.num_heads = H;
  p.head_dim = K;
  p.q = d_q.as<float>();
  p.k = d_k.as<float>();
  p.v = d_v.as<float>();
  p.ld_in = static_cast<int64_t>(H) * K;
  p.log_decay = d_g.as<float>();
  p.beta = d_beta.as<float>();
  p.lambda = d_lambda.as<float>();
  p.value_rounding = RoundingFor(c.act);
  p.out = d_out.as<float>();
  p.ld_out = static_cast<int64_t>(H) * K;
  p.cg_iters = d_iters.as<int32_t>();
  p.cg_residual = d_res.as<float>();
  p.workspace_rows = T;
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
  float dummy = 0.0f;
  CgControl cg;
  cg.mode = CgMode::kFixed;
  ASSERT_EQ(p.AddSequence(4, &dummy, &dummy, cg), 0);
  p.num_heads = 1;
  p.head_dim = 129;
  EXPECT_EQ(MesaPrefill(p).code(), absl::StatusCode::kInvalidArgument);
  p.head_dim = 64;  // shapes fine, pointers null
  EXPECT_EQ(MesaPrefill(p).code(), absl::StatusCode::kInvalidArgument);
  p.out = &dummy;
  p.q = p.k = p.v = p.log_decay = p.beta = p.lambda = &dummy;
  p.workspace = &dummy;
  p.ld_in = p.ld_out = 64;
  // Three sequences of 4, 64 and 65 tokens are 4 chunks; a workspace for 128 rows holds 2.
  ASSERT_EQ(p.AddSequence(64, &dummy, &dummy, cg), 1);
  ASSERT_EQ(p.AddSequence(65, &dummy, &dummy, cg), 2);
  p.workspace_rows = 128;
  const absl::Status too_many = MesaPrefill(p);
  EXPECT_EQ(too_many.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(too_many.message()).find("have 4 chunks"), std::string::npos) << too_many;
  EXPECT_NE(std::string(too_many.message()).find("holds 2"), std::string::npos) << too_many;
  // One call takes one CG mode.
  p.workspace_rows = 4 * kPrefillChunk;
  p.cg[1].mode = CgMode::kAdaptive;
  const absl::Status mixed = MesaPrefill(p);
  EXPECT_EQ(mixed.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(mixed.message()).find("sequence 1 runs CG in adaptive mode"),
            std::string::npos) << mixed;
  p.cg[1].mode = CgMode::kFixed;
  p.h_kv[2] = nullptr;
  EXPECT_EQ(MesaPrefill(p).code(), absl::StatusCode::kInvalidArgument);
  // An empty sequence is refused, and the table has a fixed capacity.
  MesaPrefillParams q = p;
  q.h_kv[2] = &dummy;
  ASSERT_EQ(q.AddSequence(0, &dummy, &dummy, cg), 3);
  const absl::Status empty = MesaPrefill(q);
  EXPECT_NE(std::string(empty.message()).find("sequence 3 has 0 tokens"), std::string::npos) << empty;
  MesaPrefillParams full;
  for (int s = 0; s < kMaxPackedSeqs; ++s) ASSERT_EQ(full.AddSequence(1, &dummy, &dummy, cg), s);
  EXPECT_EQ(full.AddSequence(1, &dummy, &dummy, cg), -1);
  MesaPrefillParams none;  // no sequence: nothing to do
  none.num_heads = 1;
  none.head_dim = 64;
  EXPECT_TRUE(MesaPrefill(none).ok());
}

}  // namespace
}  // namespace mesa::gpu::testing
