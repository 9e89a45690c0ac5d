// Parity of the fused decode mixer-input kernel (kernels/cuda/mixer_inputs.cu) with the CPU
// runner's sequence for one decode token: rounding of the in_proj output (+ gate biases),
// ShortConvSilu with the slot's conv state, L2NormHeads in the model dtype, MesaGates.
//
// Tolerances:
//  * v, z and the new conv states are roundings and moves of the same fp32 inputs: bit-exact.
//  * q, k: the conv is the same FMA chain in the same tap order; SiLU's expf may differ by an
//    ulp, and the l2 norm's sum of squares is a block tree sum (CPU: sequential), so the fp32
//    value before the final rounding differs by a few fp32 ulps. Stored as bf16/fp16 that is
//    1 ulp of the stored dtype (a value near a rounding boundary), 2 where the conv output
//    itself rounded the other way before the norm (rare); for fp32, 1e-5 (|q| <= 1).
//  * log_decay, beta: same rounded logit on both sides; expf/log1pf within 2 ulp: rtol 1e-5.
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

struct MixerCase {
  std::string name;
  int batch = 1, heads = 2, k = 64, conv = 4;
  bool gate = false;
  ScalarType act = ScalarType::kBf16;
  std::vector<int> pad_rows;
};

std::ostream& operator<<(std::ostream& os, const MixerCase& c) { return os << c.name; }

class MixerInputsTest : public GpuTest, public ::testing::WithParamInterface<MixerCase> {};

