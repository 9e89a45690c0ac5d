#include "kernels/cpu/matmul.h"

#include <cblas.h>

// BLIS's threading control (blis.h cannot be included next to cblas.h).
extern "C" void bli_thread_set_num_threads(long n);
#include <omp.h>

#include <algorithm>
#include <mutex>
#include <type_traits>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define MESA_MATMUL_AVX2 1
#endif

namespace mesa::cpu {
namespace {

constexpr int64_t kMaxGemvRows = 8;   // up to this many inputs share one pass over W
constexpr int64_t kPanelRows = 64;    // rows of W converted to fp32 at a time for sgemm

// Element loaders: one scalar and (with AVX2) eight at a time, as fp32.
struct Bf16Loader {
  using T = uint16_t;
  static float One(const T* p) { return Bf16ToFloat(*p); }
#ifdef MESA_MATMUL_AVX2
  static __m256 Eight(const T* p) {
    __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
  }
#endif
};

struct Fp16Loader {
  using T = uint16_t;
  static float One(const T* p) { return Fp16ToFloat(*p); }
#ifdef MESA_MATMUL_AVX2
  static __m256 Eight(const T* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
#endif
};

struct Fp32Loader {
  using T = float;
  static float One(const T* p) { return *p; }
#ifdef MESA_MATMUL_AVX2
  static __m256 Eight(const T* p) { return _mm256_loadu_ps(p); }
#endif
};

#ifdef MESA_MATMUL_AVX2
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
template <int M, typename L>
void GemvRow(float* y, int64_t n, const float* x, int64_t k, const typename L::T* w_row) {
  int64_t c = 0;
  float acc_scalar[M] = {};
#ifdef MESA_MATMUL_AVX2
  __m256 acc[M][2];
  for (int i = 0; i < M; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
  for (; c + 16 <= k; c += 16) {
    const __m256 w0 = L::Eight(w_row + c);
    const __m256 w1 = L::Eight(w_row + c + 8);
    for (int i = 0; i < M; ++i) {
      acc[i][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + i * k + c), acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + i * k + c + 8), acc[i][1]);
    }
  }
  for (int i = 0; i < M; ++i) acc_scalar[i] = HorizontalSum(_mm256_add_ps(acc[i][0], acc[i][1]));
#endif
  for (; c < k; ++c) {
    const float wv = L::One(w_row + c);
    for (int i = 0; i < M; ++i) acc_scalar[i] += wv * x[i * k + c];
  }
  for (int i = 0; i < M; ++i) y[i * n] = acc_scalar[i];
}

template <int M, typename L>
void GemvAll(float* y, const float* x, const typename L::T* w, int64_t n, int64_t k) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < n; ++r) GemvRow<M, L>(y + r, n, x, k, w + r * k);
}

template <typename L>
void Gemv(float* y, const float* x, int64_t m, const typename L::T* w, int64_t n, int64_t k) {
  switch (m) {
    case 1: return GemvAll<1, L>(y, x, w, n, k);
    case 2: return GemvAll<2, L>(y, x, w, n, k);
    case 3: return GemvAll<3, L>(y, x, w, n, k);
    case 4: return GemvAll<4, L>(y, x, w, n, k);
    case 5: return GemvAll<5, L>(y, x, w, n, k);
    case 6: return GemvAll<6, L>(y, x, w, n, k);
    case 7: return GemvAll<7, L>(y, x, w, n, k);
    default: return GemvAll<8, L>(y, x, w, n, k);
  }
}

template <typename L>
void PanelGemm(float* y, const float* x, int64_t m, const typename L::T* w, int64_t n, int64_t k) {
  InitBlasThreads();
  const int64_t panels = (n + kPanelRows - 1) / kPanelRows;
#pragma omp parallel
  {
    std::vector<float> panel(static_cast<size_t>(kPanelRows * k));
#pragma omp for schedule(dynamic, 1)
    for (int64_t p = 0; p < panels; ++p) {
      const int64_t r0 = p * kPanelRows;
      const int64_t rows = std::min(kPanelRows, n - r0);
      const typename L::T* src = w + r0 * k;
      const float* b = nullptr;
      if constexpr (std::is_same_v<typename L::T, float>) {
        b = src;  // fp32 weights need no conversion
      } else {
        for (int64_t i = 0; i < rows * k; ++i) panel[i] = L::One(src + i);
        b = panel.data();
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m),
                  static_cast<int>(rows), static_cast<int>(k), 1.0f, x, static_cast<int>(k), b,
                  static_cast<int>(k), 0.0f, y + r0, static_cast<int>(n));
    }
  }
}

template <typename L>
void MatMulTyped(float* y, const float* x, int64_t m, const typename L::T* w, int64_t n, int64_t k) {
  if (m <= kMaxGemvRows) {
    Gemv<L>(y, x, m, w, n, k);
  } else {
    PanelGemm<L>(y, x, m, w, n, k);
  }
}

}  // namespace

void InitBlasThreads() {
  static std::once_flag once;
  std::call_once(once, [] { bli_thread_set_num_threads(1); });
}

void MatMul(float* y, const float* x, int64_t m, const void* w, ScalarType w_type, int64_t n,
            int64_t k) {
  if (m <= 0 || n <= 0) return;
  switch (w_type) {
    case ScalarType::kBf16:
      return MatMulTyped<Bf16Loader>(y, x, m, static_cast<const uint16_t*>(w), n, k);
    case ScalarType::kFp16:
      return MatMulTyped<Fp16Loader>(y, x, m, static_cast<const uint16_t*>(w), n, k);
    case ScalarType::kFp32:
      return MatMulTyped<Fp32Loader>(y, x, m, static_cast<const float*>(w), n, k);
  }
}

template <typename L>
void RowInvariantTyped(float* y, const float* x, int64_t m, const typename L::T* w, int64_t n,
                       int64_t k) {
  for (int64_t r0 = 0; r0 < m; r0 += kMaxGemvRows) {
    Gemv<L>(y + r0 * n, x + r0 * k, std::min(kMaxGemvRows, m - r0), w, n, k);
  }
}

void MatMulRowInvariant(float* y, const float* x, int64_t m, const void* w, ScalarType w_type,
                        int64_t n, int64_t k) {
  if (m <= 0 || n <= 0) return;
  switch (w_type) {
    case ScalarType::kBf16:
      return RowInvariantTyped<Bf16Loader>(y, x, m, static_cast<const uint16_t*>(w), n, k);
    case ScalarType::kFp16:
      return RowInvariantTyped<Fp16Loader>(y, x, m, static_cast<const uint16_t*>(w), n, k);
    case ScalarType::kFp32:
      return RowInvariantTyped<Fp32Loader>(y, x, m, static_cast<const float*>(w), n, k);
  }
}

}  // namespace mesa::cpu
