// Design (docs/cuda-backend.md has the measurements behind it):
//  * grid (H, B), one block of 8 warps per (row, head).
//  * H_kk lives in registers for the whole step: warp w holds rows [w R, (w+1) R) and lane l
//    columns l, l+32, ... (R = KMAX/8 rows x C = KMAX/32 columns per thread: 64 floats for
//    K = 128). It is read from device memory once (coalesced rows), updated in registers,
//    written back once, and every CG matrix-vector product runs from registers: no shared
//    memory traffic for the matrix, which would otherwise bound the 30 products (a K = 128
//    product reads 64 KiB; 30 of them per head is more than the SM's shared-memory bandwidth
//    can feed while the state traffic runs).
//  * H_kv is staged in shared memory with cp.async (all loads in flight while H_kk arrives),
//    updated there, written back once, and kept for the readout o = H_kv^T x.
//  * A product (Ap)_i = lambda_i p_i + sum_j H[i][j] p_j by rows (H_kk is symmetric): each lane
//    multiplies its columns of the warp's R rows, and the R partial rows are reduced inside the
//    warp by halving shuffle rounds, so the entry lands in the warp that owns row i with no
//    exchange between warps. The CG vectors x, r, p, w live by rows too (R rows per warp,
//    32 / R lanes per row); dot products are a warp reduction plus one barrier each: three
//    barriers per CG step (p published, two dot products). Sums differ from the CPU's single
//    j-order sum only by rounding order (the tests' tolerances allow for it).
//  * About 70 KiB of shared memory and at most 128 registers per thread at K = 128: two blocks
//    per SM, so one block's state traffic overlaps the other's CG.
//  * fla's fixed mode keeps fla's iteration (Jacobi start, 1e-5 damping terms); adaptive mode
//    stops per (row, head) at |r| <= tol |q| or the cap.

#include "kernels/cuda/mesa_decode.h"

#include <cuda_pipeline.h>

#include <cstdint>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/dependent_launch.h"
#include "kernels/cuda/device_math.cuh"

namespace mesa::gpu {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = 32 * kWarps;

// Shared memory layout (floats): H_kv [K*K, rounded up to 4] | p, x, k, v, diag [KMAX each] |
// matvec partial sums [kWarps * KMAX] | two reduction buffers [2 x 32].
__host__ __device__ inline size_t KkFloats(int k) { return (static_cast<size_t>(k) * k + 3) / 4 * 4; }
__host__ __device__ inline size_t SharedFloats(int k, int kmax) {
  return KkFloats(k) + 5 * static_cast<size_t>(kmax) + kWarps * static_cast<size_t>(kmax) + 64;
}
inline int KmaxFor(int k) { return k <= 32 ? 32 : k <= 64 ? 64 : 128; }

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

// One round of the row products' reduction across a warp: of the 2 kHalf partial rows each
// lane holds, lanes with bit kHalf * kCopies set keep the upper kHalf and the others the lower,
// each adding its partner's partial sums of the rows it keeps; then the next round, until one
// row is left per lane. (A template, so that every loop is unrolled and `part` stays in
// registers; a loop over the rounds left it in local memory.)
template <int kHalf, int kCopies, int N>
__device__ __forceinline__ void HalveRows(float (&part)[N], int lane) {
  constexpr int kOffset = kHalf * kCopies;
  const bool upper = (lane & kOffset) != 0;
#pragma unroll
  for (int e = 0; e < kHalf; ++e) {
    const float send = upper ? part[e] : part[e + kHalf];
    const float keep = upper ? part[e + kHalf] : part[e];
    part[e] = keep + __shfl_xor_sync(0xffffffffu, send, kOffset);
  }
  if constexpr (kHalf > 1) HalveRows<kHalf / 2, kCopies>(part, lane);
}

template <typename T, int KMAX>
__global__ void __launch_bounds__(kThreads, 2) MesaDecodeKernel(MesaDecodeParams p) {
  constexpr int C = KMAX / 32;      // columns per lane
  constexpr int R = KMAX / kWarps;  // rows per warp
  extern __shared__ __align__(16) float smem[];
  const int K = p.head_dim;
  const int H = p.num_heads;
  const int h = blockIdx.x;
  const int b = blockIdx.y;
  const int t = threadIdx.x;
  const int lane = t & 31;
  const int warp = t >> 5;
  const bool owner = t < K;  // owns entry t of the CG vectors
  const int64_t bh = static_cast<int64_t>(b) * H + h;
  const int64_t vec = bh * K;  // [B, H*K] offset of this (row, head)
  T* out = static_cast<T*>(p.out);

  // The slot tables come with the step's arguments, copied before its first kernel: they may be
  // read before waiting for the mixer-input kernel (dependent_launch.h), and so may the states:
  // no kernel of the step before this one touches them.
  if (p.h_kk[b] == nullptr) {  // pad row: the whole block leaves together
    WaitForPriorKernels();
    StartNextKernel();
    if (owner) out[vec + t] = FromFloat<T>(0.0f);
    if (t == 0) {
      if (p.cg_iters != nullptr) p.cg_iters[bh] = 0;
      if (p.cg_residual != nullptr) p.cg_residual[bh] = 0.0f;
    }
    return;
  }
  const int64_t kk = static_cast<int64_t>(K) * K;
  float* g_hkk = p.h_kk[b] + h * kk;
  float* g_hkv = p.h_kv[b] + h * kk;
  float* s_hkv = smem;
  float* s_p = smem + KkFloats(K);
  float* s_x = s_p + KMAX;
  float* s_k = s_x + KMAX;
  float* s_v = s_k + KMAX;
  float* s_diag = s_v + KMAX;
  float* s_part = s_diag + KMAX;
  float* s_red0 = s_part + kWarps * KMAX;  // two reduction buffers, used alternately
  float* s_red1 = s_red0 + 32;

  // 1. Stage H_kv (cp.async) and load this thread's H_kk tile into registers, all in flight.
  const bool vec4 = (K % 4 == 0) && (reinterpret_cast<uintptr_t>(g_hkv) & 15) == 0;
  StageAsync(s_hkv, g_hkv, static_cast<int>(kk), vec4);
  __pipeline_commit();
  float hkk[R][C];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int i = warp * R + r;
#pragma unroll
    for (int c = 0; c < C; ++c) {
      const int j = lane + 32 * c;
      hkk[r][c] = (i < K && j < K) ? g_hkk[i * K + j] : 0.0f;
    }
  }
  // q, k, v and the gates come from the kernel before this one.
  WaitForPriorKernels();
  StartNextKernel();
  const T* q = static_cast<const T*>(p.q);
  const T* kvec = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  // The CG vectors are kept by rows: lane l of warp w holds entry i = w R + l / kCopies (the
  // row its product lands in), as do the other kCopies - 1 lanes of that row.
  constexpr int kCopies = 32 / R;
  constexpr int kRowBits = R == 16 ? 4 : R == 8 ? 3 : 2;  // log2 R (KMAX 128, 64, 32)
  static_assert(R << (5 - kRowBits) == 32, "R must be 4, 8 or 16");
  const int i_row = warp * R + lane / kCopies;
  const bool row_live = i_row < K;
  float qi = 0.0f, lami = 0.0f;
  if (row_live) {
    qi = ToFloat<T>(q[vec + i_row]);
    lami = p.lambda[static_cast<int64_t>(h) * K + i_row];
  }
  if (owner) {
    s_k[t] = ToFloat<T>(kvec[vec + t]);
    s_v[t] = ToFloat<T>(v[vec + t]);
  }
  if (t < KMAX) {
    s_p[t] = 0.0f;  // entries K..KMAX-1 stay zero: the padded tile rows multiply them
    s_x[t] = 0.0f;
  }
  const float gamma = expf(p.log_decay[bh]);
  const float beta = p.beta[bh];
  const CgControl cg = p.cg[b];
  __pipeline_wait_prior(0);
  __syncthreads();

