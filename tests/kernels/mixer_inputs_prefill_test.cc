// Parity of the prefill mixer-input kernels (kernels/cuda/mixer_inputs.cu: MixerInputsPrefill
// and ConvStatePrefillUpdate) with the CPU runner's prefill sequence for one segment
// (engine/cpu_model_runner.cc PrefillSegment): rounding of the in_proj output (+ gate biases),
// ShortConvSilu over the segment from the slot's conv state, L2NormHeads rounded to fp16 (fla's
// chunk path), MesaGates, v as model-dtype values, and the conv state the segment leaves. The
// packed cases put several sequences in one call, each with its own conv state, as the CUDA
// runner does: a sequence's conv must never read another's rows (short sequences, T < W - 1,
// catch that).
//
// Tolerances: v, z and the conv states are roundings and moves of the same inputs, bit-exact;
// log_decay and beta rtol 1e-5 (expf / log1pf). q and k: SiLU's expf may differ by an ulp and
// the l2 norm's sum of squares runs in another order, so the fp16 result may land on the other
// side of a rounding boundary (2 fp16 ulps), and, rarely, the conv output rounded to the model
// dtype before the norm flips first: one ulp of that dtype relative to the value (measured: 2
// of 17,920 elements at bf16). The error ratio over all elements must stay below 1e-4.
#include <cmath>
#include <cstdint>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/mixer_inputs.h"
#include "kernels/cpu/short_conv.h"
#include "kernels/cuda/mixer_inputs.h"
#include "tests/kernels/gpu_test_util.h"
#include "tests/kernels/mixer_inputs_case.h"

