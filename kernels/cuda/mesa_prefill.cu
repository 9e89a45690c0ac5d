// See mesa_prefill.h. The structure follows kernels/cpu/mesa_prefill.cc step by step (same
// names), so the two can be read side by side. Every chunk product runs on tensor cores
// (mma.sync m16n8k8, tf32 operands, fp32 accumulation) from shared memory:
//
// * Fixed (fla) mode: every operand the CPU rounds before a product is rounded the same way
//   here first (fp16, bf16 or tf32 values), and all of those are exact tf32 numbers, so each
//   product is exact and only the fp32 summation order differs from the CPU.
// * Adaptive mode and fp32 models, where the CPU multiplies unrounded fp32 values: each operand
//   is split into a tf32 head and a tf32 tail and three products are summed (hi*hi + hi*lo +
//   lo*hi, "3xTF32"), about 22 significant bits, close to fp32; two (hi*b + lo*b) where b is
//   already exact (the fp16 keys, the values of a bf16 or fp16 model).
//
// Pass 1 (states): every chunk's state increment in parallel (tensor cores), then a scan over
// the chunks per state element that leaves each chunk's start state in the workspace.
// Pass 2 (chunk pass): one block per (chunk, head), all in parallel: the chunk's block CG with
// x, r, p and Ap in registers (each warp owns two 16-token tiles x a quarter of the columns, in
// the mma accumulator layout), the operator's inputs in shared memory, then the readout.
#include "kernels/cuda/mesa_prefill.h"

#include <cstdint>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_math.cuh"

namespace mesa::gpu {
namespace {

constexpr int C = kPrefillChunk;
constexpr float kLog2e = 1.4426950216f;  // the constant fla scales its cumsum by

__device__ __forceinline__ float RoundTf32(float f) {
  uint32_t bits = __float_as_uint(f);
  if ((bits & 0x7f800000u) != 0x7f800000u) bits &= 0xffffe000u;
  return __uint_as_float(bits);
}

// base/half.h's ApplyRounding on the device: RoundAs where the rounding is known at compile
// time (the hot loops), Round where it is a run-time value.
template <Rounding R>
__device__ __forceinline__ float RoundAs(float v) {
  if constexpr (R == Rounding::kBf16) return RoundTo<__nv_bfloat16>(v);
  if constexpr (R == Rounding::kFp16) return RoundTo<__half>(v);
  if constexpr (R == Rounding::kTf32) return RoundTf32(v);
  return v;
}

__device__ __forceinline__ float Round(float v, Rounding r) {
  switch (r) {
    case Rounding::kNone: return RoundAs<Rounding::kNone>(v);
    case Rounding::kBf16: return RoundAs<Rounding::kBf16>(v);
    case Rounding::kFp16: return RoundAs<Rounding::kFp16>(v);
    case Rounding::kTf32: return RoundAs<Rounding::kTf32>(v);
  }
  return v;
}

// ---------------------------------------------------------------------------------------------
// Tensor-core tiles. m16n8k8 tf32, A row-major 16x8, B column-major 8x8, C/D 16x8 fp32. With
// g = lane / 4 and q = lane % 4: A holds (g, q), (g+8, q), (g, q+4), (g+8, q+4); B holds
// (k=q, n=g), (k=q+4, n=g); C holds (g, 2q), (g, 2q+1), (g+8, 2q), (g+8, 2q+1).

__device__ __forceinline__ uint32_t ToTf32(float f) {
  uint32_t u;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(u) : "f"(f));
  return u;
}

__device__ __forceinline__ void MmaTf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// d += a * b. kSplit: the 3xTF32 product of unrounded fp32 operands, or 2 products when
// kExactB says b already holds exact tf32 values (fp16 keys; bf16 or fp16 values); otherwise
// both operands are exact tf32 values (see the file comment) and one product is exact.
template <bool kSplit, bool kExactB = false>
__device__ __forceinline__ void Mma(float (&d)[4], const float (&a)[4], const float (&b)[2]) {
  if constexpr (kSplit && kExactB) {
    uint32_t ah[4], al[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      ah[i] = ToTf32(a[i]);
      al[i] = ToTf32(a[i] - __uint_as_float(ah[i]));
    }
    const uint32_t bi[2] = {__float_as_uint(b[0]), __float_as_uint(b[1])};
    MmaTf32(d, al, bi);
    MmaTf32(d, ah, bi);
  } else if constexpr (kSplit) {
    uint32_t ah[4], al[4], bh[2], bl[2];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      ah[i] = ToTf32(a[i]);
      al[i] = ToTf32(a[i] - __uint_as_float(ah[i]));
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      bh[i] = ToTf32(b[i]);
      bl[i] = ToTf32(b[i] - __uint_as_float(bh[i]));
    }
    MmaTf32(d, al, bh);
    MmaTf32(d, ah, bl);
    MmaTf32(d, ah, bh);
  } else {
    const uint32_t ai[4] = {__float_as_uint(a[0]), __float_as_uint(a[1]), __float_as_uint(a[2]),
                            __float_as_uint(a[3])};
    const uint32_t bi[2] = {__float_as_uint(b[0]), __float_as_uint(b[1])};
    MmaTf32(d, ai, bi);
  }
}

// gcum[t] = log2(e) * sum_{s<=t} g_s over the chunk's first c tokens (fla's scaled local
// cumulative decay, summed in token order by one thread as the CPU does, from shared memory:
// the loads run in parallel first, a serial chain of 64 dependent global loads would cost
// about 30 us). Every thread takes part; ends with a barrier.
__device__ void ChunkCumDecay(const MesaPrefillParams& p, int64_t tc, int c, int h, float* gcum) {
  if (threadIdx.x < c) gcum[threadIdx.x] = p.log_decay[(tc + threadIdx.x) * p.num_heads + h];
  __syncthreads();
  if (threadIdx.x == 0) {
    float acc = 0.0f;
    for (int t = 0; t < c; ++t) {
      acc += gcum[t];
      gcum[t] = acc * kLog2e;
    }
  }
  __syncthreads();
}

