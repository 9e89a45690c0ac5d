#include "kernels/cuda/gemv.h"

#include <cstdint>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/dependent_launch.h"
#include "kernels/cuda/device_math.cuh"

namespace mesa::gpu {
namespace {

constexpr int kWarps = 8;  // per block

// Eight values of a 16-byte piece as floats.
template <typename T>
__device__ __forceinline__ void Unpack8(const uint4& v, float* f);

template <>
__device__ __forceinline__ void Unpack8<__nv_bfloat16>(const uint4& v, float* f) {
  const uint32_t u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = __uint_as_float(u[i] << 16);
    f[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
  }
}

template <>
__device__ __forceinline__ void Unpack8<__half>(const uint4& v, float* f) {
  const uint32_t u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    __half2 h;
    memcpy(&h, &u[i], sizeof(h));
    const float2 p = __half22float2(h);
    f[2 * i] = p.x;
    f[2 * i + 1] = p.y;
  }
}

// Weights are read once per step: stream them past L1.
__device__ __forceinline__ uint4 LoadStreaming(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// Pieces of its weight row each lane loads before waiting for the kernel that writes x: under
// a dependent launch (dependent_launch.h) they arrive while that kernel still runs.
constexpr int kEarlyPieces = 4;

// Warps that keep the card's memory busy (about 48 of 64 per SM on a 132-SM H100/H200):
// columns are split into kSplit parts along k until the product has about this many warps.
constexpr int64_t kTargetWarps = 6144;

// kSplit warps per output column, each summing a contiguous 1/kSplit of the row's 16-byte
// pieces (lane l: pieces begin + l, begin + l + 32, ...); the parts' warp sums are added in
// part order. Columns per block: kWarps / kSplit. With `residual` set, y is not written:
// residual[col] takes AddResidual's update instead.
template <typename T, int kSplit>
__global__ void __launch_bounds__(32 * kWarps, 8)  // 32 registers: 64 warps per SM
GemvKernel(float* __restrict__ y, T* residual, const T* __restrict__ x, const T* __restrict__ w,
           int n, int k) {
  constexpr int kCols = kWarps / kSplit;
  const int warp = threadIdx.x >> 5;
  const int col = blockIdx.x * kCols + warp / kSplit;
  const int part = warp % kSplit;
  const bool live = col < n;
  const int lane = threadIdx.x & 31;
  const int pieces = k / 8;
  const int begin = pieces * part / kSplit, end = pieces * (part + 1) / kSplit;
  const uint4* wr = reinterpret_cast<const uint4*>(w + static_cast<int64_t>(live ? col : 0) * k);
  uint4 early[kEarlyPieces];
  if (live) {
#pragma unroll
    for (int e = 0; e < kEarlyPieces; ++e) {
      const int c = begin + lane + 32 * e;
      if (c < end) early[e] = LoadStreaming(wr + c);
    }
  }
  WaitForPriorKernels();
  StartNextKernel();
  // Pieces in increasing order (the early ones first): one summation order.
  float acc = 0.0f;
  auto add = [&](const uint4& piece, int c) {
    float wf[8], xf[8];
    Unpack8<T>(piece, wf);
    Unpack8<T>(*reinterpret_cast<const uint4*>(x + 8 * c), xf);
#pragma unroll
    for (int e = 0; e < 8; ++e) acc = fmaf(xf[e], wf[e], acc);
  };
  if (live) {
#pragma unroll
    for (int e = 0; e < kEarlyPieces; ++e) {
      const int c = begin + lane + 32 * e;
      if (c < end) add(early[e], c);
    }
#pragma unroll 4
    for (int c = begin + lane + 32 * kEarlyPieces; c < end; c += 32) add(LoadStreaming(wr + c), c);
  }
  acc = WarpSum(acc);
  if constexpr (kSplit > 1) {
    __shared__ float parts[kWarps];
    if (lane == 0) parts[warp] = acc;
    __syncthreads();
    if (part != 0) return;
    acc = parts[warp];
#pragma unroll
    for (int q = 1; q < kSplit; ++q) acc += parts[warp + q];
  }
  if (lane != 0 || !live) return;
  if (residual != nullptr) {
    residual[col] = FromFloat<T>(ToFloat<T>(residual[col]) + RoundTo<T>(acc));  // AddResidualKernel's
  } else {
    y[col] = acc;
  }
}

// Parts per column: doubled while the product has fewer than kTargetWarps warps and every
// lane of every part still gets two pieces at least.
int SplitFor(int64_t n, int64_t k) {
  const int64_t pieces = k / 8;
  int split = 1;
  while (split < kWarps && n * split < kTargetWarps && pieces >= 64 * split) split *= 2;
  return split;
}

template <typename T, int kSplit>
absl::Status LaunchSplit(float* y, void* residual, const void* x, const void* w, int64_t n,
                         int64_t k, cudaStream_t stream) {
  constexpr int kCols = kWarps / kSplit;
  const unsigned blocks = static_cast<unsigned>((n + kCols - 1) / kCols);
  return LaunchKernel("GemvKernel", GemvKernel<T, kSplit>, blocks, 32 * kWarps, 0, stream, y,
                      static_cast<T*>(residual), static_cast<const T*>(x),
                      static_cast<const T*>(w), static_cast<int>(n), static_cast<int>(k));
}

bool Aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Gemv and GemvAddResidual: y written, or (y null) `residual` updated.
absl::Status LaunchGemv(const char* op, float* y, void* residual, const void* x, const void* w,
                        int64_t n, int64_t k, ScalarType in_type, cudaStream_t stream) {
  if (!GemvApplies(1, k, x, w, in_type) || (y == nullptr) == (residual == nullptr) || n < 0 ||
      n > 0x7fffffff) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": n=", n, " k=", k, " ",
                                                   ScalarTypeName(in_type),
                                                   " is not a product Gemv takes"));
  }
  if (n == 0) return absl::OkStatus();
  return DispatchActType(in_type, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (std::is_same_v<T, float>) {
      return absl::InternalError(absl::StrCat(op, ": float32 inputs"));  // excluded above
    } else {
      switch (SplitFor(n, k)) {
        case 1: return LaunchSplit<T, 1>(y, residual, x, w, n, k, stream);
        case 2: return LaunchSplit<T, 2>(y, residual, x, w, n, k, stream);
        case 4: return LaunchSplit<T, 4>(y, residual, x, w, n, k, stream);
        default: return LaunchSplit<T, 8>(y, residual, x, w, n, k, stream);
      }
    }
  });
}

}  // namespace

bool GemvApplies(int64_t m, int64_t k, const void* x, const void* w, ScalarType in_type) {
  return m >= 1 && m <= kGemvMaxRows && in_type != ScalarType::kFp32 && k >= 8 && k % 8 == 0 &&
         k <= 0x7fffffff && Aligned16(x) && Aligned16(w);
}

absl::Status Gemv(float* y, const void* x, const void* w, int64_t n, int64_t k, ScalarType in_type,
                  cudaStream_t stream) {
  return LaunchGemv("Gemv", y, nullptr, x, w, n, k, in_type, stream);
}

absl::Status GemvAddResidual(void* x, const void* row, const void* w, int64_t n, int64_t k,
                             ScalarType in_type, cudaStream_t stream) {
  return LaunchGemv("GemvAddResidual", nullptr, x, row, w, n, k, in_type, stream);
}

}  // namespace mesa::gpu
