#include "kernels/cpu/mesa_decode.h"

#include <cmath>
#include <vector>

#include "base/half.h"

namespace mesa::cpu {
namespace {

// w = (H + diag(lambda)) p with fla's column orientation.
inline void MatVec(const float* h, const float* lambda, const float* p, int32_t k, float* w) {
  for (int32_t j = 0; j < k; ++j) w[j] = lambda[j] * p[j];
  for (int32_t i = 0; i < k; ++i) {
    const float pi = p[i];
    const float* row = h + static_cast<int64_t>(i) * k;
    for (int32_t j = 0; j < k; ++j) w[j] += row[j] * pi;
  }
}

inline float Dot(const float* a, const float* b, int32_t k) {
  float s = 0.0f;
  for (int32_t j = 0; j < k; ++j) s += a[j] * b[j];
  return s;
}

}  // namespace

int32_t SolveCgDecode(const float* h, const float* lambda, const float* q, int32_t k,
                      const CgControl& cg, float* x, float* scratch, float* residual) {
  float* r = scratch;
  float* p = scratch + k;
  float* w = scratch + 2 * k;
  const bool fixed = cg.mode == CgMode::kFixed;
  const float eps = fixed ? kFlaCgEps : 0.0f;
  for (int32_t j = 0; j < k; ++j) {
    x[j] = q[j] / (h[static_cast<int64_t>(j) * k + j] + lambda[j] + eps);
  }
  MatVec(h, lambda, x, k, w);
  for (int32_t j = 0; j < k; ++j) {
    r[j] = q[j] - w[j];
    p[j] = r[j];
  }
  float delta = Dot(r, r, k);
  const float q_norm = std::sqrt(Dot(q, q, k));
  const float stop = cg.tol * q_norm;
  int32_t steps = 0;
  for (; steps < cg.max_iters; ++steps) {
    if (!fixed && std::sqrt(delta) <= stop) break;
    MatVec(h, lambda, p, k, w);
    const float pw = Dot(p, w, k);
    if (!fixed && !(pw > 0.0f)) break;  // exact solution reached (p = 0) or lost definiteness
    const float alpha = delta / (pw + eps);
    for (int32_t j = 0; j < k; ++j) {
      x[j] += alpha * p[j];
      r[j] -= alpha * w[j];
    }
    const float delta_new = Dot(r, r, k);
    const float ratio = delta_new / (delta + eps);
    for (int32_t j = 0; j < k; ++j) p[j] = r[j] + ratio * p[j];
    delta = delta_new;
  }
  if (residual != nullptr) *residual = q_norm > 0.0f ? std::sqrt(delta) / q_norm : 0.0f;
  return steps;
}

void MesaDecodeStep(const MesaDecodeParams& p) {
  const int32_t H = p.num_heads, K = p.head_dim;
  const int64_t kk = static_cast<int64_t>(K) * K;
  const int64_t rows = static_cast<int64_t>(p.batch) * H;
#pragma omp parallel
  {
    std::vector<float> x(K), scratch(3 * static_cast<size_t>(K));
#pragma omp for schedule(dynamic, 1)
    for (int64_t bh = 0; bh < rows; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      const int64_t vec = b * H * K + h * K;
      float* out = p.out + vec;
      if (p.h_kk[b] == nullptr) {  // pad row
        for (int32_t j = 0; j < K; ++j) out[j] = 0.0f;
        if (p.cg_iters) p.cg_iters[bh] = 0;
        if (p.cg_residual) p.cg_residual[bh] = 0.0f;
        continue;
      }
      float* hkk = p.h_kk[b] + h * kk;
      float* hkv = p.h_kv[b] + h * kk;
      const float* q = p.q + vec;
      const float* k = p.k + vec;
      const float* v = p.v + vec;
      const float gamma = std::exp(p.log_decay[bh]);
      const float beta = p.beta[bh];
      for (int32_t i = 0; i < K; ++i) {
        const float bk = beta * k[i];
        float* rkk = hkk + static_cast<int64_t>(i) * K;
        float* rkv = hkv + static_cast<int64_t>(i) * K;
        for (int32_t j = 0; j < K; ++j) {
          rkk[j] = gamma * rkk[j] + bk * k[j];
          rkv[j] = gamma * rkv[j] + bk * v[j];
        }
      }
      float residual = 0.0f;
      const int32_t steps = SolveCgDecode(hkk, p.lambda + h * K, q, K, p.cg[b], x.data(),
                                          scratch.data(), &residual);
      for (int32_t j = 0; j < K; ++j) out[j] = 0.0f;
      for (int32_t i = 0; i < K; ++i) {
        const float xi = x[i];
        const float* row = hkv + static_cast<int64_t>(i) * K;
        for (int32_t j = 0; j < K; ++j) out[j] += xi * row[j];
      }
      for (int32_t j = 0; j < K; ++j) out[j] = ApplyRounding(out[j], p.out_rounding);
      if (p.cg_iters) p.cg_iters[bh] = steps;
      if (p.cg_residual) p.cg_residual[bh] = residual;
    }
  }
}

}  // namespace mesa::cpu
