// See mesa_prefill.h. The structure follows kernels/cpu/mesa_prefill.cc step by step (same
// names), so the two can be read side by side; sums run in a different order (per-thread
// loops and warp trees instead of BLAS), which the parity test's tolerance allows for.
#include "kernels/cuda/mesa_prefill.h"

#include <cstdint>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_math.cuh"

namespace mesa::gpu {
namespace {

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / 32;
constexpr int C = kPrefillChunk;
constexpr float kLog2e = 1.4426950216f;  // the constant fla scales its cumsum by

// Per-head workspace layout (floats).
struct Layout {
  int64_t kc, qc, vc, x, r, p, w, tmp, m, scores, hbar_kk, hbar_kv, total;
  __host__ __device__ static Layout For(int k) {
    Layout l;
    const int64_t ck = static_cast<int64_t>(C) * k, kk = static_cast<int64_t>(k) * k;
    int64_t o = 0;
    l.kc = o; o += ck;
    l.qc = o; o += ck;
    l.vc = o; o += ck;
    l.x = o; o += ck;
    l.r = o; o += ck;
    l.p = o; o += ck;
    l.w = o; o += ck;
    l.tmp = o; o += ck;
    l.m = o; o += C * C;
    l.scores = o; o += C * C;
    l.hbar_kk = o; o += kk;
    l.hbar_kv = o; o += kk;
    l.total = (o + 3) / 4 * 4;
    return l;
  }
};

__device__ __forceinline__ float RoundTf32(float f) {
  uint32_t bits = __float_as_uint(f);
  if ((bits & 0x7f800000u) != 0x7f800000u) bits &= 0xffffe000u;
  return __uint_as_float(bits);
}

__device__ __forceinline__ float Round(float v, Rounding r) {
  switch (r) {
    case Rounding::kNone: return v;
    case Rounding::kBf16: return RoundTo<__nv_bfloat16>(v);
    case Rounding::kFp16: return RoundTo<__half>(v);
    case Rounding::kTf32: return RoundTf32(v);
  }
  return v;
}

struct Head {
  int c, K;
  bool fixed;
  float* ws;
  Layout lay;
  float* e;  // [C] shared
  __device__ float* at(int64_t off) const { return ws + off; }
  __device__ float H(float v) const { return fixed ? Round(v, Rounding::kFp16) : v; }
  __device__ float R(float v, Rounding r) const { return fixed ? Round(v, r) : v; }
};

// out[t] = sum_{s<=t} r1(M_ts (fp16(in_t) . kc_s)) rhs_s + r2(e_t in_t) hbar (+ lambda . in_t),
// as ApplyChunkOperator on the CPU. Every thread takes part; ends with a barrier.
__device__ void ApplyChunkOperator(const Head& s, const float* in, const float* rhs,
                                   const float* hbar, const float* lambda, Rounding score_rounding,
                                   Rounding state_rounding, float* out) {
  const int c = s.c, K = s.K, t0 = threadIdx.x;
  float* tmp = s.at(s.lay.tmp);
  float* scores = s.at(s.lay.scores);
  const float* kc = s.at(s.lay.kc);
  const float* m = s.at(s.lay.m);
  for (int i = t0; i < c * K; i += kThreads) tmp[i] = s.H(in[i]);
  __syncthreads();
  for (int i = t0; i < c * C; i += kThreads) {
    const int t = i / C, u = i % C;
    float v = 0.0f;
    if (u <= t && u < c) {
      float dot = 0.0f;
      for (int j = 0; j < K; ++j) dot = fmaf(tmp[t * K + j], kc[u * K + j], dot);
      v = s.R(m[t * C + u] * dot, score_rounding);
    }
    scores[i] = v;
  }
  __syncthreads();
  for (int i = t0; i < c * K; i += kThreads) {
    const int t = i / K, j = i % K;
    float acc = 0.0f;
    for (int u = 0; u <= t; ++u) acc = fmaf(scores[t * C + u], rhs[u * K + j], acc);
    out[i] = acc;
  }
  __syncthreads();
  for (int i = t0; i < c * K; i += kThreads) tmp[i] = s.R(s.e[i / K] * in[i], state_rounding);
  __syncthreads();
  for (int i = t0; i < c * K; i += kThreads) {
    const int t = i / K, j = i % K;
    float acc = 0.0f;
    for (int l = 0; l < K; ++l) acc = fmaf(tmp[t * K + l], hbar[l * K + j], acc);
    float o = out[i] + acc;
    if (lambda != nullptr) o += lambda[j] * in[i];
    out[i] = o;
  }
  __syncthreads();
}

// Row dot products a_t . b_t for t < c into dst[t], one warp per row. Ends with a barrier.
__device__ void RowDots(const float* a, const float* b, int c, int K, float* dst) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int t = warp; t < c; t += kWarpsPerBlock) {
    float acc = 0.0f;
    for (int j = lane; j < K; j += 32) acc = fmaf(a[t * K + j], b[t * K + j], acc);
    acc = WarpSum(acc);
    if (lane == 0) dst[t] = acc;
  }
  __syncthreads();
}

