#include "kernels/cuda/norm.h"

#include <optional>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/dependent_launch.h"
#include "kernels/cuda/device_math.cuh"

namespace mesa::gpu {
namespace {

constexpr int kRowThreads = 256;

// Each thread walks the row with stride blockDim.x and touches the same elements in every
// pass, so a pass may overwrite what the same thread read earlier (the aliasing contracts).

template <typename T>
__global__ void __launch_bounds__(kRowThreads)
RmsNormKernel(T* out, const T* x, const float* w, int64_t d, float eps, const int32_t* x_rows) {
  WaitForPriorKernels();
  StartNextKernel();
  __shared__ float scratch[32];
  const T* xr = x + (x_rows != nullptr ? x_rows[blockIdx.x] : blockIdx.x) * d;
  T* yr = out + blockIdx.x * d;
  float ss = 0.0f;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    const float v = ToFloat<T>(xr[j]);
    ss = fmaf(v, v, ss);
  }
  ss = BlockSum(ss, scratch);
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(d) + eps);
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    yr[j] = FromFloat<T>(__fmul_rn(ToFloat<T>(xr[j]), inv) * w[j]);
  }
}

template <typename T>
__global__ void __launch_bounds__(kRowThreads)
FusedAddRmsNormKernel(T* out, T* residual_out, const float* x, const T* residual, const float* w,
                      int64_t d, float eps) {
  WaitForPriorKernels();
  StartNextKernel();
  __shared__ float scratch[32];
  const int64_t base = blockIdx.x * d;
  float ss = 0.0f;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    const float s = RoundTo<T>(x[base + j]) + ToFloat<T>(residual[base + j]);
    ss = fmaf(s, s, ss);
  }
  ss = BlockSum(ss, scratch);
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(d) + eps);
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    const float s = RoundTo<T>(x[base + j]) + ToFloat<T>(residual[base + j]);
    residual_out[base + j] = FromFloat<T>(s);
    out[base + j] = FromFloat<T>(__fmul_rn(s, inv) * w[j]);
  }
}

// The same two kernels with the row in registers: thread t holds elements t, t + 256, ...
// (kPer of them, a compile-time count) and its weights, loaded together in one round of
// memory latency; the sum of squares adds them in the same order as the loops above, so the
// results are bit for bit theirs. At batch 1 (one block) the loop kernels' second pass over
// global memory and the weight loads after the block sum were most of their time: about 9 us
// each per call of a 2048-wide row on an H200 (Nsight Compute), two calls per layer.
// 1 / rms of a row held as in the kernels below (thread t: elements t, t + kRowThreads, ...),
// the sum of squares in the loop kernels' order.
template <int kPer>
__device__ __forceinline__ float InvRmsOfRegisters(const float (&v)[kPer], int d, float eps,
                                                   float* scratch) {
  float ss = 0.0f;
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    if (threadIdx.x + i * kRowThreads < d) ss = fmaf(v[i], v[i], ss);
  }
  ss = BlockSum(ss, scratch);
  return 1.0f / sqrtf(ss / static_cast<float>(d) + eps);
}

template <typename T, int kPer>
__global__ void __launch_bounds__(kRowThreads)
RmsNormRegsKernel(T* out, const T* x, const float* w, int d, float eps, const int32_t* x_rows) {
  WaitForPriorKernels();
  StartNextKernel();
  __shared__ float scratch[32];
  const T* xr =
      x + static_cast<int64_t>(x_rows != nullptr ? x_rows[blockIdx.x] : blockIdx.x) * d;
  T* yr = out + static_cast<int64_t>(blockIdx.x) * d;
  float v[kPer], wr[kPer];
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int j = threadIdx.x + i * kRowThreads;
    v[i] = j < d ? ToFloat<T>(xr[j]) : 0.0f;
    wr[i] = j < d ? w[j] : 0.0f;
  }
  const float inv = InvRmsOfRegisters<kPer>(v, d, eps, scratch);
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int j = threadIdx.x + i * kRowThreads;
    if (j < d) yr[j] = FromFloat<T>(__fmul_rn(v[i], inv) * wr[i]);
  }
}

template <typename T, int kPer>
__global__ void __launch_bounds__(kRowThreads)
FusedAddRmsNormRegsKernel(T* out, T* residual_out, const float* x, const T* residual,
                          const float* w, int d, float eps) {
  WaitForPriorKernels();
  StartNextKernel();
  __shared__ float scratch[32];
  const int64_t base = static_cast<int64_t>(blockIdx.x) * d;
  float s[kPer], wr[kPer];
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int j = threadIdx.x + i * kRowThreads;
    s[i] = j < d ? RoundTo<T>(x[base + j]) + ToFloat<T>(residual[base + j]) : 0.0f;
    wr[i] = j < d ? w[j] : 0.0f;
  }
  const float inv = InvRmsOfRegisters<kPer>(s, d, eps, scratch);
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int j = threadIdx.x + i * kRowThreads;
    if (j >= d) continue;
    residual_out[base + j] = FromFloat<T>(s[i]);
    out[base + j] = FromFloat<T>(__fmul_rn(s[i], inv) * wr[i]);
  }
}

// Returns fn(std::integral_constant<int, N>{}) (a launch's Status) with N the smallest of 1, 2,
// 4, 8, 16 and 32 with kRowThreads * N >= d (rows up to 8192 wide), or nothing (fn not called)
// for wider rows.
template <typename Fn>
std::optional<absl::Status> DispatchRowRegisters(int64_t d, Fn&& fn) {
  const int64_t per = (d + kRowThreads - 1) / kRowThreads;
  if (per <= 1) return fn(std::integral_constant<int, 1>{});
  if (per <= 2) return fn(std::integral_constant<int, 2>{});
  if (per <= 4) return fn(std::integral_constant<int, 4>{});
  if (per <= 8) return fn(std::integral_constant<int, 8>{});
  if (per <= 16) return fn(std::integral_constant<int, 16>{});
  if (per <= 32) return fn(std::integral_constant<int, 32>{});
  return std::nullopt;
}