// Copies the tile src[r][c] (r < valid_rows, c < cols, row stride src_ld; zero elsewhere) of
// `rows` x KP to store(r, c, float4 of columns c..c+3), 16-byte loads where the rows allow it,
// four 16-byte units in flight per thread.
template <int KP, typename Store>
__device__ __forceinline__ void CopyTile(const float* src, int64_t src_ld, int rows, int valid_rows,
                                         int cols, Store store) {
  const bool vec = cols % 4 == 0 && src_ld % 4 == 0 && reinterpret_cast<uintptr_t>(src) % 16 == 0;
  constexpr int kUnits = KP / 4;
  constexpr int kUnroll = 4;
  const int n = rows * kUnits;
  for (int base = threadIdx.x; base < n; base += kUnroll * blockDim.x) {
    float4 v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int i = base + u * blockDim.x;
      const int r = i / kUnits, c = 4 * (i % kUnits);
      v[u] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (i < n && r < valid_rows && c < cols) {
        const float* at = src + r * src_ld + c;
        if (vec) {
          v[u] = *reinterpret_cast<const float4*>(at);
        } else {
          v[u].x = at[0];
          v[u].y = c + 1 < cols ? at[1] : 0.0f;
          v[u].z = c + 2 < cols ? at[2] : 0.0f;
          v[u].w = c + 3 < cols ? at[3] : 0.0f;
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int i = base + u * blockDim.x;
      if (i < n) store(i / kUnits, 4 * (i % kUnits), v[u]);
    }
  }
}

// Chunk-start states in the workspace: [chunk][head] (H_kk, H_kv), fp32, each transposed.
__host__ __device__ inline int64_t SnapshotFloats(int k) { return 2 * static_cast<int64_t>(k) * k; }

// Global chunk n of a packed call: its sequence s, its first row tc and its c <= C tokens.
struct ChunkAt {
  int s;
  int64_t tc;
  int c;
};

__device__ __forceinline__ ChunkAt LocateChunk(const MesaPrefillParams& p, int n) {
  ChunkAt at;
  at.s = p.seqs.SeqOfChunk(n);
  at.tc = p.seqs.start[at.s] + static_cast<int64_t>(n - p.seqs.chunk_start[at.s]) * C;
  const int64_t left = p.seqs.start[at.s + 1] - at.tc;
  at.c = static_cast<int>(left < C ? left : C);
  return at;
}

// ---------------------------------------------------------------------------------------------
// Pass 1a: every chunk's own state increment, all chunks and heads in parallel. Block (chunk n,
// head h) computes D_n = U^T R with U_t = h(k_t exp2(G_last - G_t) beta_t) and R = k (H_kk) or
// v (H_kv; fla converts U to v's dtype first), the sum the CPU's PrefillHead tail adds to the
// decayed state, and writes it into chunk n's snapshot slot, with gamma_n = exp2(G_last).
// Pass 1b then walks the chunks per state element: S_{n+1} = gamma_n S_n + D_n, exactly the
// CPU's update, storing each S_n in place of D_n. (One serial block per head walking the chunks
// instead was bound by load latency: 42 us per chunk, 1.3 ms for 2048 tokens.)

constexpr int kIncThreads = 256;

template <int KP>
struct IncSmem {
  static constexpr int kS = KP + 8;  // [C][kS]; operands read as (k=t, m|n=g): conflict-free
  static constexpr int kFloats = 3 * C * kS + 2 * C;
  static constexpr size_t kBytes = kFloats * sizeof(float);
};

template <int KP, bool kSplit>
__global__ void __launch_bounds__(kIncThreads) MesaPrefillChunkIncrement(MesaPrefillParams p, float* gamma) {
  using Smem = IncSmem<KP>;
  // Warp w: rows [R (w % 4), +R) with R = max(16, KP / 4) and columns [KP/2 (w / 4), +KP/2) of
  // the K x K increment (KP 32: the warps past the last row tile idle).
  constexpr int kRows = KP / 4 > 16 ? KP / 4 : 16;
  constexpr int kMT = kRows / 16;  // 16-row tiles per warp
  constexpr int kNT = KP / 16;     // 8-column tiles per warp
  extern __shared__ float smem[];
  float* u_s = smem;
  float* k_s = u_s + C * Smem::kS;
  float* v_s = k_s + C * Smem::kS;
  float* gcum = v_s + C * Smem::kS;
  const int chunk = blockIdx.x, h = blockIdx.y, H = p.num_heads, K = p.head_dim;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, q = lane & 3;
  const int64_t kk = static_cast<int64_t>(K) * K;
  const ChunkAt at = LocateChunk(p, chunk);
  const int64_t tc = at.tc;
  const int c = at.c;
  const bool fixed = p.cg[at.s].mode == CgMode::kFixed;
  const int64_t col0 = static_cast<int64_t>(h) * K;

  float* beta = gcum + C;
  if (threadIdx.x < C) beta[threadIdx.x] = threadIdx.x < c ? p.beta[(tc + threadIdx.x) * H + h] : 0.0f;
  CopyTile<KP>(p.k + tc * p.ld_in + col0, p.ld_in, C, c, K, [&](int r, int col, float4 v) {
    *reinterpret_cast<float4*>(k_s + r * Smem::kS + col) = v;
  });
  CopyTile<KP>(p.v + tc * p.ld_in + col0, p.ld_in, C, c, K, [&](int r, int col, float4 v) {
    *reinterpret_cast<float4*>(v_s + r * Smem::kS + col) = v;
  });
  ChunkCumDecay(p, tc, c, h, gcum);  // ends with a barrier
  const float g_last = gcum[c - 1];
  if (threadIdx.x == 0) gamma[static_cast<int64_t>(chunk) * H + h] = exp2f(g_last);
  for (int i = threadIdx.x; i < C * KP; i += kIncThreads) {
    const int t = i / KP, a = i % KP;
    float u = 0.0f;
    if (t < c) {
      const float kv = k_s[t * Smem::kS + a] * (exp2f(g_last - gcum[t]) * beta[t]);
      u = fixed ? Round(kv, Rounding::kFp16) : kv;
    }
    u_s[t * Smem::kS + a] = u;
  }
  __syncthreads();

  const int row0 = kRows * (warp & 3), colw = (KP / 2) * (warp >> 2);
  if (row0 >= KP) return;  // no barrier follows
  float* dst = static_cast<float*>(p.workspace) +
               (static_cast<int64_t>(chunk) * H + h) * SnapshotFloats(K);
  float acc[kMT][kNT][4];
  for (int which = 0; which < 2; ++which) {  // 0: H_kk from k, 1: H_kv from v
    const float* r_s = which == 0 ? k_s : v_s;
    const bool to_value_dtype = which == 1 && fixed;
#pragma unroll
    for (int i = 0; i < kMT; ++i) {
#pragma unroll
      for (int n = 0; n < kNT; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[i][n][e] = 0.0f;
      }
    }
    // acc[a][b] = sum_t U[t][a] R[t][b]: A (m=a, k=t) = U[t][a], B (k=t, n=b) = R[t][b].
#pragma unroll 2
    for (int ks = 0; ks < C / 8; ++ks) {
      float af[kMT][4];
#pragma unroll
      for (int i = 0; i < kMT; ++i) {
        const int a = row0 + 16 * i + g;
        af[i][0] = u_s[(8 * ks + q) * Smem::kS + a];
        af[i][1] = u_s[(8 * ks + q) * Smem::kS + a + 8];
        af[i][2] = u_s[(8 * ks + q + 4) * Smem::kS + a];
        af[i][3] = u_s[(8 * ks + q + 4) * Smem::kS + a + 8];
        if (to_value_dtype) {
#pragma unroll
          for (int e = 0; e < 4; ++e) af[i][e] = Round(af[i][e], p.value_rounding);
        }
      }
#pragma unroll
      for (int n = 0; n < kNT; ++n) {
        const float bf[2] = {r_s[(8 * ks + q) * Smem::kS + colw + 8 * n + g],
                             r_s[(8 * ks + q + 4) * Smem::kS + colw + 8 * n + g]};
#pragma unroll
        for (int i = 0; i < kMT; ++i) Mma<kSplit>(acc[i][n], af[i], bf);
      }
    }
#pragma unroll
    for (int i = 0; i < kMT; ++i) {
#pragma unroll
      for (int n = 0; n < kNT; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int a = row0 + 16 * i + g + 8 * (e >> 1), b = colw + 8 * n + 2 * q + (e & 1);
          if (a < K && b < K) dst[which * kk + b * K + a] = acc[i][n][e];  // transposed
        }
      }
    }
  }
}

