#include "kernels/cpu/matmul.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <mutex>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define MESA_MATMUL_AVX2 1
#endif

namespace mesa::cpu {
namespace {

constexpr int64_t kMaxGemvRows = 8;   // up to this many inputs share one pass over W
constexpr int64_t kPanelRows = 64;    // rows of W converted to fp32 at a time for sgemm

inline float Bf16Bits(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  __builtin_memcpy(&f, &bits, sizeof(f));
  return f;
}

#ifdef MESA_MATMUL_AVX2
inline __m256 LoadBf16x8(const uint16_t* p) {
  __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
}

inline float HorizontalSum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v);
  __m128 hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  __m128 shuf = _mm_movehdup_ps(lo);
  __m128 sums = _mm_add_ps(lo, shuf);
  shuf = _mm_movehl_ps(shuf, sums);
  sums = _mm_add_ss(sums, shuf);
  return _mm_cvtss_f32(sums);
}
#endif

// M inputs against one weight row: y[i*n] = dot(w_row, x_i). M is a template constant so the
// accumulators stay in registers.
template <int M>
void GemvRow(float* y, int64_t n, const float* x, int64_t k, const uint16_t* w_row) {
  int64_t c = 0;
  float acc_scalar[M] = {};
#ifdef MESA_MATMUL_AVX2
  __m256 acc[M][2];
  for (int i = 0; i < M; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
  for (; c + 16 <= k; c += 16) {
    const __m256 w0 = LoadBf16x8(w_row + c);
    const __m256 w1 = LoadBf16x8(w_row + c + 8);
    for (int i = 0; i < M; ++i) {
      acc[i][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + i * k + c), acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + i * k + c + 8), acc[i][1]);
    }
  }
  for (int i = 0; i < M; ++i) acc_scalar[i] = HorizontalSum(_mm256_add_ps(acc[i][0], acc[i][1]));
#endif
  for (; c < k; ++c) {
    const float wv = Bf16Bits(w_row[c]);
    for (int i = 0; i < M; ++i) acc_scalar[i] += wv * x[i * k + c];
  }
  for (int i = 0; i < M; ++i) y[i * n] = acc_scalar[i];
}

template <int M>
void GemvAll(float* y, const float* x, const uint16_t* w, int64_t n, int64_t k) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < n; ++r) GemvRow<M>(y + r, n, x, k, w + r * k);
}

void Gemv(float* y, const float* x, int64_t m, const uint16_t* w, int64_t n, int64_t k) {
  switch (m) {
    case 1: return GemvAll<1>(y, x, w, n, k);
    case 2: return GemvAll<2>(y, x, w, n, k);
    case 3: return GemvAll<3>(y, x, w, n, k);
    case 4: return GemvAll<4>(y, x, w, n, k);
    case 5: return GemvAll<5>(y, x, w, n, k);
    case 6: return GemvAll<6>(y, x, w, n, k);
    case 7: return GemvAll<7>(y, x, w, n, k);
    default: return GemvAll<8>(y, x, w, n, k);
  }
}

void PanelGemm(float* y, const float* x, int64_t m, const uint16_t* w, int64_t n, int64_t k) {
  InitBlasThreads();
  const int64_t panels = (n + kPanelRows - 1) / kPanelRows;
#pragma omp parallel
  {
    std::vector<float> panel(static_cast<size_t>(kPanelRows * k));
#pragma omp for schedule(dynamic, 1)
    for (int64_t p = 0; p < panels; ++p) {
      const int64_t r0 = p * kPanelRows;
      const int64_t rows = std::min(kPanelRows, n - r0);
      const uint16_t* src = w + r0 * k;
      for (int64_t i = 0; i < rows * k; ++i) panel[i] = Bf16Bits(src[i]);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m),
                  static_cast<int>(rows), static_cast<int>(k), 1.0f, x, static_cast<int>(k),
                  panel.data(), static_cast<int>(k), 0.0f, y + r0, static_cast<int>(n));
    }
  }
}

}  // namespace

void InitBlasThreads() {
  static std::once_flag once;
  std::call_once(once, [] { openblas_set_num_threads(1); });
}

void MatMulBf16(float* y, const float* x, int64_t m, const uint16_t* w, int64_t n, int64_t k) {
  if (m <= 0 || n <= 0) return;
  if (m <= kMaxGemvRows) {
    Gemv(y, x, m, w, n, k);
    return;
  }
  PanelGemm(y, x, m, w, n, k);
}

}  // namespace mesa::cpu