  // 2. Decay + rank-1 updates, written back once. The CPU computes gamma * h + (beta k_i) k_j
  //    as fma(gamma, h, (beta k_i) * k_j); so does this, so the states match it bit for bit.
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int i = warp * R + r;
    if (i < K) {
      const float bk = beta * s_k[i];
#pragma unroll
      for (int c = 0; c < C; ++c) {
        const int j = lane + 32 * c;
        if (j < K) {
          const int e = i * K + j;
          const float a = fmaf(gamma, hkk[r][c], __fmul_rn(bk, s_k[j]));
          const float u = fmaf(gamma, s_hkv[e], __fmul_rn(bk, s_v[j]));
          hkk[r][c] = a;
          s_hkv[e] = u;
          g_hkk[e] = a;
          g_hkv[e] = u;
          if (i == j) s_diag[j] = a;
        }
      }
    }
  }
  __syncthreads();

  // sum_i M[i][j] vec_i for the owner's j (thread j < K), M's tile given by `tile(r, c)`; vec
  // in shared memory (synced by the caller). Ends with every thread past a barrier. The
  // readout's product (H_kv is not symmetric, so it cannot take row_product below).
  auto product = [&](const float* s_vec, auto tile) {
    float acc[C];
#pragma unroll
    for (int c = 0; c < C; ++c) acc[c] = 0.0f;
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const float vi = s_vec[warp * R + r];
#pragma unroll
      for (int c = 0; c < C; ++c) acc[c] = fmaf(tile(r, c), vi, acc[c]);
    }