// Pass 1b: one thread per state element (both states, all heads) and sequence (grid.y): over
// the sequence's chunks, snap_n = S_n in place of D_n, S_{n+1} = gamma_n S_n + D_n; the final S
// goes back to the sequence's h_kk / h_kv. The workspace holds both transposed (the chunk pass
// reads the state as a B operand, column by column).
__global__ void MesaPrefillStateScan(MesaPrefillParams p, const float* gamma) {
  const int64_t kk = static_cast<int64_t>(p.head_dim) * p.head_dim;
  const int64_t per_head = 2 * kk;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= per_head * p.num_heads) return;
  const int seq = blockIdx.y;
  const int h = static_cast<int>(i / per_head);
  const int64_t e = i % per_head;
  const int64_t rem = e % kk;  // = b K + a for state element (a, b)
  float* state = (e < kk ? p.h_kk[seq] : p.h_kv[seq]) + h * kk + (rem % p.head_dim) * p.head_dim +
                 rem / p.head_dim;
  const int64_t stride = per_head * p.num_heads;
  const int first = p.seqs.chunk_start[seq];
  const int chunks = p.seqs.chunk_start[seq + 1] - first;
  float* d = static_cast<float*>(p.workspace) + first * stride + h * per_head + e;
  gamma += static_cast<int64_t>(first) * p.num_heads;
  float s = *state;
  // Eight chunks' increments are loaded before any snapshot is stored: a store to d may alias a
  // later load as far as the compiler knows, which would otherwise serialise every load.
  constexpr int kGroup = 8;
  for (int n0 = 0; n0 < chunks; n0 += kGroup) {
    float inc[kGroup], gam[kGroup];
#pragma unroll
    for (int k = 0; k < kGroup; ++k) {
      const int n = n0 + k;
      inc[k] = n < chunks ? d[n * stride] : 0.0f;
      gam[k] = n < chunks ? gamma[static_cast<int64_t>(n) * p.num_heads + h] : 0.0f;
    }
#pragma unroll
    for (int k = 0; k < kGroup; ++k) {
      const int n = n0 + k;
      if (n >= chunks) break;
      d[n * stride] = s;
      s = s * gam[k] + inc[k];
    }
  }
  *state = s;
}