// gcum[t] = log2(e) * sum_{s<=t} g_s over the chunk's first c tokens (fla's scaled local
// cumulative decay, summed in token order by one thread as the CPU does). Ends with a barrier.
__device__ void ChunkCumDecay(const MesaPrefillParams& p, int64_t tc, int c, int h, float* gcum) {
  if (threadIdx.x == 0) {
    float acc = 0.0f;
    for (int t = 0; t < c; ++t) {
      acc += p.log_decay[(tc + t) * p.num_heads + h];
      gcum[t] = acc * kLog2e;
    }
  }
  __syncthreads();
}

// Chunk-start states in the workspace: [chunk][head] (H_kk, H_kv), fp32, after the scratch
// areas of every (chunk, head) block.
__host__ __device__ inline int64_t SnapshotFloats(int k) { return 2 * static_cast<int64_t>(k) * k; }

// Pass 1, one block per head, chunks in order: stores each chunk's start state (fp32, as the
// registers hold it in fla) and advances the state to the chunk's end:
//   S = Gamma S + sum_u u_u k_u^T (and v_u^T), the CPU's PrefillHead tail.
// Cheap next to the CG (two K x K x c products per chunk), so its serial walk costs little.
__global__ void __launch_bounds__(kThreads) MesaPrefillStatePass(MesaPrefillParams p, int64_t scratch_floats) {
  __shared__ float s_gcum[C];
  const int h = blockIdx.x, H = p.num_heads, K = p.head_dim, t0 = threadIdx.x;
  const int64_t kk = static_cast<int64_t>(K) * K;
  const bool fixed = p.cg.mode == CgMode::kFixed;
  const Layout lay = Layout::For(K);
  // This pass's own scratch: the scratch area of block (chunk 0, head h) of pass 2, which pass
  // 2 overwrites only after this kernel has finished (same stream).
  float* tmp = static_cast<float*>(p.workspace) + h * lay.total + lay.tmp;
  float* snaps = static_cast<float*>(p.workspace) + scratch_floats;
  float* skk = p.h_kk + h * kk;
  float* skv = p.h_kv + h * kk;
  int chunk = 0;
  for (int64_t tc = 0; tc < p.seq_len; tc += C, ++chunk) {
    const int c = static_cast<int>(p.seq_len - tc < C ? p.seq_len - tc : C);
    float* snap = snaps + (static_cast<int64_t>(chunk) * H + h) * SnapshotFloats(K);
    for (int64_t i = t0; i < kk; i += kThreads) {
      snap[i] = skk[i];
      snap[kk + i] = skv[i];
    }
    ChunkCumDecay(p, tc, c, h, s_gcum);
    const float g_last = s_gcum[c - 1];
    const float gamma = exp2f(g_last);
    for (int i = t0; i < c * K; i += kThreads) {
      const int t = i / K, j = i % K;
      const float scale = exp2f(g_last - s_gcum[t]) * p.beta[(tc + t) * H + h];
      const float kv = p.k[(tc + t) * p.ld_in + static_cast<int64_t>(h) * K + j];
      tmp[i] = fixed ? Round(kv * scale, Rounding::kFp16) : kv * scale;
    }
    __syncthreads();
    // S = gamma S + sum_t tmp_t^T rhs_t, with rhs = k (H_kk) or v (H_kv) of this head.
    auto advance = [&](float* S, const float* rhs) {
      for (int64_t i = t0; i < kk; i += kThreads) {
        const int a = static_cast<int>(i / K), b = static_cast<int>(i % K);
        float acc = 0.0f;
        for (int t = 0; t < c; ++t) {
          acc = fmaf(tmp[t * K + a], rhs[(tc + t) * p.ld_in + static_cast<int64_t>(h) * K + b], acc);
        }
        S[i] = S[i] * gamma + acc;
      }
      __syncthreads();
    };
    advance(skk, p.k);
    // fla 0.6.0 converts the fp16 decayed keys to v's dtype for the H_kv update.
    if (fixed) {
      for (int i = t0; i < c * K; i += kThreads) tmp[i] = Round(tmp[i], p.value_rounding);
    }
    __syncthreads();
    advance(skv, p.v);
  }
}

