// Parity of the fused CUDA decode step (kernels/cuda/mesa_decode.cu) with the CPU reference
// kernels/cpu/mesa_decode.cc over a table of shapes: batch 1 and larger, head dims 16 to 128
// (odd ones too), pad rows, slots out of order, fixed (fla) and adaptive CG, the cap hit.
//
// Tolerances (why they are what they are):
//  * States: the update is the same FMA per element on both sides; only exp(g) may differ
//    (CUDA expf is within 2 ulp, glibc's is nearly correctly rounded), so each element may
//    differ by a few fp32 ulps of its size: rtol 1e-6, atol 1e-7 x the state's largest value.
//  * Output, fixed mode: the products are summed in the same order as the CPU, but the dot
//    products are block tree sums (CPU: sequential), so CG iterates differ by rounding,
//    amplified by the condition number (here below about 100) over 30 steps: 2e-4 of the
//    head's largest output plus, for bf16/fp16 outputs, 1 ulp of the stored dtype (a value
//    near a rounding boundary can round either way).
//  * Adaptive mode: a head whose residual lands within rounding of the threshold can stop one
//    step earlier or later than on the CPU; such a head's output differs by about the
//    tolerance (1e-3 relative), so it is compared at 1e-2 of the head's largest output, the
//    others as in fixed mode. At most a quarter of the heads may differ in their count, and
//    never by more than one step. Every head that stopped before the cap must meet the
//    tolerance on the GPU's own residual.
//  * The cap-hit case runs every head for exactly max_iters steps on both sides.
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
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/mesa_decode.h"
#include "kernels/cuda/mesa_decode.h"
#include "tests/kernels/gpu_test_util.h"