namespace mesa::gpu::testing {
namespace {

struct PrefillMixerCase {
  std::string name;
  std::vector<int> lens;  // the packed sequences' lengths
  int heads = 2, k = 64, conv = 4;
  bool gate = false;
  ScalarType act = ScalarType::kBf16;
  bool history = false;  // a non-empty conv state (a continued prefill)
};

std::ostream& operator<<(std::ostream& os, const PrefillMixerCase& c) { return os << c.name; }

class MixerInputsPrefillTest : public GpuTest, public ::testing::WithParamInterface<PrefillMixerCase> {};

TEST_P(MixerInputsPrefillTest, MatchesCpuRunnerSequence) {
  const PrefillMixerCase& c = GetParam();
  const int S = static_cast<int>(c.lens.size());
  int T = 0;
  for (int len : c.lens) T += len;
  const int H = c.heads, K = c.k, W = c.conv;
  const Rounding r = RoundingFor(c.act);
  const ProjColumns cols = ProjColumnsFor(H, K, c.gate);
  const int64_t dk = cols.dk, ld = cols.ld;
  std::mt19937 rng(131u + K + 7 * T + W);
  const std::vector<float> proj = Normal(rng, static_cast<size_t>(T) * ld, 1.5f);
  const std::vector<float> a_bias = Uniform(rng, H, 0.0f, 4.0f);
  const std::vector<float> b_bias = Uniform(rng, H, -1.0f, 2.0f);
  const std::vector<float> q_conv = Normal(rng, static_cast<size_t>(dk) * W, 0.6f);
  const std::vector<float> k_conv = Normal(rng, static_cast<size_t>(dk) * W, 0.6f);
  // Sequence s's conv states at [s * state_floats, +state_floats).
  const size_t state_floats = static_cast<size_t>(W - 1) * dk;
  const std::vector<float> q_state =
      c.history ? Normal(rng, S * state_floats, 1.0f, r) : std::vector<float>(S * state_floats, 0.0f);
  const std::vector<float> k_state =
      c.history ? Normal(rng, S * state_floats, 1.0f, r) : std::vector<float>(S * state_floats, 0.0f);

  // CPU: the runner's prefill segment, one sequence after the other.
  const std::vector<float> rounded = RoundedProjections(proj, T, cols, H, a_bias, b_bias, r);
  const size_t n = static_cast<size_t>(T) * dk;
  std::vector<float> want_q(n), want_k(n), want_v(n), want_z(n);
  std::vector<float> want_q_state = q_state, want_k_state = k_state;
  for (int s = 0, t0 = 0; s < S; t0 += c.lens[s], ++s) {
    cpu::ShortConvSilu(want_q.data() + t0 * dk, dk, rounded.data() + t0 * ld + cols.q, ld,
                       c.lens[s], dk, q_conv.data(), W, want_q_state.data() + s * state_floats, r);
    cpu::ShortConvSilu(want_k.data() + t0 * dk, dk, rounded.data() + t0 * ld + cols.k, ld,
                       c.lens[s], dk, k_conv.data(), W, want_k_state.data() + s * state_floats, r);
  }
  cpu::L2NormHeads(want_q.data(), T, H, K, dk, Rounding::kFp16);
  cpu::L2NormHeads(want_k.data(), T, H, K, dk, Rounding::kFp16);
  for (int t = 0; t < T; ++t) {
    for (int64_t j = 0; j < dk; ++j) {
      want_v[t * dk + j] = rounded[t * ld + cols.v + j];
      if (c.gate) want_z[t * dk + j] = rounded[t * ld + cols.g + j];
    }
  }
  std::vector<float> want_decay(static_cast<size_t>(T) * H), want_beta(want_decay.size());
  cpu::MesaGates(want_decay.data(), want_beta.data(), rounded.data() + cols.a,
                 rounded.data() + cols.b, T, H, ld);

  // GPU: the mixer inputs read the old conv state, then the update replaces it.
  std::vector<float> q_state_buf = q_state, k_state_buf = k_state;
  q_state_buf.push_back(0.0f);  // non-empty when W = 1 (no history)
  k_state_buf.push_back(0.0f);
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_proj, Upload(proj));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_a_bias, Upload(a_bias));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_b_bias, Upload(b_bias));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_q_conv, Upload(q_conv));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_k_conv, Upload(k_conv));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_q_state, Upload(q_state_buf));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_k_state, Upload(k_state_buf));
  const std::vector<float> nan_floats(n, NAN);
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_q, Upload(nan_floats));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_k, Upload(nan_floats));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_v, Upload(nan_floats));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_z, Upload(nan_floats));  // large enough for any act
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_decay, Upload(std::vector<float>(want_decay.size(), -7.0f)));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_beta, Upload(std::vector<float>(want_beta.size(), -7.0f)));

  MixerInputsPrefillParams p;
  for (int s = 0; s < S; ++s) {
    ASSERT_EQ(p.AddSequence(c.lens[s], d_q_state.as<float>() + s * state_floats,
                            d_k_state.as<float>() + s * state_floats),
              s);
  }
  p.num_heads = H;
  p.head_dim = K;
  p.conv_size = W;
  SetProjectionFields(&p, cols, d_proj, d_a_bias, d_b_bias, d_q_conv, d_k_conv);
  p.q = d_q.as<float>();
  p.k = d_k.as<float>();
  p.v = d_v.as<float>();
  p.z = c.gate ? d_z.data() : nullptr;
  p.log_decay = d_decay.as<float>();
  p.beta = d_beta.as<float>();
  p.act = c.act;
  MESA_ASSERT_OK(MixerInputsPrefill(p));
  MESA_ASSERT_OK(ConvStatePrefillUpdate(p));
  MESA_ASSERT_OK(Sync());

  MESA_ASSERT_OK_AND_ASSIGN(std::vector<float> got_q, Download<float>(d_q, n));
  MESA_ASSERT_OK_AND_ASSIGN(std::vector<float> got_k, Download<float>(d_k, n));
  MESA_ASSERT_OK_AND_ASSIGN(std::vector<float> got_v, Download<float>(d_v, n));
  // One ulp of the model dtype is at most 2^-7 (bf16) or 2^-10 (fp16) of the value.
  const float act_rtol = c.act == ScalarType::kBf16 ? 0x1p-7f : c.act == ScalarType::kFp16 ? 0x1p-10f : 0.0f;
  EXPECT_TRUE(AllClose(got_q, want_q, 0.0f, act_rtol, 2.0f, ScalarType::kFp16, "q"));
  EXPECT_TRUE(AllClose(got_k, want_k, 0.0f, act_rtol, 2.0f, ScalarType::kFp16, "k"));
  EXPECT_LE(ErrorRatio(got_q, want_q), 1e-4);
  EXPECT_LE(ErrorRatio(got_k, want_k), 1e-4);
  EXPECT_TRUE(AllClose(got_v, want_v, 0.0f, 0.0f, 0.0f, c.act, "v"));
  if (c.gate) {
    MESA_ASSERT_OK_AND_ASSIGN(std::vector<float> got_z, DownloadAct(d_z, n, c.act));
    EXPECT_TRUE(AllClose(got_z, want_z, 0.0f, 0.0f, 0.0f, c.act, "z"));
  }
  MESA_ASSERT_OK_AND_ASSIGN(std::vector<float> got_decay, Download<float>(d_decay, want_decay.size()));
  MESA_ASSERT_OK_AND_ASSIGN(std::vector<float> got_beta, Download<float>(d_beta, want_beta.size()));
  EXPECT_TRUE(AllClose(got_decay, want_decay, 1e-7f, 1e-5f, 0.0f, ScalarType::kFp32, "log_decay"));
  EXPECT_TRUE(AllClose(got_beta, want_beta, 1e-7f, 1e-5f, 0.0f, ScalarType::kFp32, "beta"));

  MESA_ASSERT_OK_AND_ASSIGN(std::vector<float> got_q_state, Download<float>(d_q_state, S * state_floats));
  MESA_ASSERT_OK_AND_ASSIGN(std::vector<float> got_k_state, Download<float>(d_k_state, S * state_floats));
  EXPECT_TRUE(AllClose(got_q_state, want_q_state, 0.0f, 0.0f, 0.0f, ScalarType::kFp32, "q conv state"));
  EXPECT_TRUE(AllClose(got_k_state, want_k_state, 0.0f, 0.0f, 0.0f, ScalarType::kFp32, "k conv state"));
}