#pragma unroll
    for (int c = 0; c < C; ++c) s_part[warp * KMAX + lane + 32 * c] = acc[c];
    __syncthreads();
    float sum = 0.0f;
    if (owner) {
#pragma unroll
      for (int w = 0; w < kWarps; ++w) sum += s_part[w * KMAX + t];
    }
    return sum;
  };
  // (H_kk v)_i for this lane's row i, from v in shared memory (synced by the caller). H_kk is
  // symmetric, so row i of the warp's tile times v is the product's entry i: each lane
  // multiplies its C columns of the warp's R rows, then the R partial rows are reduced across
  // the warp by halving exchanges (R values per lane, then R/2, ...: log2 R shuffle rounds),
  // ending with row i in lanes i * kCopies ... (i + 1) * kCopies - 1. No barrier and no shared
  // memory exchange between the warps, unlike a column split (the readout's).
  auto row_product = [&](const float* s_vec) {
    float part[R];
#pragma unroll
    for (int r = 0; r < R; ++r) part[r] = 0.0f;
#pragma unroll
    for (int c = 0; c < C; ++c) {
      const float vc = s_vec[lane + 32 * c];
#pragma unroll
      for (int r = 0; r < R; ++r) part[r] = fmaf(hkk[r][c], vc, part[r]);
    }
    HalveRows<R / 2, kCopies>(part, lane);
    float sum = part[0];
#pragma unroll
    for (int round = kRowBits; round < 5; ++round) sum += __shfl_xor_sync(0xffffffffu, sum, 16 >> round);
    return sum;
  };
  // Sum over the K entries of a row-held vector, the same bits in every thread: the warp's R
  // rows (xor rounds over the row bits of the lane: each lane adds the same pairs), then the
  // warp sums in warp order through `scratch` after one barrier. Callers alternate two
  // scratch buffers (a barrier always separates a buffer's reads from its next write).
  auto sum_rows = [&](float v, float* scratch) {
#pragma unroll
    for (int round = 0; round < kRowBits; ++round) v += __shfl_xor_sync(0xffffffffu, v, 16 >> round);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float total = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) total += scratch[w];
    return total;
  };
  const bool publisher = lane % kCopies == 0;  // writes its row's entry to shared memory

  // 3. CG on (H_kk + diag(lambda)) x = q, as SolveCgDecode.
  const bool fixed = cg.mode == CgMode::kFixed;
  const float eps = fixed ? kFlaCgEps : 0.0f;
  float xi = row_live ? qi / (s_diag[i_row] + lami + eps) : 0.0f;
  if (publisher) s_p[i_row] = xi;
  __syncthreads();
  float wi = fmaf(lami, xi, row_product(s_p));
  float ri = qi - wi;
  float pi = ri;
  // Three barriers per step: p published, and one per dot product.
  float delta = sum_rows(ri * ri, s_red1);
  const float q_norm = sqrtf(sum_rows(qi * qi, s_red0));
  const float stop = cg.tol * q_norm;
  int steps = 0;
  for (; steps < cg.max_iters; ++steps) {
    if (!fixed && sqrtf(delta) <= stop) break;
    // The previous product's readers of s_p are past the dot products' barriers.
    if (publisher) s_p[i_row] = pi;
    __syncthreads();
    wi = fmaf(lami, pi, row_product(s_p));
    const float pw = sum_rows(pi * wi, s_red0);
    if (!fixed && !(pw > 0.0f)) break;  // exact solution reached (p = 0) or lost definiteness
    const float alpha = delta / (pw + eps);
    xi = fmaf(alpha, pi, xi);
    ri = fmaf(-alpha, wi, ri);
    const float delta_new = sum_rows(ri * ri, s_red1);
    const float ratio = delta_new / (delta + eps);
    pi = fmaf(ratio, pi, ri);
    delta = delta_new;
  }

  // 4. Readout o_j = sum_i x_i H_kv[i][j] (H_kv is not symmetric: split over the warps by
  //    rows, partial sums exchanged through shared memory).
  if (publisher) s_x[i_row] = xi;
  __syncthreads();
  const float o = product(s_x, [&](int r, int c) {
    const int i = warp * R + r, j = lane + 32 * c;
    return (i < K && j < K) ? s_hkv[i * K + j] : 0.0f;
  });
  if (owner) out[vec + t] = FromFloat<T>(o);
  if (t == 0) {
    if (p.cg_iters != nullptr) p.cg_iters[bh] = steps;
    if (p.cg_residual != nullptr) p.cg_residual[bh] = q_norm > 0.0f ? sqrtf(delta) / q_norm : 0.0f;
  }
}

template <typename T, int KMAX>
absl::Status LaunchK(const MesaDecodeParams& p) {
  // Raise the dynamic shared-memory limit once per instantiation, to what KMAX needs.
  static const cudaError_t attr = cudaFuncSetAttribute(
      MesaDecodeKernel<T, KMAX>, cudaFuncAttributeMaxDynamicSharedMemorySize,
      static_cast<int>(SharedFloats(KMAX, KMAX) * sizeof(float)));
  MESA_CUDA_RETURN_IF_ERROR(attr);
  const dim3 grid(p.num_heads, p.batch);
  return LaunchKernel("MesaDecodeKernel", MesaDecodeKernel<T, KMAX>, grid, kThreads,
                      MesaDecodeSharedBytes(p.head_dim), p.stream, p);
}

template <typename T>
absl::Status Launch(const MesaDecodeParams& p) {
  switch (KmaxFor(p.head_dim)) {
    case 32: return LaunchK<T, 32>(p);
    case 64: return LaunchK<T, 64>(p);
    default: return LaunchK<T, 128>(p);
  }
}

}  // namespace

size_t MesaDecodeSharedBytes(int32_t k) { return SharedFloats(k, KmaxFor(k)) * sizeof(float); }

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
