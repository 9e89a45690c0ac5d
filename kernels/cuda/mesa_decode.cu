// Design (simple and correct first; see docs/cuda-backend.md):
//  * grid (H, B), one block per (row, head), blockDim = K rounded up to a warp (<= 128).
//  * Both K x K fp32 state matrices are staged in shared memory with cp.async (all loads in
//    flight at once), updated there, written back to device memory once (coalesced rows), and
//    H_kk stays in shared memory for the CG matrix-vector products, H_kv for the readout.
//    K = 128: 2 x 64 KiB + vectors, so one block per SM (opt-in shared memory above 48 KiB).
//  * Thread j owns column j: x_j, r_j, p_j, w_j live in registers, p is mirrored in shared
//    memory for the product. (Ap)_j = lambda_j p_j + sum_i H[i][j] p_i is summed in i order with
//    one FMA per term, which is exactly the CPU reference's order (kernels/cpu/mesa_decode.cc,
//    whose inner loop GCC contracts to FMAs), so the products match the CPU bit for bit given
//    the same inputs. Dot products are block tree sums, which is where GPU and CPU differ.
//
// Speed work left for later (issue 5):
//  * B = 1 latency: 16 heads give 16 blocks on 132 SMs and a serial chain of 30 x (K FMAs +
//    2 block reductions). Split a head over more threads (several partial sums per column, or
//    a thread-block cluster sharing H_kk through distributed shared memory), use warp-level
//    reductions only (one warp per head, H_kk in registers across the warp).
//  * B = 256 bandwidth: one 130 KiB block per SM leaves the memory system idle during CG.
//    H_kk is symmetric up to rounding: keeping only the upper triangle (fp32) halves its
//    footprint; staging H_kv is only needed for the readout, which could stream it instead;
//    TMA bulk copies (cp.async.bulk) and 16-byte stores for the write-back.
//  * fla-exact fixed mode forbids reordering the matvec; adaptive mode does not, so it can use
//    the symmetric half and tensor-core-friendly layouts.

#include "kernels/cuda/mesa_decode.h"

#include <cuda_pipeline.h>

#include <cstdint>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_math.cuh"