// One warp per (row, head), kHeadWarps per block: lane l takes channels l, l + 32, ... (kPer
// of them, a compile-time bound so they stay in registers), and the sum of squares is a warp
// sum: no barriers (a block per (head, row) with a block sum cost 30 us per 2048 x 16 x 128
// call on an H200).
constexpr int kHeadWarps = 8;

template <typename T, int kPer>
__global__ void __launch_bounds__(32 * kHeadWarps)
HeadRmsNormKernel(T* out, const T* o, const T* z, const float* w, int64_t units, int64_t k,
                  float eps) {
  WaitForPriorKernels();
  StartNextKernel();
  const int64_t unit = static_cast<int64_t>(blockIdx.x) * kHeadWarps + (threadIdx.x >> 5);
  if (unit >= units) return;
  const int lane = threadIdx.x & 31;
  const int64_t base = unit * k;
  float v[kPer];
  float ss = 0.0f;
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int64_t j = lane + 32 * i;
    v[i] = j < k ? ToFloat<T>(o[base + j]) : 0.0f;
    ss = fmaf(v[i], v[i], ss);
  }
  ss = WarpSum(ss);
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(k) + eps);
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int64_t j = lane + 32 * i;
    if (j >= k) continue;
    float y = __fmul_rn(v[i], inv) * w[j];
    if (z != nullptr) y = y * Silu(ToFloat<T>(z[base + j]));
    out[base + j] = FromFloat<T>(y);
  }
}

absl::Status CheckRows(const char* op, int64_t rows, int64_t d) {
  if (rows < 0 || d < 1 || rows > 0x7fffffff) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": rows ", rows, " and width ", d,
                                                   " must be in [0, 2^31) and >= 1"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status RmsNorm(void* out, const void* x, const float* w, int64_t rows, int64_t d, float eps,
                     ScalarType act, cudaStream_t stream, const int32_t* x_rows) {
  MESA_RETURN_IF_ERROR(CheckRows("RmsNorm", rows, d));
  if (rows == 0) return absl::OkStatus();
  return DispatchActType(act, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const std::optional<absl::Status> in_registers = DispatchRowRegisters(d, [&](auto per) {
      return LaunchKernel("RmsNormRegsKernel", RmsNormRegsKernel<T, decltype(per)::value>,
                          static_cast<unsigned>(rows), kRowThreads, 0, stream, static_cast<T*>(out),
                          static_cast<const T*>(x), w, static_cast<int>(d), eps, x_rows);
    });
    if (in_registers.has_value()) return *in_registers;
    return LaunchKernel("RmsNormKernel", RmsNormKernel<T>, static_cast<unsigned>(rows), kRowThreads,
                        0, stream, static_cast<T*>(out), static_cast<const T*>(x), w, d, eps,
                        x_rows);
  });
}

absl::Status FusedAddRmsNorm(void* out, void* residual_out, const float* x, const void* residual,
                             const float* w, int64_t rows, int64_t d, float eps, ScalarType act,
                             cudaStream_t stream) {
  MESA_RETURN_IF_ERROR(CheckRows("FusedAddRmsNorm", rows, d));
  if (rows == 0) return absl::OkStatus();
  return DispatchActType(act, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const std::optional<absl::Status> in_registers = DispatchRowRegisters(d, [&](auto per) {
      return LaunchKernel("FusedAddRmsNormRegsKernel",
                          FusedAddRmsNormRegsKernel<T, decltype(per)::value>,
                          static_cast<unsigned>(rows), kRowThreads, 0, stream, static_cast<T*>(out),
                          static_cast<T*>(residual_out), x, static_cast<const T*>(residual), w,
                          static_cast<int>(d), eps);
    });
    if (in_registers.has_value()) return *in_registers;
    return LaunchKernel("FusedAddRmsNormKernel", FusedAddRmsNormKernel<T>,
                        static_cast<unsigned>(rows), kRowThreads, 0, stream, static_cast<T*>(out),
                        static_cast<T*>(residual_out), x, static_cast<const T*>(residual), w, d,
                        eps);
  });
}

absl::Status HeadRmsNorm(void* out, const void* o, const void* z, const float* w, int64_t rows,
                         int64_t heads, int64_t k, float eps, ScalarType act, cudaStream_t stream) {
  MESA_RETURN_IF_ERROR(CheckRows("HeadRmsNorm", rows, k));
  if (rows == 0) return absl::OkStatus();
  if (k > 1024 || heads < 1 || heads > 0x7fffffff || rows > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("HeadRmsNorm: head width ", k, " (<= 1024), ",
                                                   heads, " heads and ", rows,
                                                   " rows (<= 65535) are out of range"));
  }
  return DispatchActType(act, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int64_t units = rows * heads;
    const unsigned blocks = static_cast<unsigned>((units + kHeadWarps - 1) / kHeadWarps);
    return DispatchChannelsPerLane(k, [&](auto per) {
      return LaunchKernel("HeadRmsNormKernel", HeadRmsNormKernel<T, decltype(per)::value>, blocks,
                          32 * kHeadWarps, 0, stream, static_cast<T*>(out),
                          static_cast<const T*>(o), static_cast<const T*>(z), w, units, k, eps);
    });
  });
}

}  // namespace mesa::gpu