std::vector<PrefillMixerCase> Cases() {
  using S = ScalarType;
  return {
      {"t1_h2_k16_w4_bf16", {1}, 2, 16, 4, false, S::kBf16, false},
      {"t2_h3_k50_w4_fp16_gate_history", {2}, 3, 50, 4, true, S::kFp16, true},  // T < W - 1
      {"t70_h2_k128_w4_bf16_history", {70}, 2, 128, 4, false, S::kBf16, true},
      {"t33_h4_k64_w3_fp32_gate", {33}, 4, 64, 3, true, S::kFp32, false},
      {"t9_h2_k48_w2_bf16_history", {9}, 2, 48, 2, false, S::kBf16, true},
      {"t5_h1_k64_w1_bf16", {5}, 1, 64, 1, false, S::kBf16, false},
      {"t40_h3_k256_w4_bf16_gate", {40}, 3, 256, 4, true, S::kBf16, true},  // 8 channels per lane
      {"t6_h1_k320_w4_bf16_history", {6}, 1, 320, 4, false, S::kBf16, true},  // the 32-per-lane kernel
      // Packed: every sequence's window starts from its own state.
      {"packed_1_70_2_33_h2_k64_w4_bf16_gate_history", {1, 70, 2, 33}, 2, 64, 4, true, S::kBf16, true},
      {"packed_5_3_1_h3_k48_w4_fp16", {5, 3, 1}, 3, 48, 4, false, S::kFp16, false},
  };
}

INSTANTIATE_TEST_SUITE_P(Shapes, MixerInputsPrefillTest, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<PrefillMixerCase>& info) {
                           return info.param.name;
                         });

}  // namespace
}  // namespace mesa::gpu::testing
