// The MesaNet mixer kernels (decode step and chunked prefill) against a float64 reference with
// exact Cholesky solves, and the CG modes' contracts (fixed counts, adaptive stop, caps).
#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/mesa_decode.h"
#include "kernels/cpu/mesa_prefill.h"
#include "kernels/cpu/mixer_inputs.h"
#include "tests/testing/exact_mesa.h"

namespace mesa {
namespace {

using testing::ExactMesaHead;
using testing::RelativeRms;

// Inputs for one head over T tokens, already rounded the way the kernels receive them.
struct HeadInputs {
  int32_t t = 0, k = 0;
  std::vector<float> q, key, v, log_decay, beta, lambda;
};

HeadInputs MakeInputs(int32_t t, int32_t k, uint64_t seed, cpu::Rounding qk_rounding,
                      float max_a = 6.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> a_dist(1.0f, max_a), beta_dist(0.2f, 1.0f),
      lam_dist(-1.0f, 1.5f);
  HeadInputs in;
  in.t = t;
  in.k = k;
  in.q.resize(static_cast<size_t>(t) * k);
  in.key.resize(in.q.size());
  in.v.resize(in.q.size());
  for (size_t i = 0; i < in.q.size(); ++i) {
    in.q[i] = normal(rng);
    in.key[i] = normal(rng);
    in.v[i] = cpu::ApplyRounding(normal(rng), cpu::Rounding::kBf16);
  }
  cpu::L2NormHeads(in.q.data(), t, 1, k, k, qk_rounding);
  cpu::L2NormHeads(in.key.data(), t, 1, k, k, qk_rounding);
  for (int32_t s = 0; s < t; ++s) {
    in.log_decay.push_back(cpu::LogSigmoid(a_dist(rng)));
    in.beta.push_back(beta_dist(rng));
  }
  for (int32_t j = 0; j < k; ++j) in.lambda.push_back(std::log1p(std::exp(lam_dist(rng))) + 0.25f);
  return in;
}

struct DecodeRun {
  std::vector<float> out;       // [T, K]
  std::vector<int32_t> iters;   // [T]
  std::vector<float> residual;  // [T]
  std::vector<float> h_kk, h_kv;
};

DecodeRun RunDecode(const HeadInputs& in, const CgControl& cg) {
  const int32_t K = in.k;
  DecodeRun r;
  r.h_kk.assign(static_cast<size_t>(K) * K, 0.0f);
  r.h_kv.assign(r.h_kk.size(), 0.0f);
  r.out.resize(static_cast<size_t>(in.t) * K);
  r.iters.resize(in.t);
  r.residual.resize(in.t);
  float* hkk = r.h_kk.data();
  float* hkv = r.h_kv.data();
  for (int32_t s = 0; s < in.t; ++s) {
    cpu::MesaDecodeParams p;
    p.batch = 1;
    p.num_heads = 1;
    p.head_dim = K;
    p.h_kk = &hkk;
    p.h_kv = &hkv;
    p.q = &in.q[s * K];
    p.k = &in.key[s * K];
    p.v = &in.v[s * K];
    p.log_decay = &in.log_decay[s];
    p.beta = &in.beta[s];
    p.lambda = in.lambda.data();
    p.cg = &cg;
    p.out = &r.out[s * K];
    p.cg_iters = &r.iters[s];
    p.cg_residual = &r.residual[s];
    cpu::MesaDecodeStep(p);
  }
  return r;
}

DecodeRun RunPrefill(const HeadInputs& in, const CgControl& cg, int32_t split = 0) {
  const int32_t K = in.k;
  DecodeRun r;
  r.h_kk.assign(static_cast<size_t>(K) * K, 0.0f);
  r.h_kv.assign(r.h_kk.size(), 0.0f);
  r.out.resize(static_cast<size_t>(in.t) * K);
  r.iters.resize(in.t);
  r.residual.resize(in.t);
  auto run = [&](int32_t begin, int32_t end) {
    cpu::MesaPrefillParams p;
    p.seq_len = end - begin;
    p.num_heads = 1;
    p.head_dim = K;
    p.h_kk = r.h_kk.data();
    p.h_kv = r.h_kv.data();
    p.q = &in.q[begin * K];
    p.k = &in.key[begin * K];
    p.v = &in.v[begin * K];
    p.ld_in = K;
    p.log_decay = &in.log_decay[begin];
    p.beta = &in.beta[begin];
    p.lambda = in.lambda.data();
    p.cg = cg;
    p.out = &r.out[begin * K];
    p.ld_out = K;
    p.cg_iters = &r.iters[begin];
    p.cg_residual = &r.residual[begin];
    cpu::MesaPrefill(p);
  };
  if (split > 0) {
    run(0, split);
    run(split, in.t);
  } else {
    run(0, in.t);
  }
  return r;
}

class ExactSolveTest : public ::testing::TestWithParam<int32_t> {};

TEST_P(ExactSolveTest, DecodeAdaptiveAtTightToleranceMatchesCholesky) {
  const int32_t K = GetParam(), T = 150;
  const HeadInputs in = MakeInputs(T, K, 11 + K, cpu::Rounding::kBf16);
  const CgControl cg{CgMode::kAdaptive, 500, 1e-6f};
  const DecodeRun run = RunDecode(in, cg);
  const auto exact = ExactMesaHead(T, K, in.q.data(), in.key.data(), in.v.data(),
                                   in.log_decay.data(), in.beta.data(), in.lambda.data(),
                                   nullptr, nullptr);
  // Output is rounded to bf16 (relative RMS ~1.1e-3); the solve itself adds nothing visible.
  EXPECT_LT(RelativeRms(run.out.data(), exact.o.data(), run.out.size()), 2.5e-3);
  for (int32_t s = 0; s < T; ++s) {
    EXPECT_LE(run.residual[s], 1e-6f) << "token " << s;
    EXPECT_LT(run.iters[s], cg.max_iters) << "token " << s;
  }
  // The solution itself, re-solved from the kernel's final state, against the exact one.
  std::vector<float> x(K), scratch(3 * K);
  float residual = 0.0f;
  cpu::SolveCgDecode(run.h_kk.data(), in.lambda.data(), &in.q[(T - 1) * K], K, cg, x.data(),
                     scratch.data(), &residual);
  EXPECT_LT(RelativeRms(x.data(), &exact.x[(T - 1) * K], K), 1e-4);
}

TEST_P(ExactSolveTest, PrefillAdaptiveAtTightToleranceMatchesCholesky) {
  const int32_t K = GetParam(), T = 150;
  const HeadInputs in = MakeInputs(T, K, 23 + K, cpu::Rounding::kFp16);
  const CgControl cg{CgMode::kAdaptive, 500, 1e-6f};
  const DecodeRun run = RunPrefill(in, cg);
  const auto exact = ExactMesaHead(T, K, in.q.data(), in.key.data(), in.v.data(),
                                   in.log_decay.data(), in.beta.data(), in.lambda.data(),
                                   nullptr, nullptr);
  EXPECT_LT(RelativeRms(run.out.data(), exact.o.data(), run.out.size()), 2.5e-3);
  for (int32_t s = 0; s < T; ++s) {
    EXPECT_LE(run.residual[s], 1e-6f) << "token " << s;
    const double err = RelativeRms(&run.out[s * K], &exact.o[s * K], K);
    EXPECT_LT(err, 6e-3) << "token " << s;
  }
}

TEST_P(ExactSolveTest, FixedThirtyStepsIsWithinFlaOwnToleranceOfExact) {
  // fla's op test promises the chunk output within 0.6% relative RMS of an exact solve.
  const int32_t K = GetParam(), T = 150;
  const HeadInputs in = MakeInputs(T, K, 31 + K, cpu::Rounding::kFp16);
  const CgControl cg{CgMode::kFixed, 30, 0.0f};
  const auto exact = ExactMesaHead(T, K, in.q.data(), in.key.data(), in.v.data(),
                                   in.log_decay.data(), in.beta.data(), in.lambda.data(),
                                   nullptr, nullptr);
  const DecodeRun prefill = RunPrefill(in, cg);
  EXPECT_LT(RelativeRms(prefill.out.data(), exact.o.data(), prefill.out.size()), 6e-3);
  for (int32_t it : prefill.iters) EXPECT_EQ(it, 30);
  const DecodeRun decode = RunDecode(in, cg);
  EXPECT_LT(RelativeRms(decode.out.data(), exact.o.data(), decode.out.size()), 6e-3);
  for (int32_t it : decode.iters) EXPECT_EQ(it, 30);
}

INSTANTIATE_TEST_SUITE_P(HeadDims, ExactSolveTest, ::testing::Values(16, 50, 64, 128));

TEST(CgModesTest, LooserToleranceTakesFewerIterations) {
  const HeadInputs in = MakeInputs(120, 64, 5, cpu::Rounding::kBf16);
  int64_t previous = INT64_MAX;
  for (float tol : {1e-6f, 1e-4f, 1e-2f}) {
    const DecodeRun run = RunDecode(in, CgControl{CgMode::kAdaptive, 200, tol});
    int64_t total = 0;
    for (int32_t it : run.iters) total += it;
    EXPECT_LT(total, previous) << "tol " << tol;
    previous = total;
    for (float r : run.residual) EXPECT_LE(r, tol);
  }
}

TEST(CgModesTest, CapIsReportedWhenToleranceIsNotReached) {
  // Slow decay makes later systems ill-conditioned; two steps cannot reach 1e-6.
  const HeadInputs in = MakeInputs(100, 32, 7, cpu::Rounding::kBf16, /*max_a=*/8.0f);
  const DecodeRun run = RunDecode(in, CgControl{CgMode::kAdaptive, 2, 1e-6f});
  int capped = 0;
  for (int32_t s = 0; s < in.t; ++s) {
    EXPECT_LE(run.iters[s], 2);
    if (run.iters[s] == 2 && run.residual[s] > 1e-6f) ++capped;
  }
  EXPECT_GT(capped, 50);
}

TEST(CgModesTest, ZeroIterationsReturnsTheStartingGuess) {
  const HeadInputs in = MakeInputs(10, 16, 9, cpu::Rounding::kBf16);
  const DecodeRun run = RunDecode(in, CgControl{CgMode::kFixed, 0, 0.0f});
  for (int32_t it : run.iters) EXPECT_EQ(it, 0);
  // Jacobi guess: the first token's H is beta k k^T, so x_j = q_j / (beta k_j^2 + lambda_j + eps).
  const int32_t K = in.k;
  std::vector<double> expect(K);
  for (int32_t j = 0; j < K; ++j) {
    expect[j] = 0.0;
  }
  for (int32_t i = 0; i < K; ++i) {
    const double xi = in.q[i] / (in.beta[0] * in.key[i] * in.key[i] + in.lambda[i] + kFlaCgEps);
    for (int32_t j = 0; j < K; ++j) expect[j] += xi * in.beta[0] * in.key[i] * in.v[j];
  }
  EXPECT_LT(RelativeRms(run.out.data(), expect.data(), K), 3e-3);
}

TEST(PrefillTest, SplitAtChunkBoundaryEqualsOnePass) {
  const HeadInputs in = MakeInputs(200, 32, 13, cpu::Rounding::kFp16);
  for (CgMode mode : {CgMode::kFixed, CgMode::kAdaptive}) {
    const CgControl cg{mode, 30, 1e-4f};
    const DecodeRun whole = RunPrefill(in, cg);
    const DecodeRun split = RunPrefill(in, cg, /*split=*/128);
    EXPECT_EQ(whole.out, split.out) << CgModeName(mode);
    EXPECT_EQ(whole.h_kk, split.h_kk) << CgModeName(mode);
    EXPECT_EQ(whole.h_kv, split.h_kv) << CgModeName(mode);
  }
}

TEST(PrefillTest, SplitMidChunkStaysClose) {
  const HeadInputs in = MakeInputs(200, 32, 17, cpu::Rounding::kFp16);
  const CgControl cg{CgMode::kAdaptive, 100, 1e-5f};
  const DecodeRun whole = RunPrefill(in, cg);
  const DecodeRun split = RunPrefill(in, cg, /*split=*/101);
  EXPECT_LT(RelativeRms(split.out.data(), whole.out.data(), whole.out.size()), 3e-3);
  EXPECT_LT(RelativeRms(split.h_kk.data(), whole.h_kk.data(), whole.h_kk.size()), 1e-5);
}

TEST(PrefillTest, FixedPrefillAndDecodeAgreeLikeFlaPaths) {
  // fla accepts a 2e-3 logits gap between its two paths; per mixer output it is similar.
  HeadInputs in = MakeInputs(150, 64, 19, cpu::Rounding::kFp16);
  const CgControl cg{CgMode::kFixed, 30, 0.0f};
  const DecodeRun prefill = RunPrefill(in, cg);
  const DecodeRun decode = RunDecode(in, cg);
  EXPECT_LT(RelativeRms(decode.out.data(), prefill.out.data(), prefill.out.size()), 1e-2);
  EXPECT_LT(RelativeRms(decode.h_kk.data(), prefill.h_kk.data(), prefill.h_kk.size()), 1e-3);
}

TEST(DecodeTest, PadRowsAreSkippedAndLeaveOutputsZero) {
  const int32_t K = 16, H = 2;
  std::vector<float> state(static_cast<size_t>(H) * K * K, 0.5f), state_kv(state);
  float* kk[2] = {nullptr, state.data()};
  float* kv[2] = {nullptr, state_kv.data()};
  HeadInputs in = MakeInputs(2 * H, K, 3, cpu::Rounding::kBf16);
  std::vector<float> out(2 * H * K, 7.0f);
  std::vector<int32_t> iters(2 * H, -1);
  CgControl cg[2] = {{CgMode::kAdaptive, 30, 1e-4f}, {CgMode::kAdaptive, 30, 1e-4f}};
  cpu::MesaDecodeParams p;
  p.batch = 2;
  p.num_heads = H;
  p.head_dim = K;
  p.h_kk = kk;
  p.h_kv = kv;
  p.q = in.q.data();
  p.k = in.key.data();
  p.v = in.v.data();
  p.log_decay = in.log_decay.data();
  p.beta = in.beta.data();
  std::vector<float> lambda(H * K, 1.0f);
  p.lambda = lambda.data();
  p.cg = cg;
  p.out = out.data();
  p.cg_iters = iters.data();
  cpu::MesaDecodeStep(p);
  for (int32_t j = 0; j < H * K; ++j) EXPECT_EQ(out[j], 0.0f);
  EXPECT_EQ(iters[0], 0);
  EXPECT_GT(iters[2], 0);
  bool changed = false;
  for (float s : state) changed = changed || s != 0.5f;
  EXPECT_TRUE(changed);
}

}  // namespace
}  // namespace mesa