namespace mesa::gpu {
namespace {

constexpr int kMaxThreads = kMaxDecodeHeadDim;  // one thread per column, rounded up to a warp

// Shared memory layout (floats): H_kk [K*K] | H_kv [K*K] | k [K] | p [K] | x [K] | scratch [32].
// K*K*4 bytes is a multiple of 16 whenever K is even, which keeps the 16-byte copies aligned.
__host__ __device__ inline size_t SharedFloats(int k) {
  return 2 * static_cast<size_t>(k) * k + 3 * static_cast<size_t>(k) + 32;
}

// Copies n floats from global to shared memory with cp.async: 16-byte pieces when both sides
// allow it, else 4-byte pieces. All copies are in flight together; the caller waits.
__device__ __forceinline__ void StageAsync(float* dst, const float* src, int n, bool vec4) {
  if (vec4) {
    for (int f = threadIdx.x; f < n / 4; f += blockDim.x) {
      __pipeline_memcpy_async(dst + 4 * f, src + 4 * f, 16);
    }
  } else {
    for (int f = threadIdx.x; f < n; f += blockDim.x) {
      __pipeline_memcpy_async(dst + f, src + f, 4);
    }
  }
}

__device__ __forceinline__ void WriteBack(float* dst, const float* src, int n, bool vec4) {
  if (vec4) {
    float4* d4 = reinterpret_cast<float4*>(dst);
    const float4* s4 = reinterpret_cast<const float4*>(src);
    for (int f = threadIdx.x; f < n / 4; f += blockDim.x) d4[f] = s4[f];
  } else {
    for (int f = threadIdx.x; f < n; f += blockDim.x) dst[f] = src[f];
  }
}

template <typename T>
__global__ void __launch_bounds__(kMaxThreads) MesaDecodeKernel(MesaDecodeParams p) {
  extern __shared__ __align__(16) float smem[];
  const int K = p.head_dim;
  const int H = p.num_heads;
  const int h = blockIdx.x;
  const int b = blockIdx.y;
  const int j = threadIdx.x;
  const bool owner = j < K;  // threads past K only take part in barriers and sums (as zeros)
  const int64_t bh = static_cast<int64_t>(b) * H + h;
  const int64_t vec = bh * K;  // [B, H*K] offset of this (row, head)
  T* out = static_cast<T*>(p.out);

  if (p.h_kk[b] == nullptr) {  // pad row: the whole block leaves together
    if (owner) out[vec + j] = FromFloat<T>(0.0f);
    if (j == 0) {
      if (p.cg_iters != nullptr) p.cg_iters[bh] = 0;
      if (p.cg_residual != nullptr) p.cg_residual[bh] = 0.0f;
    }
    return;
  }
  const int64_t kk = static_cast<int64_t>(K) * K;
  float* g_hkk = p.h_kk[b] + h * kk;
  float* g_hkv = p.h_kv[b] + h * kk;
  float* s_hkk = smem;
  float* s_hkv = smem + kk;
  float* s_k = s_hkv + kk;
  float* s_p = s_k + K;
  float* s_x = s_p + K;
  float* s_red = s_x + K;

  // 1. Stage both states (one read of each from device memory).
  const bool vec4 = (K % 4 == 0) &&
                    ((reinterpret_cast<uintptr_t>(g_hkk) | reinterpret_cast<uintptr_t>(g_hkv)) & 15) == 0;
  StageAsync(s_hkk, g_hkk, static_cast<int>(kk), vec4);
  StageAsync(s_hkv, g_hkv, static_cast<int>(kk), vec4);
  __pipeline_commit();

  // Meanwhile: this column's inputs.
  float qj = 0.0f, kj = 0.0f, vj = 0.0f, lam = 0.0f;
  if (owner) {
    qj = ToFloat<T>(static_cast<const T*>(p.q)[vec + j]);
    kj = ToFloat<T>(static_cast<const T*>(p.k)[vec + j]);
    vj = ToFloat<T>(static_cast<const T*>(p.v)[vec + j]);
    lam = p.lambda[static_cast<int64_t>(h) * K + j];
    s_k[j] = kj;
  }
  const float gamma = expf(p.log_decay[bh]);
  const float beta = p.beta[bh];
  const CgControl cg = p.cg[b];
  __pipeline_wait_prior(0);
  __syncthreads();

  // 2. Decay + rank-1 updates, column j by thread j. The CPU computes
  //    gamma * h + (beta k_i) k_j as fma(gamma, h, (beta k_i) * k_j); so does this.
  float diag = 0.0f;
  if (owner) {
    for (int i = 0; i < K; ++i) {
      const float bk = beta * s_k[i];
      const int e = i * K + j;
      const float a = fmaf(gamma, s_hkk[e], __fmul_rn(bk, kj));
      const float c = fmaf(gamma, s_hkv[e], __fmul_rn(bk, vj));
      s_hkk[e] = a;
      s_hkv[e] = c;
      if (i == j) diag = a;
    }
  }
  __syncthreads();
  // 3. Write both states back once; the stores drain while the CG runs.
  WriteBack(g_hkk, s_hkk, static_cast<int>(kk), vec4);
  WriteBack(g_hkv, s_hkv, static_cast<int>(kk), vec4);

  // 4. CG on (H_kk + diag(lambda)) x = q, as SolveCgDecode.
  const bool fixed = cg.mode == CgMode::kFixed;
  const float eps = fixed ? kFlaCgEps : 0.0f;
  // (Ap)_j for the vector currently in s_p (callers put it there and sync).
  auto matvec = [&]() {
    float acc = 0.0f;
    if (owner) {
      acc = lam * s_p[j];
      for (int i = 0; i < K; ++i) acc = fmaf(s_hkk[i * K + j], s_p[i], acc);
    }
    return acc;
  };
  float xj = owner ? qj / (diag + lam + eps) : 0.0f;
  if (owner) s_p[j] = xj;
  __syncthreads();
  float wj = matvec();
  float rj = qj - wj;
  float pj = rj;
  float delta = BlockSum(rj * rj, s_red);
  const float q_norm = sqrtf(BlockSum(qj * qj, s_red));
  const float stop = cg.tol * q_norm;
  int steps = 0;
  for (; steps < cg.max_iters; ++steps) {
    if (!fixed && sqrtf(delta) <= stop) break;
    // The previous product's readers of s_p are past the barriers inside BlockSum.
    if (owner) s_p[j] = pj;
    __syncthreads();
    wj = matvec();
    const float pw = BlockSum(pj * wj, s_red);
    if (!fixed && !(pw > 0.0f)) break;  // exact solution reached (p = 0) or lost definiteness
    const float alpha = delta / (pw + eps);
    xj = fmaf(alpha, pj, xj);
    rj = fmaf(-alpha, wj, rj);
    const float delta_new = BlockSum(rj * rj, s_red);
    const float ratio = delta_new / (delta + eps);
    pj = fmaf(ratio, pj, rj);
    delta = delta_new;
  }

  // 5. Readout o_j = sum_i x_i H_kv[i][j], in i order like the CPU.
  if (owner) s_x[j] = xj;
  __syncthreads();
  if (owner) {
    float o = 0.0f;
    for (int i = 0; i < K; ++i) o = fmaf(s_x[i], s_hkv[i * K + j], o);
    out[vec + j] = FromFloat<T>(o);
  }
  if (j == 0) {
    if (p.cg_iters != nullptr) p.cg_iters[bh] = steps;
    if (p.cg_residual != nullptr) p.cg_residual[bh] = q_norm > 0.0f ? sqrtf(delta) / q_norm : 0.0f;
  }
}

template <typename T>
absl::Status Launch(const MesaDecodeParams& p) {
  // Raise the dynamic shared-memory limit once per instantiation, to what K = 128 needs.
  static const cudaError_t attr = cudaFuncSetAttribute(
      MesaDecodeKernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
      static_cast<int>(SharedFloats(kMaxDecodeHeadDim) * sizeof(float)));
  MESA_CUDA_RETURN_IF_ERROR(attr);
  const dim3 grid(p.num_heads, p.batch);
  const dim3 block(RoundUpToWarp(p.head_dim));
  MesaDecodeKernel<T><<<grid, block, MesaDecodeSharedBytes(p.head_dim), p.stream>>>(p);
  MESA_CUDA_RETURN_IF_LAUNCH_FAILED("MesaDecodeKernel");
  return absl::OkStatus();
}

}  // namespace

size_t MesaDecodeSharedBytes(int32_t k) { return SharedFloats(k) * sizeof(float); }

absl::Status MesaDecodeStep(const MesaDecodeParams& p) {
  if (p.head_dim < 1 || p.head_dim > kMaxDecodeHeadDim) {
    return absl::InvalidArgumentError(absl::StrCat("MesaDecodeStep: head_dim ", p.head_dim,
                                                   " is outside [1, ", kMaxDecodeHeadDim, "]"));
  }
  if (p.batch < 0 || p.num_heads < 0 || p.num_heads > 65535 || p.batch > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("MesaDecodeStep: batch ", p.batch,
                                                   " and num_heads ", p.num_heads,
                                                   " must be in [0, 65535]"));
  }
  if (p.batch == 0 || p.num_heads == 0) return absl::OkStatus();
  if (p.h_kk == nullptr || p.h_kv == nullptr || p.q == nullptr || p.k == nullptr ||
      p.v == nullptr || p.log_decay == nullptr || p.beta == nullptr || p.lambda == nullptr ||
      p.cg == nullptr || p.out == nullptr) {
    return absl::InvalidArgumentError("MesaDecodeStep: a required pointer is null");
  }
  return DispatchActType(p.act, [&](auto tag) { return Launch<typename decltype(tag)::type>(p); });
}

}  // namespace mesa::gpu
