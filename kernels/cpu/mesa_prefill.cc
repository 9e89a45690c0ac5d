#include "kernels/cpu/mesa_prefill.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "base/half.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/mixer_inputs.h"

namespace mesa::cpu {
namespace {

constexpr float kLog2e = 1.4426950216f;  // the constant fla scales its cumsum by

// Work buffers and precomputed chunk quantities for one head; reused across chunks.
struct ChunkScratch {
  int32_t c = 0, k = 0;
  bool fixed = true;
  std::vector<float> kc, qc, vc;  // [C, K] this chunk's k (fp16 values), q, v (for readout)
  std::vector<float> gcum;        // [C] scaled cumulative log-decay
  std::vector<float> m;           // [C, C] exp2(G_t - G_s) * beta_s for s <= t
  std::vector<float> e;           // [C] exp2(G_t)
  std::vector<float> hbar_kk;     // [K, K] chunk-start state as the CG reads it (TF32 in fixed mode)
  std::vector<float> hbar_kv;     // [K, K] chunk-start state as the readout reads it (bf16 in fixed mode)
  std::vector<float> x, r, p, w;  // [C, K] CG block vectors
  std::vector<float> tmp;         // [C, K]
  std::vector<float> scores;      // [C, C]
  std::vector<float> delta, q_norm;
  std::vector<char> active;