namespace mesa::gpu::testing {
namespace {

struct DecodeCase {
  std::string name;
  int batch = 1;
  int heads = 1;
  int k = 64;
  ScalarType act = ScalarType::kBf16;
  CgMode mode = CgMode::kFixed;
  int max_iters = 30;
  float tol = 1e-3f;
  std::vector<int> pad_rows;  // rows with no slot
  int history = 48;           // tokens already absorbed by each state (conditioning)
};

std::ostream& operator<<(std::ostream& os, const DecodeCase& c) { return os << c.name; }

// Inputs of one decode step on the host, as the CPU reference takes them.
struct HostDecode {
  int slots = 0;
  std::vector<int> slot_of_row;       // -1 = pad
  std::vector<float> h_kk, h_kv;      // [slots, H, K, K]
  std::vector<float> q, k, v;         // [B, H*K], model-dtype values
  std::vector<float> log_decay, beta; // [B, H]
  std::vector<float> lambda;          // [H*K]
  std::vector<CgControl> cg;          // [B]
};

// A unit vector of size k, rounded to the model dtype (as l2-normalised q/k are in decode).
std::vector<float> UnitVector(std::mt19937& rng, int k, Rounding r) {
  std::vector<float> v = Normal(rng, k, 1.0f);
  float ss = 0.0f;
  for (float x : v) ss += x * x;
  const float inv = 1.0f / std::sqrt(ss + 1e-6f);
  for (float& x : v) x = ApplyRounding(x * inv, r);
  return v;
}

// Realistic states: `history` steps of the recurrence from zero with random unit keys, decays
// in (0.73, 0.99) and betas in (0.2, 0.9): H_kk is PSD with eigenvalues up to a few tens, so
// (H_kk + diag lambda) has condition numbers up to about 100 with lambda >= 0.25.
HostDecode MakeInputs(const DecodeCase& c, uint32_t seed) {
  std::mt19937 rng(seed);
  const Rounding r = RoundingFor(c.act);
  const int B = c.batch, H = c.heads, K = c.k;
  const int64_t kk = static_cast<int64_t>(K) * K;
  HostDecode in;
  // Rows take slots in reverse order, so row i's slot is not slot i.
  in.slot_of_row.assign(B, -1);
  for (int b = B - 1; b >= 0; --b) {
    if (std::find(c.pad_rows.begin(), c.pad_rows.end(), b) == c.pad_rows.end()) {
      in.slot_of_row[b] = in.slots++;
    }
  }
  in.h_kk.assign(in.slots * H * kk, 0.0f);
  in.h_kv.assign(in.slots * H * kk, 0.0f);
  std::uniform_real_distribution<float> decay_logit(1.0f, 5.0f), beta_dist(0.2f, 0.9f);
  for (int64_t sh = 0; sh < static_cast<int64_t>(in.slots) * H; ++sh) {
    float* hkk = &in.h_kk[sh * kk];
    float* hkv = &in.h_kv[sh * kk];
    for (int t = 0; t < c.history; ++t) {
      const std::vector<float> key = UnitVector(rng, K, r);
      const std::vector<float> val = Normal(rng, K, 1.0f, r);
      const float gamma = cpu::Sigmoid(decay_logit(rng));
      const float beta = beta_dist(rng);
      for (int i = 0; i < K; ++i) {
        for (int j = 0; j < K; ++j) {
          hkk[i * K + j] = gamma * hkk[i * K + j] + beta * key[i] * key[j];
          hkv[i * K + j] = gamma * hkv[i * K + j] + beta * key[i] * val[j];
        }
      }
    }
  }
  for (int b = 0; b < B; ++b) {
    for (int h = 0; h < H; ++h) {
      const std::vector<float> qv = UnitVector(rng, K, r);
      const std::vector<float> kv = UnitVector(rng, K, r);
      in.q.insert(in.q.end(), qv.begin(), qv.end());
      in.k.insert(in.k.end(), kv.begin(), kv.end());
      // The CPU takes the gates as bf16-rounded logits pushed through logsigmoid/sigmoid.
      in.log_decay.push_back(cpu::LogSigmoid(RoundBf16(decay_logit(rng))));
      in.beta.push_back(cpu::Sigmoid(RoundBf16(beta_dist(rng) * 4.0f - 2.0f)));
    }
  }
  in.v = Normal(rng, static_cast<size_t>(B) * H * K, 1.0f, r);
  for (float lp : Uniform(rng, static_cast<size_t>(H) * K, -1.0f, 1.5f)) {
    in.lambda.push_back(std::log1p(std::exp(lp)) + 0.25f);  // softplus + lambda_lower_bound
  }
  in.cg.assign(B, CgControl{c.mode, c.max_iters, c.tol});
  return in;
}

struct DecodeOutputs {
  std::vector<float> h_kk, h_kv, out, residual;
  std::vector<int32_t> iters;
};

DecodeOutputs RunCpu(const DecodeCase& c, HostDecode in) {
  const int B = c.batch, H = c.heads, K = c.k;
  const int64_t slot_floats = static_cast<int64_t>(H) * K * K;
  std::vector<float*> hkk(B, nullptr), hkv(B, nullptr);
  for (int b = 0; b < B; ++b) {
    if (in.slot_of_row[b] < 0) continue;
    hkk[b] = in.h_kk.data() + in.slot_of_row[b] * slot_floats;
    hkv[b] = in.h_kv.data() + in.slot_of_row[b] * slot_floats;
  }
  DecodeOutputs o;
  o.out.assign(static_cast<size_t>(B) * H * K, -1.0f);
  o.iters.assign(static_cast<size_t>(B) * H, -1);
  o.residual.assign(static_cast<size_t>(B) * H, -1.0f);
  cpu::MesaDecodeParams p;
  p.batch = B;
  p.num_heads = H;
  p.head_dim = K;
  p.h_kk = hkk.data();
  p.h_kv = hkv.data();
  p.q = in.q.data();
  p.k = in.k.data();
  p.v = in.v.data();
  p.log_decay = in.log_decay.data();
  p.beta = in.beta.data();
  p.lambda = in.lambda.data();
  p.cg = in.cg.data();
  p.out = o.out.data();
  p.out_rounding = RoundingFor(c.act);
  p.cg_iters = o.iters.data();
  p.cg_residual = o.residual.data();
  cpu::MesaDecodeStep(p);
  o.h_kk = std::move(in.h_kk);
  o.h_kv = std::move(in.h_kv);
  return o;
}

// Runs the CUDA step on the same inputs; fills *o (fatal failures on errors).
void RunGpu(const DecodeCase& c, const HostDecode& in, DecodeOutputs* o) {
  const int B = c.batch, H = c.heads, K = c.k;
  const int64_t slot_floats = static_cast<int64_t>(H) * K * K;
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer hkk, Upload(in.h_kk));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer hkv, Upload(in.h_kv));
  std::vector<float*> hkk_rows(B, nullptr), hkv_rows(B, nullptr);
  for (int b = 0; b < B; ++b) {
    if (in.slot_of_row[b] < 0) continue;
    hkk_rows[b] = hkk.as<float>() + in.slot_of_row[b] * slot_floats;
    hkv_rows[b] = hkv.as<float>() + in.slot_of_row[b] * slot_floats;
  }
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer hkk_table, Upload(hkk_rows));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer hkv_table, Upload(hkv_rows));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer q, UploadAct(in.q, c.act));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer k, UploadAct(in.k, c.act));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer v, UploadAct(in.v, c.act));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer log_decay, Upload(in.log_decay));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer beta, Upload(in.beta));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer lambda, Upload(in.lambda));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer cg, Upload(in.cg));
  // Outputs start as NaN (all bits set, in any dtype), so a value the kernel forgets shows.
  const size_t out_elems = static_cast<size_t>(B) * H * K;
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer out,
                            Upload(std::vector<uint8_t>(out_elems * sizeof(float), 0xff)));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer iters,
                            Upload(std::vector<int32_t>(static_cast<size_t>(B) * H, -7)));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer residual,
                            Upload(std::vector<float>(static_cast<size_t>(B) * H, -7.0f)));
  MesaDecodeParams p;
  p.batch = B;
  p.num_heads = H;
  p.head_dim = K;
  p.h_kk = hkk_table.as<float* const>();
  p.h_kv = hkv_table.as<float* const>();
  p.q = q.data();
  p.k = k.data();
  p.v = v.data();
  p.log_decay = log_decay.as<float>();
  p.beta = beta.as<float>();
  p.lambda = lambda.as<float>();
  p.cg = cg.as<CgControl>();
  p.out = out.data();
  p.act = c.act;
  p.cg_iters = iters.as<int32_t>();
  p.cg_residual = residual.as<float>();
  MESA_ASSERT_OK(MesaDecodeStep(p));
  MESA_ASSERT_OK(Sync());
  MESA_ASSERT_OK_AND_ASSIGN(o->h_kk, Download<float>(hkk, in.h_kk.size()));
  MESA_ASSERT_OK_AND_ASSIGN(o->h_kv, Download<float>(hkv, in.h_kv.size()));
  MESA_ASSERT_OK_AND_ASSIGN(o->out, DownloadAct(out, out_elems, c.act));
  MESA_ASSERT_OK_AND_ASSIGN(o->iters, Download<int32_t>(iters, static_cast<size_t>(B) * H));
  MESA_ASSERT_OK_AND_ASSIGN(o->residual, Download<float>(residual, static_cast<size_t>(B) * H));
}