// ---------------------------------------------------------------------------------------------
// Pass 2: the chunk pass, one block of 8 warps per (chunk, head).
//
// Warp w owns the token tiles {w % 2, 3 - w % 2} (16 tokens each; pairing a short row of the
// causal score triangle with a long one gives every warp the same work) and the columns
// [KP/4 (w / 2), +KP/4): kN = KP / 32 tiles of 8 columns. The CG vectors of those 32 x KP/4
// entries live in its registers in the mma accumulator layout.
//
// Shared-memory operands are read 16 bytes at a time. Which feature of a 16-wide block feeds
// which k slot of two consecutive mma steps is free (the products sum over all of them) as
// long as A and B agree: lane q takes features 4q .. 4q + 3 of the block from both, as slots
// (q, q + 4) of the first step and (q, q + 4) of the second. B operands are stored [n][k]
// (the state transposed), and row strides are 16 mod 32 floats, which keeps those loads free of
// bank conflicts; A operands in the row-pair interleaved layout (ChunkBlock::RpRow), where one
// float4 is one A fragment. The token dimension of the scores, which the second product reads as B
// scalars from k or v stored [token][feature], is the exception: there the scores are stored
// permuted (Phys) so that the four tokens of lane q lie 4 rows apart (two-way conflicts
// instead of four).

constexpr int kChunkThreads = 256;

__host__ __device__ constexpr int Phys(int l) {
  return (l & ~15) + 4 * (l & 3) + 2 * ((l >> 3) & 1) + ((l >> 2) & 1);
}

template <int KP>
struct ChunkSmem {
  static constexpr int kSK = KP + 16;     // [C][kSK] tokens x features; [KP][kSK] the state
  static constexpr int kSI = 2 * KP + 4;  // [C/2][kSI] operator inputs, row pairs interleaved
  static constexpr int kSS = 2 * C + 4;   // [C/2][kSS] scores, row pairs interleaved
  static constexpr int kSM = C + 4;       // [C][kSM] M
  static constexpr int kFloats = C * kSK + C * kSI + KP * kSK + C / 2 * kSS + C * kSM + 11 * C + KP;
  static constexpr size_t kBytes = kFloats * sizeof(float);
  static_assert(kBytes <= 227 * 1024, "chunk-pass shared memory exceeds the 227 KiB an SM offers a block");
};

template <int KP, bool kFixed, bool kSplit>
struct ChunkBlock {
  using Smem = ChunkSmem<KP>;
  static constexpr int kN = KP / 32;
  float* rhs;    // [C][kSK] k of the chunk (CG), then v (readout's second half)
  float* in_h;   // [C/2][kSI] the operator input as the score product takes it: H(in), RP layout
  float* in_e;   // [C/2][kSI] ... and as the state product takes it: r2(e_t in_t), RP layout
  float* hbarT;  // [KP][kSK] the chunk-start state transposed (row j = column j)
  float* s;      // [C/2][kSS] masked scores, RP layout, Phys token columns
  float* m;      // [C][kSM] M_tu = exp2(G_t - G_u) beta_u for u <= t < c, else 0
  float* gcum;   // [C]
  float* beta;   // [C]
  float* e;      // [C] exp2(G_t)
  float* red;    // [2][4][C] row partial sums of the four column quarters, two buffers
  int c, g, q, rp, cq;

  __device__ int Mt(int i) const { return i == 0 ? rp : 3 - rp; }
  __device__ int Row(int i, int e2) const { return 16 * Mt(i) + g + 8 * e2; }
  __device__ int Col(int n, int e) const { return cq * (KP / 4) + 8 * n + 2 * q + (e & 1); }
  // Row-pair interleaved (RP) layout of a [C][F] matrix: rows g and g + 8 of each 16-row tile
  // alternate feature by feature, row (16 mt + g + 8 h, f) at (8 mt + g) stride + 2 f + h. A
  // float4 at 2 (16 blk + 4 q) + 4 k2 is then exactly the A fragment of lane (g, q) for k step
  // k2 of the block (rows g, g + 8; slots q, q + 4 = features 4 q + 2 k2, +1), with no register
  // moves; stride / 4 odd keeps the loads conflict-free.
  __device__ int RpRow(int i, int stride) const { return (8 * Mt(i) + g) * stride; }