// Pass 2, one block per (chunk, head), all in parallel: the chunk's block CG from its start
// state and the readout (the CPU's SolveChunk and readout).
__global__ void __launch_bounds__(kThreads) MesaPrefillChunkPass(MesaPrefillParams p, int64_t scratch_floats) {
  __shared__ float s_gcum[C], s_e[C], s_delta[C], s_qnorm[C], s_pw[C], s_dnew[C], s_alpha[C],
      s_ratio[C];
  __shared__ int s_active[C];
  __shared__ int s_any;
  const int chunk = blockIdx.x, h = blockIdx.y, H = p.num_heads, K = p.head_dim, t0 = threadIdx.x;
  const int64_t kk = static_cast<int64_t>(K) * K;
  const int64_t tc = static_cast<int64_t>(chunk) * C;
  const int c = static_cast<int>(p.seq_len - tc < C ? p.seq_len - tc : C);
  Head s;
  s.K = K;
  s.c = c;
  s.fixed = p.cg.mode == CgMode::kFixed;
  s.lay = Layout::For(K);
  s.ws = static_cast<float*>(p.workspace) + (static_cast<int64_t>(chunk) * H + h) * s.lay.total;
  s.e = s_e;
  const float* snap = static_cast<const float*>(p.workspace) + scratch_floats +
                      (static_cast<int64_t>(chunk) * H + h) * SnapshotFloats(K);
  const float* lambda = p.lambda + h * K;
  float *kc = s.at(s.lay.kc), *qc = s.at(s.lay.qc), *vc = s.at(s.lay.vc);
  float *x = s.at(s.lay.x), *r = s.at(s.lay.r), *pp = s.at(s.lay.p), *w = s.at(s.lay.w);
  float *m = s.at(s.lay.m);
  float *hbar_kk = s.at(s.lay.hbar_kk), *hbar_kv = s.at(s.lay.hbar_kv);
  const float eps = s.fixed ? kFlaCgEps : 0.0f;

  for (int i = t0; i < c * K; i += kThreads) {
    const int t = i / K, j = i % K;
    const int64_t row = (tc + t) * p.ld_in + static_cast<int64_t>(h) * K;
    kc[i] = p.k[row + j];
    qc[i] = p.q[row + j];
    vc[i] = p.v[row + j];
  }
  ChunkCumDecay(p, tc, c, h, s_gcum);
  if (t0 < c) s_e[t0] = exp2f(s_gcum[t0]);
  for (int i = t0; i < C * C; i += kThreads) {
    const int t = i / C, u = i % C;
    m[i] = (u <= t && t < c) ? exp2f(s_gcum[t] - s_gcum[u]) * p.beta[(tc + u) * H + h] : 0.0f;
  }
  for (int64_t i = t0; i < kk; i += kThreads) {
    hbar_kk[i] = s.R(snap[i], Rounding::kTf32);
    hbar_kv[i] = s.R(snap[kk + i], Rounding::kBf16);
  }
  __syncthreads();

  // SolveChunk.
  if (s.fixed) {
    for (int i = t0; i < c * K; i += kThreads) {
      x[i] = 0.0f;
      r[i] = qc[i];
    }
    __syncthreads();
  } else {
    for (int i = t0; i < c * K; i += kThreads) {
      const int t = i / K, j = i % K;
      float diag = s_e[t] * hbar_kk[static_cast<int64_t>(j) * K + j];
      for (int u = 0; u <= t; ++u) {
        const float kj = kc[u * K + j];
        diag += m[t * C + u] * kj * kj;
      }
      x[i] = qc[i] / (diag + lambda[j]);
    }
    __syncthreads();
    ApplyChunkOperator(s, x, kc, hbar_kk, lambda, Rounding::kFp16, Rounding::kTf32, w);
    for (int i = t0; i < c * K; i += kThreads) r[i] = qc[i] - w[i];
    __syncthreads();
  }
  for (int i = t0; i < c * K; i += kThreads) pp[i] = r[i];
  __syncthreads();
  RowDots(r, r, c, K, s_delta);
  RowDots(qc, qc, c, K, s_qnorm);
  if (t0 < c) {
    s_qnorm[t0] = sqrtf(s_qnorm[t0]);
    s_active[t0] = 1;
    if (p.cg_iters != nullptr) p.cg_iters[(tc + t0) * H + h] = 0;
  }
  __syncthreads();
  for (int step = 0; step < p.cg.max_iters; ++step) {
    if (!s.fixed) {
      if (t0 == 0) s_any = 0;
      __syncthreads();
      if (t0 < c) {
        if (s_active[t0] && sqrtf(s_delta[t0]) <= p.cg.tol * s_qnorm[t0]) s_active[t0] = 0;
        if (s_active[t0]) atomicOr(&s_any, 1);
      }
      __syncthreads();
      if (!s_any) break;
    }
    ApplyChunkOperator(s, pp, kc, hbar_kk, lambda, Rounding::kFp16, Rounding::kTf32, w);
    RowDots(pp, w, c, K, s_pw);
    if (t0 < c) {
      float alpha = 0.0f;
      if (s_active[t0]) {
        if (!s.fixed && !(s_pw[t0] > 0.0f)) {
          s_active[t0] = 0;
        } else {
          alpha = s_delta[t0] / (s_pw[t0] + eps);
        }
      }
      s_alpha[t0] = alpha;
    }
    __syncthreads();
    for (int i = t0; i < c * K; i += kThreads) {
      const int t = i / K;
      if (!s_active[t]) continue;
      x[i] = fmaf(s_alpha[t], pp[i], x[i]);
      r[i] = fmaf(-s_alpha[t], w[i], r[i]);
    }
    __syncthreads();
    RowDots(r, r, c, K, s_dnew);
    if (t0 < c && s_active[t0]) s_ratio[t0] = s_dnew[t0] / (s_delta[t0] + eps);
    __syncthreads();
    for (int i = t0; i < c * K; i += kThreads) {
      const int t = i / K;
      if (s_active[t]) pp[i] = fmaf(s_ratio[t], pp[i], r[i]);
    }
    __syncthreads();
    if (t0 < c && s_active[t0]) {
      s_delta[t0] = s_dnew[t0];
      if (p.cg_iters != nullptr) p.cg_iters[(tc + t0) * H + h] += 1;
    }
    __syncthreads();
  }
  if (t0 < c && p.cg_residual != nullptr) {
    p.cg_residual[(tc + t0) * H + h] = s_qnorm[t0] > 0.0f ? sqrtf(s_delta[t0]) / s_qnorm[t0] : 0.0f;
  }

  // Readout o_t = H_kv,t^T x_t, chunk form; fla rounds the intra-chunk scores to v's dtype.
  ApplyChunkOperator(s, x, vc, hbar_kv, nullptr, p.value_rounding, Rounding::kBf16, w);
  for (int i = t0; i < c * K; i += kThreads) {
    const int t = i / K, j = i % K;
    p.out[(tc + t) * p.ld_out + static_cast<int64_t>(h) * K + j] = Round(w[i], p.value_rounding);
  }
}