class MesaDecodeTest : public GpuTest, public ::testing::WithParamInterface<DecodeCase> {};

float MaxAbs(const std::vector<float>& v, size_t begin, size_t end) {
  float m = 0.0f;
  for (size_t i = begin; i < end; ++i) m = std::max(m, std::fabs(v[i]));
  return m;
}

TEST_P(MesaDecodeTest, MatchesCpuReference) {
  const DecodeCase& c = GetParam();
  const HostDecode in = MakeInputs(c, 1234u + static_cast<uint32_t>(c.k * 31 + c.batch));
  const DecodeOutputs want = RunCpu(c, in);
  DecodeOutputs got;
  ASSERT_NO_FATAL_FAILURE(RunGpu(c, in, &got));
  const int B = c.batch, H = c.heads, K = c.k;

  // States (pad rows have no slot, so every slot here belongs to a live row and was updated).
  const float state_scale = std::max(MaxAbs(want.h_kk, 0, want.h_kk.size()),
                                     MaxAbs(want.h_kv, 0, want.h_kv.size()));
  EXPECT_TRUE(AllClose(got.h_kk, want.h_kk, 1e-7f * state_scale, 1e-6f, 0.0f, ScalarType::kFp32,
                       "H_kk after the update"));
  EXPECT_TRUE(AllClose(got.h_kv, want.h_kv, 1e-7f * state_scale, 1e-6f, 0.0f, ScalarType::kFp32,
                       "H_kv after the update"));

  int count_mismatches = 0, live_heads = 0;
  for (int b = 0; b < B; ++b) {
    const bool pad = in.slot_of_row[b] < 0;
    for (int h = 0; h < H; ++h) {
      const size_t bh = static_cast<size_t>(b) * H + h;
      const size_t begin = bh * K, end = begin + K;
      const std::string where = absl::StrCat(c.name, " row ", b, " head ", h);
      const std::vector<float> got_o(got.out.begin() + begin, got.out.begin() + end);
      const std::vector<float> want_o(want.out.begin() + begin, want.out.begin() + end);
      if (pad) {
        EXPECT_EQ(got.iters[bh], 0) << where;
        EXPECT_EQ(got.residual[bh], 0.0f) << where;
        EXPECT_TRUE(AllClose(got_o, std::vector<float>(K, 0.0f), 0.0f, 0.0f, 0.0f, c.act,
                             where + " pad output"));
        continue;
      }
      ++live_heads;
      const float scale = MaxAbs(want.out, begin, end);
      if (c.mode == CgMode::kFixed) {
        EXPECT_EQ(got.iters[bh], c.max_iters) << where;
        EXPECT_EQ(want.iters[bh], c.max_iters) << where;
      } else {
        EXPECT_LE(std::abs(got.iters[bh] - want.iters[bh]), 1)
            << where << ": GPU " << got.iters[bh] << " steps, CPU " << want.iters[bh];
        EXPECT_LE(got.iters[bh], c.max_iters) << where;
        if (got.iters[bh] < c.max_iters) {
          EXPECT_LE(got.residual[bh], c.tol) << where << " stopped early above tolerance";
        } else if (c.tol < 1e-6f) {
          EXPECT_GT(got.residual[bh], c.tol) << where << " hit the cap below tolerance";
        }
      }
      const bool same_count = got.iters[bh] == want.iters[bh];
      if (!same_count) ++count_mismatches;
      const float atol = (same_count ? 2e-4f : 1e-2f) * scale;
      EXPECT_TRUE(AllClose(got_o, want_o, atol, 0.0f, 1.0f, c.act, where + " output"));
      // Residuals: equal steps give residuals equal up to the CG's rounding noise.
      if (same_count) {
        EXPECT_NEAR(got.residual[bh], want.residual[bh], 0.05f * want.residual[bh] + 1e-5f)
            << where << " relative residual";
      }
    }
  }
  EXPECT_LE(count_mismatches, std::max(1, live_heads / 4))
      << count_mismatches << " of " << live_heads << " heads stopped at a different step";
  const double ratio = ErrorRatio(got.out, want.out);
  RecordProperty("error_ratio", std::to_string(ratio));
  EXPECT_LT(ratio, c.act == ScalarType::kFp32 ? 1e-4 : 5e-3) << "whole-output error ratio";
}