  // fn(i, n, e, t, j) for every element [i][n][e] of this thread's register tile: token
  // t = Row(i, e / 2), column j = Col(n, e). Unrolled, so the tile stays in registers.
  template <typename Fn>
  __device__ __forceinline__ void ForEachElement(Fn&& fn) const {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
#pragma unroll
      for (int n = 0; n < kN; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) fn(i, n, e, Row(i, e >> 1), Col(n, e));
      }
    }
  }
  // fn(i, e2, t) for each of this thread's four rows [i][e2], token t = Row(i, e2).
  template <typename Fn>
  __device__ __forceinline__ void ForEachRow(Fn&& fn) const {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
#pragma unroll
      for (int e2 = 0; e2 < 2; ++e2) fn(i, e2, Row(i, e2));
    }
  }

  // out = A(in): sum_s r1(M_ts (H(in_t) . k_s)) rhs_s + r2(e_t in_t) hbar (+ lambda . in_t), the
  // CPU's ApplyChunkOperator, for the input `v` in this thread's layout. `between()` runs after
  // the scores are made, before the second product (the readout swaps k for v and H_kk for
  // H_kv there). Every thread takes part. No barrier before the input is written: every call
  // follows a RowDots, whose barrier comes after all reads of the previous call's inputs.
  // kScore / kState: the roundings of the scores and of e_t in_t (fixed mode only); lam: this
  // thread's lambda_j for its columns, or null (readout).
  template <Rounding kScore, Rounding kState, typename Between>
  __device__ void Apply(const float (&v)[2][kN][4], const float (*lam)[2], Between between,
                        float (&out)[2][kN][4]) const {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const float e0 = e[Row(i, 0)], e1 = e[Row(i, 1)];
#pragma unroll
      for (int n = 0; n < kN; ++n) {
        // (row g, col c), (row g + 8, c), (g, c + 1), (g + 8, c + 1) are adjacent in RP.
        const float x[4] = {v[i][n][0], v[i][n][2], v[i][n][1], v[i][n][3]};
        const float ex[4] = {e0, e1, e0, e1};
        float4 h4, e4;
        if constexpr (kFixed) {
          h4 = make_float4(RoundAs<Rounding::kFp16>(x[0]), RoundAs<Rounding::kFp16>(x[1]),
                           RoundAs<Rounding::kFp16>(x[2]), RoundAs<Rounding::kFp16>(x[3]));
          e4 = make_float4(RoundAs<kState>(ex[0] * x[0]), RoundAs<kState>(ex[1] * x[1]),
                           RoundAs<kState>(ex[2] * x[2]), RoundAs<kState>(ex[3] * x[3]));
        } else {
          h4 = make_float4(x[0], x[1], x[2], x[3]);
          e4 = make_float4(ex[0] * x[0], ex[1] * x[1], ex[2] * x[2], ex[3] * x[3]);
        }
        const int at = RpRow(i, Smem::kSI) + 2 * Col(n, 0);
        *reinterpret_cast<float4*>(in_h + at) = h4;
        *reinterpret_cast<float4*>(in_e + at) = e4;
      }
    }
    __syncthreads();
    // Scores S[t][u] = H(in_t) . k_u over the live 16 x 8 tiles (not above the diagonal) of this
    // warp's two token tiles: 2 Mt(0) + 2 and 2 Mt(1) + 2 of them, 10 in all, dealt to the four
    // warps of the pair in turn. A (m=t, k=j) = in_h[t][j], B (k=j, n=u) = k[u][j].
    const int live0 = 2 * Mt(0) + 2;
    for (int idx = cq; idx < 10; idx += 4) {
      const int i = idx < live0 ? 0 : 1, nt = idx < live0 ? idx : idx - live0;
      // Four partial accumulators: one chain of KP / 8 dependent mma would leave the tensor
      // pipe waiting on its latency (two warps per scheduler cannot hide it).
      float acc[4][4] = {};
      const float* ap = in_h + RpRow(i, Smem::kSI) + 8 * q;
      const float* bp = rhs + (8 * nt + g) * Smem::kSK + 4 * q;
#pragma unroll
      for (int blk = 0; blk < KP / 16; ++blk) {
        const float4 x0 = *reinterpret_cast<const float4*>(ap + 32 * blk);
        const float4 x1 = *reinterpret_cast<const float4*>(ap + 32 * blk + 4);
        const float4 y = *reinterpret_cast<const float4*>(bp + 16 * blk);
        const float af0[4] = {x0.x, x0.y, x0.z, x0.w}, af1[4] = {x1.x, x1.y, x1.z, x1.w};
        const float bf0[2] = {y.x, y.y}, bf1[2] = {y.z, y.w};
        Mma<kSplit, true>(acc[2 * (blk & 1)], af0, bf0);  // k: fp16 values
        Mma<kSplit, true>(acc[2 * (blk & 1) + 1], af1, bf1);
      }
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int t = Row(i, e >> 1), u = 8 * nt + 2 * q + (e & 1);
        const float dot = (acc[0][e] + acc[1][e]) + (acc[2][e] + acc[3][e]);
        float val = m[t * Smem::kSM + u] * dot;
        if constexpr (kFixed) val = RoundAs<kScore>(val);
        s[RpRow(i, Smem::kSS) + 2 * Phys(u) + (e >> 1)] = val;
      }
    }
    between();
    __syncthreads();
    // out[t][j] = sum_{u <= t} S[t][u] rhs[u][j] + sum_l in_e[t][l] hbar[l][j].
#pragma unroll
    for (int i = 0; i < 2; ++i) {
#pragma unroll
      for (int n = 0; n < kN; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) out[i][n][e] = 0.0f;
      }
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const float* ap = s + RpRow(i, Smem::kSS) + 8 * q;
      for (int blk = 0; blk <= Mt(i); ++blk) {  // u < 16 Mt(i) + 16
        const float4 x0 = *reinterpret_cast<const float4*>(ap + 32 * blk);
        const float4 x1 = *reinterpret_cast<const float4*>(ap + 32 * blk + 4);
        const float af0[4] = {x0.x, x0.y, x0.z, x0.w}, af1[4] = {x1.x, x1.y, x1.z, x1.w};
        // B (k=u, n=j) = rhs[u][j] for u = 16 blk + (q, q + 4) and (8 + q, 12 + q).
        const float* bp = rhs + (16 * blk + q) * Smem::kSK;
#pragma unroll
        for (int n = 0; n < kN; ++n) {
          const int pj = cq * (KP / 4) + 8 * n + g;
          const float bf0[2] = {bp[pj], bp[4 * Smem::kSK + pj]};
          const float bf1[2] = {bp[8 * Smem::kSK + pj], bp[12 * Smem::kSK + pj]};
          // k (CG) or v of a bf16 / fp16 model (readout): exact tf32 values.
          Mma<kSplit, kScore != Rounding::kNone>(out[i][n], af0, bf0);
          Mma<kSplit, kScore != Rounding::kNone>(out[i][n], af1, bf1);
        }
      }
    }
#pragma unroll 2
    for (int blk = 0; blk < KP / 16; ++blk) {
      float af[2][2][4];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const float* ap = in_e + RpRow(i, Smem::kSI) + 32 * blk + 8 * q;
        const float4 x0 = *reinterpret_cast<const float4*>(ap);
        const float4 x1 = *reinterpret_cast<const float4*>(ap + 4);
        af[i][0][0] = x0.x;
        af[i][0][1] = x0.y;
        af[i][0][2] = x0.z;
        af[i][0][3] = x0.w;
        af[i][1][0] = x1.x;
        af[i][1][1] = x1.y;
        af[i][1][2] = x1.z;
        af[i][1][3] = x1.w;
      }