TEST_P(MixerInputsTest, MatchesCpuRunnerSequence) {
  const MixerCase& c = GetParam();
  const int B = c.batch, H = c.heads, K = c.k, W = c.conv;
  const Rounding r = RoundingFor(c.act);
  const ProjColumns cols = ProjColumnsFor(H, K, c.gate);
  const int64_t dk = cols.dk, ld = cols.ld;
  std::mt19937 rng(77u + K + B);
  // Raw GEMM output (unrounded), biases, conv weights, conv states (past rounded inputs).
  const std::vector<float> proj = Normal(rng, static_cast<size_t>(B) * ld, 1.5f);
  const std::vector<float> a_bias = Uniform(rng, H, 0.0f, 4.0f);
  const std::vector<float> b_bias = Uniform(rng, H, -1.0f, 2.0f);
  const std::vector<float> q_conv = Normal(rng, static_cast<size_t>(dk) * W, 0.6f);
  const std::vector<float> k_conv = Normal(rng, static_cast<size_t>(dk) * W, 0.6f);
  const size_t state_floats = static_cast<size_t>(W - 1) * dk;
  std::vector<bool> pad(B, false);
  for (int b : c.pad_rows) pad[b] = true;
  std::vector<std::vector<float>> q_state(B), k_state(B);
  for (int b = 0; b < B; ++b) {
    q_state[b] = Normal(rng, state_floats, 1.0f, r);
    k_state[b] = Normal(rng, state_floats, 1.0f, r);
  }

  // CPU: the runner's Decode, row by row (engine/cpu_model_runner.cc).
  const std::vector<float> rounded = RoundedProjections(proj, B, cols, H, a_bias, b_bias, r);
  std::vector<float> want_q(B * dk), want_k(B * dk), want_v(B * dk), want_z(B * dk);
  std::vector<std::vector<float>> want_q_state = q_state, want_k_state = k_state;
  for (int b = 0; b < B; ++b) {
    std::vector<float> zeros(state_floats, 0.0f);
    cpu::ShortConvSilu(&want_q[b * dk], dk, &rounded[b * ld + cols.q], ld, 1, dk, q_conv.data(), W,
                       pad[b] ? zeros.data() : want_q_state[b].data(), r);
    zeros.assign(state_floats, 0.0f);
    cpu::ShortConvSilu(&want_k[b * dk], dk, &rounded[b * ld + cols.k], ld, 1, dk, k_conv.data(), W,
                       pad[b] ? zeros.data() : want_k_state[b].data(), r);
    for (int64_t j = 0; j < dk; ++j) {
      want_v[b * dk + j] = rounded[b * ld + cols.v + j];
      if (c.gate) want_z[b * dk + j] = rounded[b * ld + cols.g + j];
    }
  }
  cpu::L2NormHeads(want_q.data(), B, H, K, dk, r);
  cpu::L2NormHeads(want_k.data(), B, H, K, dk, r);
  std::vector<float> want_decay(B * H), want_beta(B * H);
  cpu::MesaGates(want_decay.data(), want_beta.data(), rounded.data() + cols.a,
                 rounded.data() + cols.b, B, H, ld);

  // GPU.
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_proj, Upload(proj));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_a_bias, Upload(a_bias));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_b_bias, Upload(b_bias));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_q_conv, Upload(q_conv));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_k_conv, Upload(k_conv));
  std::vector<float> all_q_state, all_k_state;
  for (int b = 0; b < B; ++b) {
    all_q_state.insert(all_q_state.end(), q_state[b].begin(), q_state[b].end());
    all_k_state.insert(all_k_state.end(), k_state[b].begin(), k_state[b].end());
  }
  // One extra float keeps the buffers non-empty when W = 1 (no history).
  all_q_state.push_back(0.0f);
  all_k_state.push_back(0.0f);
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_q_state, Upload(all_q_state));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_k_state, Upload(all_k_state));
  std::vector<float*> q_rows(B, nullptr), k_rows(B, nullptr);
  for (int b = 0; b < B; ++b) {
    if (pad[b]) continue;
    q_rows[b] = d_q_state.as<float>() + b * state_floats;
    k_rows[b] = d_k_state.as<float>() + b * state_floats;
  }
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_q_rows, Upload(q_rows));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_k_rows, Upload(k_rows));
  const size_t n = static_cast<size_t>(B) * dk;
  const std::vector<uint8_t> nan_bytes(n * sizeof(float), 0xff);
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_q, Upload(nan_bytes));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_k, Upload(nan_bytes));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_v, Upload(nan_bytes));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_z, Upload(nan_bytes));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_decay, Upload(std::vector<float>(B * H, -7.0f)));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_beta, Upload(std::vector<float>(B * H, -7.0f)));

  MixerInputsDecodeParams p;
  p.batch = B;
  p.num_heads = H;
  p.head_dim = K;
  p.conv_size = W;
  SetProjectionFields(&p, cols, d_proj, d_a_bias, d_b_bias, d_q_conv, d_k_conv);
  p.conv_q_state = d_q_rows.as<float* const>();
  p.conv_k_state = d_k_rows.as<float* const>();
  p.q = d_q.data();
  p.k = d_k.data();
  p.v = d_v.data();
  p.z = c.gate ? d_z.data() : nullptr;
  p.log_decay = d_decay.as<float>();
  p.beta = d_beta.as<float>();
  p.act = c.act;
  MESA_ASSERT_OK(MixerInputsDecode(p));
  MESA_ASSERT_OK(Sync());

  const float qk_atol = c.act == ScalarType::kFp32 ? 1e-5f : 0.0f;
  MESA_ASSERT_OK_AND_ASSIGN(std::vector<float> got_q, DownloadAct(d_q, n, c.act));
  MESA_ASSERT_OK_AND_ASSIGN(std::vector<float> got_k, DownloadAct(d_k, n, c.act));
  MESA_ASSERT_OK_AND_ASSIGN(std::vector<float> got_v, DownloadAct(d_v, n, c.act));
  EXPECT_TRUE(AllClose(got_q, want_q, qk_atol, 0.0f, 2.0f, c.act, "q"));
  EXPECT_TRUE(AllClose(got_k, want_k, qk_atol, 0.0f, 2.0f, c.act, "k"));
  EXPECT_TRUE(AllClose(got_v, want_v, 0.0f, 0.0f, 0.0f, c.act, "v"));
  if (c.gate) {
    MESA_ASSERT_OK_AND_ASSIGN(std::vector<float> got_z, DownloadAct(d_z, n, c.act));
    EXPECT_TRUE(AllClose(got_z, want_z, 0.0f, 0.0f, 0.0f, c.act, "z"));
  }
  MESA_ASSERT_OK_AND_ASSIGN(std::vector<float> got_decay, Download<float>(d_decay, B * H));
  MESA_ASSERT_OK_AND_ASSIGN(std::vector<float> got_beta, Download<float>(d_beta, B * H));
  EXPECT_TRUE(AllClose(got_decay, want_decay, 1e-7f, 1e-5f, 0.0f, ScalarType::kFp32, "log_decay"));
  EXPECT_TRUE(AllClose(got_beta, want_beta, 1e-7f, 1e-5f, 0.0f, ScalarType::kFp32, "beta"));

  // Conv states: live rows shifted by one with the new input last; pad rows untouched.
  MESA_ASSERT_OK_AND_ASSIGN(std::vector<float> got_q_state,
                            Download<float>(d_q_state, all_q_state.size()));
  MESA_ASSERT_OK_AND_ASSIGN(std::vector<float> got_k_state,
                            Download<float>(d_k_state, all_k_state.size()));
  for (int b = 0; b < B; ++b) {
    const std::vector<float>& wq = pad[b] ? q_state[b] : want_q_state[b];
    const std::vector<float>& wk = pad[b] ? k_state[b] : want_k_state[b];
    const std::vector<float> gq(got_q_state.begin() + b * state_floats,
                                got_q_state.begin() + (b + 1) * state_floats);
    const std::vector<float> gk(got_k_state.begin() + b * state_floats,
                                got_k_state.begin() + (b + 1) * state_floats);
    EXPECT_TRUE(AllClose(gq, wq, 0.0f, 0.0f, 0.0f, ScalarType::kFp32,
                         "q conv state of row " + std::to_string(b)));
    EXPECT_TRUE(AllClose(gk, wk, 0.0f, 0.0f, 0.0f, ScalarType::kFp32,
                         "k conv state of row " + std::to_string(b)));
  }
}

std::vector<MixerCase> Cases() {
  using S = ScalarType;
  return {
      {"b1_h2_k16_w4_bf16", 1, 2, 16, 4, false, S::kBf16, {}},
      {"b4_h3_k50_w3_fp16_gate_pad", 4, 3, 50, 3, true, S::kFp16, {1}},
      {"b3_h2_k128_w4_fp32_gate", 3, 2, 128, 4, true, S::kFp32, {}},
      {"b5_h4_k64_w4_bf16_pads", 5, 4, 64, 4, false, S::kBf16, {0, 4}},
      {"b2_h2_k48_w2_bf16", 2, 2, 48, 2, false, S::kBf16, {}},
      {"b2_h1_k64_w1_bf16", 2, 1, 64, 1, false, S::kBf16, {}},
  };
}

INSTANTIATE_TEST_SUITE_P(Shapes, MixerInputsTest, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<MixerCase>& info) {
                           return info.param.name;
                         });

}  // namespace
}  // namespace mesa::gpu::testing