int64_t NumChunks(int64_t seq_len) { return (seq_len + C - 1) / C; }

}  // namespace

size_t MesaPrefillWorkspaceBytes(int32_t num_heads, int32_t head_dim, int32_t max_seq_len) {
  const int64_t blocks = NumChunks(max_seq_len) * num_heads;
  return static_cast<size_t>(blocks * (Layout::For(head_dim).total + SnapshotFloats(head_dim))) *
         sizeof(float);
}

absl::Status MesaPrefill(const MesaPrefillParams& p) {
  if (p.head_dim < 1 || p.head_dim > 128) {
    return absl::InvalidArgumentError(
        absl::StrCat("MesaPrefill: head_dim ", p.head_dim, " is outside [1, 128]"));
  }
  if (p.seq_len < 0 || p.num_heads < 0) {
    return absl::InvalidArgumentError(absl::StrCat("MesaPrefill: seq_len ", p.seq_len,
                                                   " and num_heads ", p.num_heads,
                                                   " must not be negative"));
  }
  if (p.seq_len == 0 || p.num_heads == 0) return absl::OkStatus();
  if (p.h_kk == nullptr || p.h_kv == nullptr || p.q == nullptr || p.k == nullptr ||
      p.v == nullptr || p.log_decay == nullptr || p.beta == nullptr || p.lambda == nullptr ||
      p.out == nullptr || p.workspace == nullptr) {
    return absl::InvalidArgumentError("MesaPrefill: a required pointer is null");
  }
  if (p.ld_in < static_cast<int64_t>(p.num_heads) * p.head_dim ||
      p.ld_out < static_cast<int64_t>(p.num_heads) * p.head_dim) {
    return absl::InvalidArgumentError(absl::StrCat("MesaPrefill: ld_in ", p.ld_in, " / ld_out ",
                                                   p.ld_out, " shorter than H*K"));
  }
  if (p.seq_len > p.max_seq_len) {
    return absl::InvalidArgumentError(absl::StrCat("MesaPrefill: seq_len ", p.seq_len,
                                                   " exceeds the workspace's max_seq_len ",
                                                   p.max_seq_len));
  }
  const int64_t chunks = NumChunks(p.seq_len);
  const int64_t scratch_floats = NumChunks(p.max_seq_len) * p.num_heads * Layout::For(p.head_dim).total;
  MesaPrefillStatePass<<<p.num_heads, kThreads, 0, p.stream>>>(p, scratch_floats);
  MESA_CUDA_RETURN_IF_LAUNCH_FAILED("MesaPrefillStatePass");
  MesaPrefillChunkPass<<<dim3(static_cast<unsigned>(chunks), p.num_heads), kThreads, 0, p.stream>>>(
      p, scratch_floats);
  MESA_CUDA_RETURN_IF_LAUNCH_FAILED("MesaPrefillChunkPass");
  return absl::OkStatus();
}

}  // namespace mesa::gpu