#pragma unroll
      for (int n = 0; n < kN; ++n) {
        const int j = cq * (KP / 4) + 8 * n + g;
        const float4 y = *reinterpret_cast<const float4*>(hbarT + j * Smem::kSK + 16 * blk + 4 * q);
        const float bf0[2] = {y.x, y.y}, bf1[2] = {y.z, y.w};
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          Mma<kSplit>(out[i][n], af[i][0], bf0);
          Mma<kSplit>(out[i][n], af[i][1], bf1);
        }
      }
    }
    if (lam != nullptr) {
#pragma unroll
      for (int i = 0; i < 2; ++i) {
#pragma unroll
        for (int n = 0; n < kN; ++n) {
#pragma unroll
          for (int e = 0; e < 4; ++e) out[i][n][e] += lam[n][e & 1] * v[i][n][e];
        }
      }
    }
  }

  // Row dot products a_t . b_t for this thread's four rows [i][e2], identical in every thread
  // that holds the row (quad shuffles, then the four column quarters added in a fixed order).
  // Calls alternate between the two buffers (`buf`), so one barrier per call suffices: a
  // buffer is written again only after every thread has passed the other call's barrier, which
  // it reaches after reading this buffer.
  __device__ void RowDots(const float (&a)[2][kN][4], const float (&b)[2][kN][4], int buf,
                          float (&dot)[2][2]) const {
    float* rb = red + 4 * C * buf;
    float part[2][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}};
#pragma unroll
    for (int i = 0; i < 2; ++i) {
#pragma unroll
      for (int n = 0; n < kN; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) part[i][e >> 1] = fmaf(a[i][n][e], b[i][n][e], part[i][e >> 1]);
      }
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
#pragma unroll
      for (int e2 = 0; e2 < 2; ++e2) {
        part[i][e2] += __shfl_xor_sync(0xffffffffu, part[i][e2], 1);
        part[i][e2] += __shfl_xor_sync(0xffffffffu, part[i][e2], 2);
      }
    }
    if (q == 0) {
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        rb[cq * C + Row(i, 0)] = part[i][0];
        rb[cq * C + Row(i, 1)] = part[i][1];
      }
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < 2; ++i) {
#pragma unroll
      for (int e2 = 0; e2 < 2; ++e2) {
        const int t = Row(i, e2);
        dot[i][e2] = ((rb[t] + rb[C + t]) + rb[2 * C + t]) + rb[3 * C + t];
      }
    }
  }
};

