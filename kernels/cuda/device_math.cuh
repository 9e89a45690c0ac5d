// Device helpers shared by the CUDA kernels: activation storage types, rounding, the scalar
// functions of kernels/cpu/elementwise.h, and block reductions. Include from .cu files only.
//
// Activations live on the device in the model dtype T (bf16, fp16 or fp32), so storing a value
// as T *is* the rounding point fla has there (base/half.h Rounding: kBf16/kFp16/kNone). GEMM
// outputs stay fp32 until the kernel that consumes them rounds them where the CPU runner does.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "base/half.h"

namespace mesa::gpu {

template <typename T>
__device__ __forceinline__ float ToFloat(T v);
template <>
__device__ __forceinline__ float ToFloat<float>(float v) { return v; }
template <>
__device__ __forceinline__ float ToFloat<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <>
__device__ __forceinline__ float ToFloat<__half>(__half v) { return __half2float(v); }

// Round to nearest even, as base/half.h does on the CPU (fp16 overflow gives +-inf there too).
template <typename T>
__device__ __forceinline__ T FromFloat(float v);
template <>
__device__ __forceinline__ float FromFloat<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <>
__device__ __forceinline__ __half FromFloat<__half>(float v) { return __float2half_rn(v); }

// The float nearest to v that a T can hold (ApplyRounding(v, RoundingFor(T))).
template <typename T>
__device__ __forceinline__ float RoundTo(float v) { return ToFloat<T>(FromFloat<T>(v)); }

// kernels/cpu/elementwise.h, same formulas (IEEE expf/log1pf; no fast-math intrinsics).
__device__ __forceinline__ float Sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
__device__ __forceinline__ float Silu(float x) { return x / (1.0f + expf(-x)); }
__device__ __forceinline__ float LogSigmoid(float x) { return fminf(x, 0.0f) - log1pf(expf(-fabsf(x))); }

__device__ __forceinline__ float WarpSum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Sum of `v` over the block, returned to every thread. Every thread of the block must call it
// (it has barriers) and blockDim.x must be a multiple of 32. `scratch` is 32 floats of shared
// memory; back-to-back calls may share it (the leading barrier protects the previous result).
// Every thread adds the warp partials in the same order, so all threads get the same bits:
// adaptive CG relies on that to take the same branch in every thread.
__device__ __forceinline__ float BlockSum(float v, float* scratch) {
  v = WarpSum(v);
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = 0.0f;
  for (int w = 0; w < warps; ++w) total += scratch[w];
  return total;
}

inline int RoundUpToWarp(int n) { return (n + 31) / 32 * 32; }

// For kernels that spread a row of `width` <= 1024 channels over one warp: returns
// fn(std::integral_constant<int, N>{}) with N the channels per lane, the smallest of 1, 2, 4, 8
// and 32 with 32 N >= width, so that per-lane arrays have a compile-time size and stay in
// registers.
template <typename Fn>
auto DispatchChannelsPerLane(int64_t width, Fn&& fn) {
  const int64_t per = (width + 31) / 32;
  if (per <= 1) return fn(std::integral_constant<int, 1>{});
  if (per <= 2) return fn(std::integral_constant<int, 2>{});
  if (per <= 4) return fn(std::integral_constant<int, 4>{});
  if (per <= 8) return fn(std::integral_constant<int, 8>{});
  return fn(std::integral_constant<int, 32>{});
}

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls fn(TypeTag<T>{}) with T the device storage type of `type`. (A tag rather than a C++20
// template lambda: the .cu files are C++17, see kernels/CMakeLists.txt.)
//   DispatchActType(act, [&](auto tag) { using T = typename decltype(tag)::type; ... });
template <typename Fn>
absl::Status DispatchActType(ScalarType type, Fn&& fn) {
  switch (type) {
    case ScalarType::kBf16: return fn(TypeTag<__nv_bfloat16>{});
    case ScalarType::kFp16: return fn(TypeTag<__half>{});
    case ScalarType::kFp32: return fn(TypeTag<float>{});
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown activation type ", static_cast<int>(type)));
}

}  // namespace mesa::gpu
