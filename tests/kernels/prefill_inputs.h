// Inputs of the chunked-prefill parity tests (mesa_prefill_test.cc, mesa_prefill_packed_test.cc)
// and the CPU reference's parameters for them.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "base/half.h"
#include "kernels/cg_control.h"
#include "kernels/cpu/mesa_prefill.h"

namespace mesa::gpu::testing {

struct HostPrefill {
  std::vector<float> q, k, v, log_decay, beta, lambda;
};

// Realistic inputs: unit-norm q and k rows (fp16 values, as fla's l2-norm pass writes them),
// v in the model dtype, decays sigmoid(a) in [0.88, 0.998], beta in (0, 1), lambda >= 0.25.
inline HostPrefill MakeInputs(std::mt19937& rng, int T, int H, int K, ScalarType act) {
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

inline cpu::MesaPrefillParams CpuParams(const HostPrefill& in, int T, int H, int K, const CgControl& cg,
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

}  // namespace mesa::gpu::testing