template <int KP, bool kFixed, bool kSplit>
__global__ void __launch_bounds__(kChunkThreads, 1) MesaPrefillChunkPass(MesaPrefillParams p) {
  using Smem = ChunkSmem<KP>;
  using Block = ChunkBlock<KP, kFixed, kSplit>;
  constexpr int kN = Block::kN;
  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  const int chunk = blockIdx.x, h = blockIdx.y, H = p.num_heads, K = p.head_dim, t0 = threadIdx.x;
  const int64_t kk = static_cast<int64_t>(K) * K;
  const ChunkAt at = LocateChunk(p, chunk);
  const int64_t tc = at.tc;
  const int c = at.c;
  const CgControl cg = p.cg[at.s];

  Block b;
  b.rhs = smem;
  b.in_h = b.rhs + C * Smem::kSK;
  b.in_e = b.in_h + C / 2 * Smem::kSI;
  b.hbarT = b.in_e + C / 2 * Smem::kSI;
  b.s = b.hbarT + KP * Smem::kSK;
  b.m = b.s + C / 2 * Smem::kSS;
  b.gcum = b.m + C * Smem::kSM;
  b.beta = b.gcum + C;
  b.e = b.beta + C;
  b.red = b.e + C;  // 8 C
  float* lambda_s = b.red + 8 * C;  // [KP], zero past K
  b.c = c;
  const int lane = t0 & 31, warp = t0 >> 5;
  b.g = lane >> 2;
  b.q = lane & 3;
  b.rp = warp & 1;
  b.cq = warp >> 1;
  constexpr bool fixed = kFixed;
  const float eps = fixed ? kFlaCgEps : 0.0f;

  // The snapshot is stored transposed (MesaPrefillChunkIncrement): row j holds column j.
  const float* snapT = static_cast<const float*>(p.workspace) +
                       (static_cast<int64_t>(chunk) * H + h) * SnapshotFloats(K);
  const int64_t col0 = static_cast<int64_t>(h) * K;

  auto load_rhs = [&](const float* src) {
    CopyTile<KP>(src + tc * p.ld_in + col0, p.ld_in, C, c, K, [&](int r, int col, float4 v) {
      *reinterpret_cast<float4*>(b.rhs + r * Smem::kSK + col) = v;
    });
  };
  auto load_state = [&](const float* snap, Rounding rounding) {
    CopyTile<KP>(snap, K, KP, K, K, [&](int r, int col, float4 v) {
      if (fixed) v = make_float4(Round(v.x, rounding), Round(v.y, rounding), Round(v.z, rounding),
                                 Round(v.w, rounding));
      *reinterpret_cast<float4*>(b.hbarT + r * Smem::kSK + col) = v;
    });
  };
  load_rhs(p.k);
  load_state(snapT, Rounding::kTf32);
  if (t0 < KP) lambda_s[t0] = t0 < K ? p.lambda[h * K + t0] : 0.0f;
  if (t0 < C) b.beta[t0] = t0 < c ? p.beta[(tc + t0) * H + h] : 0.0f;
  ChunkCumDecay(p, tc, c, h, b.gcum);  // ends with a barrier
  if (t0 < C) b.e[t0] = t0 < c ? exp2f(b.gcum[t0]) : 0.0f;
  for (int i = t0; i < C * C; i += kChunkThreads) {
    const int t = i / C, u = i % C;
    b.m[t * Smem::kSM + u] = (u <= t && t < c) ? exp2f(b.gcum[t] - b.gcum[u]) * b.beta[u] : 0.0f;
  }
  __syncthreads();
  auto nothing = [] {};
  float lam[kN][2];
#pragma unroll
  for (int n = 0; n < kN; ++n) {
    lam[n][0] = lambda_s[b.Col(n, 0)];
    lam[n][1] = lambda_s[b.Col(n, 1)];
  }

  // The right-hand sides q in this thread's layout; rows past c and columns past K are zero.
  float x[2][kN][4], r[2][kN][4], pv[2][kN][4], w[2][kN][4];
  b.ForEachElement([&](int i, int n, int e, int t, int j) {
    r[i][n][e] = (t < c && j < K) ? p.q[(tc + t) * p.ld_in + col0 + j] : 0.0f;
    x[i][n][e] = 0.0f;
  });
  float qnorm[2][2], delta[2][2];
  b.RowDots(r, r, 0, qnorm);
  b.ForEachRow([&](int i, int e2, int) { qnorm[i][e2] = sqrtf(qnorm[i][e2]); });
  if (!fixed) {
    // Jacobi start x0 = q / diag(A_t), then r = q - A x0.
    b.ForEachElement([&](int i, int n, int e, int t, int j) {
      if (t >= c || j >= K) return;
      float diag = b.e[t] * b.hbarT[j * Smem::kSK + j];
      for (int u = 0; u <= t; ++u) {
        const float kj = b.rhs[u * Smem::kSK + j];
        diag += b.m[t * Smem::kSM + u] * kj * kj;
      }
      x[i][n][e] = r[i][n][e] / (diag + lambda_s[j]);
    });
    b.template Apply<Rounding::kFp16, Rounding::kTf32>(x, lam, nothing, w);
    b.ForEachElement([&](int i, int n, int e, int, int) { r[i][n][e] -= w[i][n][e]; });
  }
  b.ForEachElement([&](int i, int n, int e, int, int) { pv[i][n][e] = r[i][n][e]; });
  b.RowDots(r, r, 1, delta);
  bool active[2][2];
  int iters[2][2] = {{0, 0}, {0, 0}};
  b.ForEachRow([&](int i, int e2, int t) { active[i][e2] = t < c; });
  for (int step = 0; step < cg.max_iters; ++step) {
    if (!fixed) {
      bool any = false;
      b.ForEachRow([&](int i, int e2, int) {
        if (active[i][e2] && sqrtf(delta[i][e2]) <= cg.tol * qnorm[i][e2]) active[i][e2] = false;
        any = any || active[i][e2];
      });
      if (!__syncthreads_or(any)) break;
    }
    b.template Apply<Rounding::kFp16, Rounding::kTf32>(pv, lam, nothing, w);
    float pw[2][2], alpha[2][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}};
    b.RowDots(pv, w, 0, pw);
    b.ForEachRow([&](int i, int e2, int) {
      if (!active[i][e2]) return;
      if (!fixed && !(pw[i][e2] > 0.0f)) {
        active[i][e2] = false;
      } else {
        alpha[i][e2] = delta[i][e2] / (pw[i][e2] + eps);
      }
    });
    b.ForEachElement([&](int i, int n, int e, int, int) {
      if (!active[i][e >> 1]) return;
      x[i][n][e] = fmaf(alpha[i][e >> 1], pv[i][n][e], x[i][n][e]);
      r[i][n][e] = fmaf(-alpha[i][e >> 1], w[i][n][e], r[i][n][e]);
    });
    float dnew[2][2], ratio[2][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}};
    b.RowDots(r, r, 1, dnew);
    b.ForEachRow([&](int i, int e2, int) {
      if (!active[i][e2]) return;
      ratio[i][e2] = dnew[i][e2] / (delta[i][e2] + eps);
      delta[i][e2] = dnew[i][e2];
      ++iters[i][e2];
    });
    b.ForEachElement([&](int i, int n, int e, int, int) {
      if (active[i][e >> 1]) pv[i][n][e] = fmaf(ratio[i][e >> 1], pv[i][n][e], r[i][n][e]);
    });
  }
  if (b.cq == 0 && b.q == 0) {
    b.ForEachRow([&](int i, int e2, int t) {
      if (t >= c) return;
      if (p.cg_iters != nullptr) p.cg_iters[(tc + t) * H + h] = iters[i][e2];
      if (p.cg_residual != nullptr) {
        p.cg_residual[(tc + t) * H + h] = qnorm[i][e2] > 0.0f ? sqrtf(delta[i][e2]) / qnorm[i][e2] : 0.0f;
      }
    });
  }

  // Readout o_t = H_kv,t^T x_t, chunk form; fla rounds the intra-chunk scores to v's dtype. Once
  // the scores x . k are made, v and H_kv replace k and H_kk in shared memory.
  auto swap_in_v = [&] {
    __syncthreads();  // every warp's score product is done with k
    load_rhs(p.v);
    load_state(snapT + kk, Rounding::kBf16);
  };
  switch (p.value_rounding) {
    case Rounding::kBf16:
      b.template Apply<Rounding::kBf16, Rounding::kBf16>(x, nullptr, swap_in_v, w);
      break;
    case Rounding::kFp16:
      b.template Apply<Rounding::kFp16, Rounding::kBf16>(x, nullptr, swap_in_v, w);
      break;
    default:
      b.template Apply<Rounding::kNone, Rounding::kBf16>(x, nullptr, swap_in_v, w);
      break;
  }
  b.ForEachElement([&](int i, int n, int e, int t, int j) {
    if (t < c && j < K) p.out[(tc + t) * p.ld_out + col0 + j] = Round(w[i][n][e], p.value_rounding);
  });
}