  void Resize(int32_t k_dim) {
    k = k_dim;
    const size_t ck = static_cast<size_t>(kPrefillChunk) * k;
    for (auto* v : {&kc, &qc, &vc, &x, &r, &p, &w, &tmp}) v->assign(ck, 0.0f);
    hbar_kk.assign(static_cast<size_t>(k) * k, 0.0f);
    hbar_kv.assign(static_cast<size_t>(k) * k, 0.0f);
    m.assign(static_cast<size_t>(kPrefillChunk) * kPrefillChunk, 0.0f);
    scores.assign(m.size(), 0.0f);
    gcum.assign(kPrefillChunk, 0.0f);
    e.assign(kPrefillChunk, 0.0f);
    delta.assign(kPrefillChunk, 0.0f);
    q_norm.assign(kPrefillChunk, 0.0f);
    active.assign(kPrefillChunk, 0);
  }
  float H(float v) const { return fixed ? RoundFp16(v) : v; }
  float R(float v, Rounding r) const { return fixed ? ApplyRounding(v, r) : v; }
};

// out[t] = sum_{s<=t} r1(M_ts * (fp16(in_t) . kc_s)) * rhs_s + r2(e_t in_t) hbar
// (+ lambda . in_t when lambda != nullptr). This is the chunk form of (H_t [+ diag lambda]) in_t
// for the CG operator (rhs = kc, hbar = H_kk snapshot) and of H_kv,t^T in_t for the readout
// (rhs = v, hbar = H_kv snapshot). In fixed mode the rounding points are those of fla 0.6.0's
// chunk kernel: fp16 intra-chunk operands; scores r1 = fp16 (CG) or v's dtype (readout); state
// operand r2 = TF32 (CG: an fp32 x fp32 tl.dot) or bf16 (readout, the snapshot's dtype). The three products run as
// sgemm; the roundings are applied elementwise between them.
void ApplyChunkOperator(ChunkScratch& s, const float* in, const float* rhs, const float* hbar,
                        const float* lambda, Rounding score_rounding, Rounding state_rounding,
                        float* out) {
  const int32_t C = s.c, K = s.k;
  constexpr int32_t L = kPrefillChunk;  // leading dimension of the [C, C] score block
  float* tmp = s.tmp.data();
  float* scores = s.scores.data();
  for (int32_t i = 0; i < C * K; ++i) tmp[i] = s.H(in[i]);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, C, C, K, 1.0f, tmp, K, s.kc.data(), K,
              0.0f, scores, L);
  for (int32_t t = 0; t < C; ++t) {
    float* row = scores + t * L;
    const float* m = s.m.data() + t * L;
    for (int32_t u = 0; u <= t; ++u) row[u] = s.R(m[u] * row[u], score_rounding);
    for (int32_t u = t + 1; u < C; ++u) row[u] = 0.0f;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, C, K, C, 1.0f, scores, L, rhs, K, 0.0f,
              out, K);
  // Chunk-start state term: sum_i r2(e_t in_t[i]) hbar[i][j].
  for (int32_t t = 0; t < C; ++t) {
    for (int32_t i = 0; i < K; ++i) tmp[t * K + i] = s.R(s.e[t] * in[t * K + i], state_rounding);
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, C, K, K, 1.0f, tmp, K, hbar, K, 1.0f,
              out, K);
  if (lambda != nullptr) {
    for (int32_t t = 0; t < C; ++t) {
      for (int32_t j = 0; j < K; ++j) out[t * K + j] += lambda[j] * in[t * K + j];
    }
  }
}

inline float RowDot(const float* a, const float* b, int32_t k) {
  float s = 0.0f;
  for (int32_t j = 0; j < k; ++j) s += a[j] * b[j];
  return s;
}

// Block CG over the chunk's tokens (each token its own system).
void SolveChunk(ChunkScratch& s, const float* lambda, const CgControl& cg, int32_t* iters,
                float* residual, int32_t iters_stride) {
  const int32_t C = s.c, K = s.k;
  const float eps = s.fixed ? kFlaCgEps : 0.0f;
  if (s.fixed) {
    // fla's chunk kernel: X = 0, R = Q.
    std::fill(s.x.begin(), s.x.begin() + C * K, 0.0f);
    std::copy(s.qc.begin(), s.qc.begin() + C * K, s.r.begin());
  } else {
    // Jacobi guess from the diagonal of each token's H_t.
    for (int32_t t = 0; t < C; ++t) {
      for (int32_t j = 0; j < K; ++j) {
        float diag = s.e[t] * s.hbar_kk[static_cast<int64_t>(j) * K + j];
        for (int32_t u = 0; u <= t; ++u) {
          const float kj = s.kc[u * K + j];
          diag += s.m[t * kPrefillChunk + u] * kj * kj;
        }
        s.x[t * K + j] = s.qc[t * K + j] / (diag + lambda[j]);
      }
    }
    ApplyChunkOperator(s, s.x.data(), s.kc.data(), s.hbar_kk.data(), lambda, Rounding::kFp16,
                       Rounding::kTf32, s.w.data());
    for (int32_t i = 0; i < C * K; ++i) s.r[i] = s.qc[i] - s.w[i];
  }
  std::copy(s.r.begin(), s.r.begin() + C * K, s.p.begin());
  for (int32_t t = 0; t < C; ++t) {
    s.delta[t] = RowDot(&s.r[t * K], &s.r[t * K], K);
    s.q_norm[t] = std::sqrt(RowDot(&s.qc[t * K], &s.qc[t * K], K));
    s.active[t] = 1;
    iters[t * iters_stride] = 0;
  }
  for (int32_t step = 0; step < cg.max_iters; ++step) {
    bool any = false;
    if (!s.fixed) {
      for (int32_t t = 0; t < C; ++t) {
        if (s.active[t] && std::sqrt(s.delta[t]) <= cg.tol * s.q_norm[t]) s.active[t] = 0;
        any = any || s.active[t];
      }
      if (!any) break;
    }
    ApplyChunkOperator(s, s.p.data(), s.kc.data(), s.hbar_kk.data(), lambda, Rounding::kFp16,
                       Rounding::kTf32, s.w.data());
    for (int32_t t = 0; t < C; ++t) {
      if (!s.active[t]) continue;
      float* x = &s.x[t * K];
      float* r = &s.r[t * K];
      float* p = &s.p[t * K];
      const float* w = &s.w[t * K];
      const float pw = RowDot(p, w, K);
      if (!s.fixed && !(pw > 0.0f)) {
        s.active[t] = 0;
        continue;
      }
      const float alpha = s.delta[t] / (pw + eps);
      for (int32_t j = 0; j < K; ++j) {
        x[j] += alpha * p[j];
        r[j] -= alpha * w[j];
      }
      const float delta_new = RowDot(r, r, K);
      const float ratio = delta_new / (s.delta[t] + eps);
      for (int32_t j = 0; j < K; ++j) p[j] = r[j] + ratio * p[j];
      s.delta[t] = delta_new;
      ++iters[t * iters_stride];
    }
  }
  for (int32_t t = 0; t < C; ++t) {
    residual[t * iters_stride] = s.q_norm[t] > 0.0f ? std::sqrt(s.delta[t]) / s.q_norm[t] : 0.0f;
  }
}

void PrefillHead(const MesaPrefillParams& p, int32_t h, ChunkScratch& s, int32_t* iters,
                 float* residual) {
  const int32_t K = p.head_dim, H = p.num_heads;
  const int64_t kk = static_cast<int64_t>(K) * K;
  float* skk = p.h_kk + h * kk;
  float* skv = p.h_kv + h * kk;
  const float* lambda = p.lambda + h * K;
  int64_t t0 = 0;
  while (t0 < p.seq_len) {
    const int32_t c = static_cast<int32_t>(std::min<int64_t>(kPrefillChunk, p.seq_len - t0));
    s.c = c;
    for (int32_t t = 0; t < c; ++t) {
      const int64_t row = (t0 + t) * p.ld_in + h * K;
      for (int32_t j = 0; j < K; ++j) {
        s.kc[t * K + j] = p.k[row + j];
        s.qc[t * K + j] = p.q[row + j];
        s.vc[t * K + j] = p.v[row + j];
      }
    }
    float acc = 0.0f;
    for (int32_t t = 0; t < c; ++t) {
      acc += p.log_decay[(t0 + t) * H + h];
      s.gcum[t] = acc * kLog2e;
    }
    for (int32_t t = 0; t < c; ++t) s.e[t] = std::exp2(s.gcum[t]);
    for (int32_t t = 0; t < c; ++t) {
      for (int32_t u = 0; u <= t; ++u) {
        s.m[t * kPrefillChunk + u] = std::exp2(s.gcum[t] - s.gcum[u]) * p.beta[(t0 + u) * H + h];
      }
    }
    for (int64_t i = 0; i < kk; ++i) {
      s.hbar_kk[i] = s.R(skk[i], Rounding::kTf32);
      s.hbar_kv[i] = s.R(skv[i], Rounding::kBf16);
    }

    SolveChunk(s, lambda, p.cg, iters + t0 * H + h, residual + t0 * H + h, H);

    // Readout o_t = H_kv,t^T x_t, chunk form; fla rounds the intra-chunk scores to bf16 here.
    ApplyChunkOperator(s, s.x.data(), s.vc.data(), s.hbar_kv.data(), nullptr, p.value_rounding,
                       Rounding::kBf16, s.w.data());
    for (int32_t t = 0; t < c; ++t) {
      float* o = p.out + (t0 + t) * p.ld_out + h * K;
      for (int32_t j = 0; j < K; ++j) o[j] = ApplyRounding(s.w[t * K + j], p.value_rounding);
    }

    // State to the end of the chunk: S = Gamma S + sum_u u_u k_u^T (and v_u^T).
    const float g_last = s.gcum[c - 1];
    const float gamma = std::exp2(g_last);
    for (int32_t t = 0; t < c; ++t) {
      const float scale = std::exp2(g_last - s.gcum[t]) * p.beta[(t0 + t) * H + h];
      for (int32_t j = 0; j < K; ++j) s.tmp[t * K + j] = s.H(s.kc[t * K + j] * scale);
    }
    for (int64_t i = 0; i < kk; ++i) {
      skk[i] *= gamma;
      skv[i] *= gamma;
    }
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, K, K, c, 1.0f, s.tmp.data(), K,
                s.kc.data(), K, 1.0f, skk, K);
    // fla 0.6.0 converts the fp16 decayed keys to v's dtype for the H_kv update.
    for (int32_t i = 0; i < c * K; ++i) s.tmp[i] = s.R(s.tmp[i], p.value_rounding);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, K, K, c, 1.0f, s.tmp.data(), K,
                s.vc.data(), K, 1.0f, skv, K);
    t0 += c;
  }
}

}  // namespace

void MesaPrefill(const MesaPrefillParams& p) {
  if (p.seq_len <= 0) return;
  InitBlasThreads();
  const int32_t H = p.num_heads;
  std::vector<int32_t> local_iters;
  std::vector<float> local_residual;
  int32_t* iters = p.cg_iters;
  float* residual = p.cg_residual;
  if (iters == nullptr) {
    local_iters.resize(static_cast<size_t>(p.seq_len) * H);
    iters = local_iters.data();
  }
  if (residual == nullptr) {
    local_residual.resize(static_cast<size_t>(p.seq_len) * H);
    residual = local_residual.data();
  }
#pragma omp parallel
  {
    ChunkScratch s;
    s.fixed = p.cg.mode == CgMode::kFixed;
    s.Resize(p.head_dim);
#pragma omp for schedule(dynamic, 1)
    for (int32_t h = 0; h < H; ++h) PrefillHead(p, h, s, iters, residual);
  }
}

}  // namespace mesa::cpu
