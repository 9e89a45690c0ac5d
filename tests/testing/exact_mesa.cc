#include "tests/testing/exact_mesa.h"

#include <cmath>

namespace mesa::testing {

bool CholeskySolve(std::vector<double>& a, std::vector<double>& b, int n) {
  for (int j = 0; j < n; ++j) {
    double d = a[j * n + j];
    for (int p = 0; p < j; ++p) d -= a[j * n + p] * a[j * n + p];
    if (d <= 0.0) return false;
    d = std::sqrt(d);
    a[j * n + j] = d;
    for (int i = j + 1; i < n; ++i) {
      double s = a[i * n + j];
      for (int p = 0; p < j; ++p) s -= a[i * n + p] * a[j * n + p];
      a[i * n + j] = s / d;
    }
  }
  for (int i = 0; i < n; ++i) {  // L y = b
    double s = b[i];
    for (int p = 0; p < i; ++p) s -= a[i * n + p] * b[p];
    b[i] = s / a[i * n + i];
  }
  for (int i = n - 1; i >= 0; --i) {  // L^T x = y
    double s = b[i];
    for (int p = i + 1; p < n; ++p) s -= a[p * n + i] * b[p];
    b[i] = s / a[i * n + i];
  }
  return true;
}

ExactHeadResult ExactMesaHead(int32_t t, int32_t k, const float* q, const float* kk,
                              const float* v, const float* log_decay, const float* beta,
                              const float* lambda, const float* h_kk0, const float* h_kv0) {
  std::vector<double> hkk(static_cast<size_t>(k) * k, 0.0), hkv(hkk.size(), 0.0);
  if (h_kk0) for (size_t i = 0; i < hkk.size(); ++i) hkk[i] = h_kk0[i];
  if (h_kv0) for (size_t i = 0; i < hkv.size(); ++i) hkv[i] = h_kv0[i];
  ExactHeadResult r;
  r.x.resize(static_cast<size_t>(t) * k);
  r.o.resize(static_cast<size_t>(t) * k);
  for (int32_t s = 0; s < t; ++s) {
    const double gamma = std::exp(static_cast<double>(log_decay[s]));
    for (int i = 0; i < k; ++i) {
      for (int j = 0; j < k; ++j) {
        hkk[i * k + j] = gamma * hkk[i * k + j] + beta[s] * static_cast<double>(kk[s * k + i]) * kk[s * k + j];
        hkv[i * k + j] = gamma * hkv[i * k + j] + beta[s] * static_cast<double>(kk[s * k + i]) * v[s * k + j];
      }
    }
    std::vector<double> a(hkk);
    for (int j = 0; j < k; ++j) a[j * k + j] += lambda[j];
    std::vector<double> x(q + s * k, q + (s + 1) * k);
    CholeskySolve(a, x, k);
    for (int j = 0; j < k; ++j) {
      r.x[s * k + j] = x[j];
      double o = 0.0;
      for (int i = 0; i < k; ++i) o += x[i] * hkv[i * k + j];
      r.o[s * k + j] = o;
    }
  }
  return r;
}

double RelativeRms(const float* a, const double* b, int64_t n) {
  double num = 0.0, den = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return std::sqrt(num) / (std::sqrt(den) + 1e-30);
}

double RelativeRms(const float* a, const float* b, int64_t n) {
  double num = 0.0, den = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    den += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(num) / (std::sqrt(den) + 1e-30);
}

}  // namespace mesa::testing