// The table: batch 1 and larger, odd head dims, pads, both modes, the three dtypes, the cap.
std::vector<DecodeCase> Cases() {
  using S = ScalarType;
  std::vector<DecodeCase> cases;
  auto add = [&](std::string name, int b, int h, int k, S act, CgMode mode, int iters, float tol,
                 std::vector<int> pads) {
    DecodeCase c;
    c.name = std::move(name);
    c.batch = b;
    c.heads = h;
    c.k = k;
    c.act = act;
    c.mode = mode;
    c.max_iters = iters;
    c.tol = tol;
    c.pad_rows = std::move(pads);
    cases.push_back(c);
  };
  const CgMode F = CgMode::kFixed, A = CgMode::kAdaptive;
  add("b1_h2_k16_fp32_fixed", 1, 2, 16, S::kFp32, F, 30, 1e-3f, {});
  add("b1_h4_k64_bf16_fixed", 1, 4, 64, S::kBf16, F, 30, 1e-3f, {});
  add("b1_h2_k128_fp32_fixed", 1, 2, 128, S::kFp32, F, 30, 1e-3f, {});
  add("b3_h2_k48_bf16_fixed", 3, 2, 48, S::kBf16, F, 30, 1e-3f, {});
  add("b4_h3_k50_fp16_fixed_pad", 4, 3, 50, S::kFp16, F, 16, 1e-3f, {2});
  add("b2_h2_k33_fp32_fixed_5iters", 2, 2, 33, S::kFp32, F, 5, 1e-3f, {});
  add("b1_h2_k64_bf16_adaptive", 1, 2, 64, S::kBf16, A, 30, 1e-3f, {});
  add("b5_h3_k50_fp32_adaptive", 5, 3, 50, S::kFp32, A, 30, 1e-3f, {});
  add("b8_h4_k64_bf16_adaptive_pads", 8, 4, 64, S::kBf16, A, 30, 1e-3f, {0, 5});
  add("b4_h2_k128_bf16_adaptive", 4, 2, 128, S::kBf16, A, 30, 1e-4f, {1});
  add("b3_h2_k96_fp16_adaptive", 3, 2, 96, S::kFp16, A, 30, 1e-3f, {});
  add("b6_h2_k48_fp32_adaptive_tight", 6, 2, 48, S::kFp32, A, 60, 1e-6f, {});
  // Cap hit: a tolerance no solve reaches in 3 steps; every head stops at the cap.
  add("b3_h2_k64_bf16_adaptive_cap", 3, 2, 64, S::kBf16, A, 3, 1e-9f, {1});
  add("b2_h2_k128_fp32_adaptive_cap", 2, 2, 128, S::kFp32, A, 4, 1e-9f, {});
  // Zero iterations: the Jacobi guess alone.
  add("b2_h2_k64_fp32_fixed_0iters", 2, 2, 64, S::kFp32, F, 0, 1e-3f, {});
  add("b16_h4_k64_bf16_adaptive", 16, 4, 64, S::kBf16, A, 30, 1e-3f, {3, 4, 15});
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Shapes, MesaDecodeTest, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<DecodeCase>& info) {
                           return info.param.name;
                         });