template <int KP, bool kFixed, bool kSplit>
absl::Status Launch(const MesaPrefillParams& p) {
  // The attribute calls are cheap after the first and keep the launch self-contained.
  MESA_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(MesaPrefillChunkIncrement<KP, kSplit>,
                                                 cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 static_cast<int>(IncSmem<KP>::kBytes)));
  MESA_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(MesaPrefillChunkPass<KP, kFixed, kSplit>,
                                                 cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 static_cast<int>(ChunkSmem<KP>::kBytes)));
  const int64_t chunks = p.seqs.chunks();
  float* gamma = static_cast<float*>(p.workspace) +
                 MesaPrefillWorkspaceChunks(p.workspace_rows) * p.num_heads * SnapshotFloats(p.head_dim);
  const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(p.num_heads));
  MesaPrefillChunkIncrement<KP, kSplit><<<grid, kIncThreads, IncSmem<KP>::kBytes, p.stream>>>(p, gamma);
  MESA_CUDA_RETURN_IF_LAUNCH_FAILED("MesaPrefillChunkIncrement");
  const int64_t elements = 2 * static_cast<int64_t>(p.head_dim) * p.head_dim * p.num_heads;
  const dim3 scan_grid(static_cast<unsigned>((elements + 255) / 256),
                       static_cast<unsigned>(p.seqs.count));
  MesaPrefillStateScan<<<scan_grid, 256, 0, p.stream>>>(p, gamma);
  MESA_CUDA_RETURN_IF_LAUNCH_FAILED("MesaPrefillStateScan");
  MesaPrefillChunkPass<KP, kFixed, kSplit><<<grid, kChunkThreads, ChunkSmem<KP>::kBytes, p.stream>>>(p);
  MESA_CUDA_RETURN_IF_LAUNCH_FAILED("MesaPrefillChunkPass");
  return absl::OkStatus();
}

template <int KP>
absl::Status LaunchFor(const MesaPrefillParams& p) {
  // Split products wherever the CPU multiplies values that are not exact tf32 numbers.
  if (p.cg[0].mode != CgMode::kFixed) return Launch<KP, false, true>(p);
  if (p.value_rounding == Rounding::kNone) return Launch<KP, true, true>(p);
  return Launch<KP, true, false>(p);
}

}  // namespace

int64_t MesaPrefillWorkspaceChunks(int32_t rows) { return (static_cast<int64_t>(rows) + C - 1) / C; }

size_t MesaPrefillWorkspaceBytes(int32_t num_heads, int32_t head_dim, int32_t rows) {
  // The snapshots, then gamma_n per (chunk, head).
  return static_cast<size_t>(MesaPrefillWorkspaceChunks(rows) * num_heads *
                             (SnapshotFloats(head_dim) + 1)) *
         sizeof(float);
}

absl::Status MesaPrefill(const MesaPrefillParams& p) {
  if (p.head_dim < 1 || p.head_dim > 128) {
    return absl::InvalidArgumentError(
        absl::StrCat("MesaPrefill: head_dim ", p.head_dim, " is outside [1, 128]"));
  }
  if (p.num_heads < 0 || p.seqs.count < 0 || p.seqs.count > kMaxPackedSeqs) {
    return absl::InvalidArgumentError(absl::StrCat("MesaPrefill: num_heads ", p.num_heads,
                                                   " is negative or the sequence count ",
                                                   p.seqs.count, " is outside [0, ",
                                                   kMaxPackedSeqs, "]"));
  }
  if (p.seqs.count == 0 || p.num_heads == 0) return absl::OkStatus();
  for (int s = 0; s < p.seqs.count; ++s) {
    if (p.seqs.length(s) < 1) {
      return absl::InvalidArgumentError(absl::StrCat("MesaPrefill: sequence ", s, " has ",
                                                     p.seqs.length(s), " tokens (at least 1)"));
    }
    if (p.h_kk[s] == nullptr || p.h_kv[s] == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("MesaPrefill: sequence ", s, " has a null state pointer"));
    }
    if ((p.cg[s].mode == CgMode::kFixed) != (p.cg[0].mode == CgMode::kFixed)) {
      // (CgModeName lives in the CPU kernel library, which this one does not link.)
      auto name = [](CgMode m) { return m == CgMode::kFixed ? "fixed" : "adaptive"; };
      return absl::InvalidArgumentError(absl::StrCat(
          "MesaPrefill: sequence ", s, " runs CG in ", name(p.cg[s].mode), " mode, sequence 0 in ",
          name(p.cg[0].mode), "; one call takes one mode"));
    }
  }
  if (p.q == nullptr || p.k == nullptr || p.v == nullptr || p.log_decay == nullptr ||
      p.beta == nullptr || p.lambda == nullptr || p.out == nullptr || p.workspace == nullptr) {
    return absl::InvalidArgumentError("MesaPrefill: a required pointer is null");
  }
  if (p.ld_in < static_cast<int64_t>(p.num_heads) * p.head_dim ||
      p.ld_out < static_cast<int64_t>(p.num_heads) * p.head_dim) {
    return absl::InvalidArgumentError(absl::StrCat("MesaPrefill: ld_in ", p.ld_in, " / ld_out ",
                                                   p.ld_out, " shorter than H*K"));
  }
  if (p.seqs.chunks() > MesaPrefillWorkspaceChunks(p.workspace_rows)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "MesaPrefill: the call's ", p.seqs.count, " sequences have ", p.seqs.chunks(),
        " chunks of ", C, " tokens, the workspace (sized for ", p.workspace_rows, " rows) holds ",
        MesaPrefillWorkspaceChunks(p.workspace_rows)));
  }
  if (p.head_dim <= 32) return LaunchFor<32>(p);
  if (p.head_dim <= 64) return LaunchFor<64>(p);
  return LaunchFor<128>(p);
}

}  // namespace mesa::gpu