// Mixed per-row CG settings in one batch: each row follows its own control.
TEST_F(GpuTest, MesaDecodePerRowCgControl) {
  DecodeCase c;
  c.name = "mixed";
  c.batch = 3;
  c.heads = 2;
  c.k = 64;
  c.act = ScalarType::kFp32;
  HostDecode in = MakeInputs(c, 99u);
  in.cg[0] = CgControl{CgMode::kFixed, 30, 1e-3f};
  in.cg[1] = CgControl{CgMode::kAdaptive, 30, 1e-3f};
  in.cg[2] = CgControl{CgMode::kAdaptive, 2, 1e-9f};
  const DecodeOutputs want = RunCpu(c, in);
  DecodeOutputs got;
  ASSERT_NO_FATAL_FAILURE(RunGpu(c, in, &got));
  for (int h = 0; h < c.heads; ++h) {
    EXPECT_EQ(got.iters[0 * c.heads + h], 30);
    EXPECT_LE(std::abs(got.iters[1 * c.heads + h] - want.iters[1 * c.heads + h]), 1);
    EXPECT_EQ(got.iters[2 * c.heads + h], 2);
  }
  EXPECT_LT(ErrorRatio(got.out, want.out), 1e-3);
}

TEST(MesaDecodeArgs, RejectsHeadDimsTheKernelDoesNotTake) {
  MesaDecodeParams p;
  p.batch = 1;
  p.num_heads = 1;
  p.head_dim = 129;
  EXPECT_EQ(MesaDecodeStep(p).code(), absl::StatusCode::kInvalidArgument);
  p.head_dim = 0;
  EXPECT_EQ(MesaDecodeStep(p).code(), absl::StatusCode::kInvalidArgument);
  p.head_dim = 64;  // shapes fine, pointers null
  EXPECT_EQ(MesaDecodeStep(p).code(), absl::StatusCode::kInvalidArgument);
}

TEST(MesaDecodeArgs, SharedMemoryFitsAnH100Block) {
  // 227 KiB is the opt-in limit of one block on sm_90; K = 128 must fit with room to spare.
  EXPECT_LE(MesaDecodeSharedBytes(kMaxDecodeHeadDim), 227u * 1024u);
  // H_kv [K*K] + p, x, k, v, diag [5 x 64] + 8 warps' partial sums [8 x 64] + scratch [2 x 32].
  EXPECT_EQ(MesaDecodeSharedBytes(64), (64u * 64 + 5 * 64 + 8 * 64 + 64) * sizeof(float));
  EXPECT_EQ(MesaDecodeSharedBytes(50), (50u * 50 + 5 * 64 + 8 * 64 + 64) * sizeof(float));
}

}  // namespace
}  // namespace mesa::gpu::testing
