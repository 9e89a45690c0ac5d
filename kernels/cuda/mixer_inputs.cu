#include "kernels/cuda/mixer_inputs.h"

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/dependent_launch.h"
#include "kernels/cuda/device_math.cuh"

namespace mesa::gpu {
namespace {

constexpr int kMaxConv = 16;  // models/mesa_config.h kMaxConvSize

// A hint to bring the line holding `p` into L1; no value is waited for.
__device__ __forceinline__ void PrefetchL1(const void* p) {
  asm volatile("prefetch.global.L1 [%0];" ::"l"(p));
}

// One channel's causal conv for one new token, then SiLU, rounded to T. `state` ([W-1, dk],
// oldest first) is shifted by one and takes the new input, unless it is null (pad row).
// Tap order and FMA accumulation follow kernels/cpu/short_conv.cc.
template <typename T>
__device__ float ConvStep(float x, const float* w, int width, float* state, int64_t dk,
                          int64_t c) {
  float hist[kMaxConv];
  float acc = 0.0f;
  for (int i = 0; i + 1 < width; ++i) {
    hist[i] = state != nullptr ? state[i * dk + c] : 0.0f;
    acc = fmaf(w[i], hist[i], acc);
  }
  acc = fmaf(w[width - 1], x, acc);
  if (state != nullptr && width > 1) {
    for (int i = 0; i + 2 < width; ++i) state[i * dk + c] = hist[i + 1];
    state[(width - 2) * dk + c] = x;
  }
  return RoundTo<T>(Silu(acc));
}

// MesaGates (kernels/cpu/mixer_inputs.h) for head h of one proj row `pr`, written at `index` of
// [rows, H]: log_decay = logsigmoid(act(a + bias)), beta = sigmoid(act(b + bias)). Decode and
// prefill parameters name these fields alike.
template <typename T, typename Params>
__device__ __forceinline__ void MesaGates(const Params& p, const float* pr, int h, int64_t index) {
  p.log_decay[index] = LogSigmoid(RoundTo<T>(pr[p.a_col + h] + p.a_bias[h]));
  p.beta[index] = Sigmoid(RoundTo<T>(pr[p.b_col + h] + p.b_bias[h]));
}

// grid (H, B), blockDim = K rounded up to a warp.
template <typename T>
__global__ void MixerInputsDecodeKernel(MixerInputsDecodeParams p) {
  __shared__ float scratch[32];
  const int h = blockIdx.x;
  const int b = blockIdx.y;
  const int K = p.head_dim;
  const int W = p.conv_size;
  const int j = threadIdx.x;
  const bool owner = j < K;
  const int64_t dk = static_cast<int64_t>(p.num_heads) * K;
  const int64_t c = static_cast<int64_t>(h) * K + j;
  const float* pr = p.proj + b * p.ld_proj;
  const int64_t out_index = b * dk + c;
  // The conv taps and conv states are not written by the kernel before this one (the in_proj
  // product): ask L1 for them while it finishes (dependent_launch.h), so that the conv below
  // waits only for the projections.
  if (owner) {
    PrefetchL1(p.q_conv + c * W);
    PrefetchL1(p.k_conv + c * W);
    const float* q_state = p.conv_q_state[b];
    const float* k_state = p.conv_k_state[b];
    for (int i = 0; i + 1 < W && q_state != nullptr && k_state != nullptr; ++i) {
      PrefetchL1(q_state + i * dk + c);
      PrefetchL1(k_state + i * dk + c);
    }
  }
  WaitForPriorKernels();
  StartNextKernel();

  float qc = 0.0f, kc = 0.0f;
  if (owner) {
    qc = ConvStep<T>(RoundTo<T>(pr[p.q_col + c]), p.q_conv + c * W, W, p.conv_q_state[b], dk, c);
    kc = ConvStep<T>(RoundTo<T>(pr[p.k_col + c]), p.k_conv + c * W, W, p.conv_k_state[b], dk, c);
    static_cast<T*>(p.v)[out_index] = FromFloat<T>(pr[p.v_col + c]);
    if (p.g_col >= 0) static_cast<T*>(p.z)[out_index] = FromFloat<T>(pr[p.g_col + c]);
  }
  // L2NormHeads: x / sqrt(|x|^2 + 1e-6), rounded to T (decode keeps the model dtype).
  const float ss_q = BlockSum(qc * qc, scratch);
  const float ss_k = BlockSum(kc * kc, scratch);
  if (owner) {
    const float inv_q = 1.0f / sqrtf(ss_q + 1e-6f);
    const float inv_k = 1.0f / sqrtf(ss_k + 1e-6f);
    static_cast<T*>(p.q)[out_index] = FromFloat<T>(qc * inv_q);
    static_cast<T*>(p.k)[out_index] = FromFloat<T>(kc * inv_k);
  }
  if (j == 0) MesaGates<T>(p, pr, h, static_cast<int64_t>(b) * p.num_heads + h);
}

// Position `pos` of a channel's conv window: the old state (W-1 rows, oldest first) followed
// by this call's inputs rounded to T (as the CPU's InputProjections stores them).
template <typename T>
__device__ __forceinline__ float WindowAt(int pos, int W, const float* state, const float* proj,
                                          int64_t ld_proj, int64_t col, int64_t dk, int64_t c) {
  return pos < W - 1 ? state[static_cast<int64_t>(pos) * dk + c]
                     : RoundTo<T>(proj[static_cast<int64_t>(pos - (W - 1)) * ld_proj + col + c]);
}

// One warp per (token, head), 8 per block: lane l takes channels l, l + 32, ... of the head, so
// the l2 norms are warp sums (no barriers; a block per (head, token) needed four). Tap order as
// kernels/cpu/short_conv.cc. The conv window of row t is its sequence's: the old conv state,
// then the sequence's own rows. kPer = channels per lane (head_dim / 32 rounded up, a power of
// two), a compile-time bound so the per-lane values stay in registers (one kernel sized for
// 1024-wide heads kept them in a 256-byte stack frame: 123 us per 1.3B layer of 2048 tokens).
constexpr int kPrefillWarps = 8;

template <typename T, int kPer>
__global__ void __launch_bounds__(32 * kPrefillWarps) MixerInputsPrefillKernel(MixerInputsPrefillParams p) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kPrefillWarps + (threadIdx.x >> 5);
  if (row >= static_cast<int64_t>(p.seqs.rows()) * p.num_heads) return;
  const int t = static_cast<int>(row / p.num_heads), h = static_cast<int>(row % p.num_heads);
  const int seq = p.seqs.SeqOfRow(t);
  const int local = t - p.seqs.start[seq];  // position in the sequence's window (after W-1)
  const float* seq_proj = p.proj + static_cast<int64_t>(p.seqs.start[seq]) * p.ld_proj;
  const float* q_state = p.conv_q_state[seq];
  const float* k_state = p.conv_k_state[seq];
  const int K = p.head_dim;
  const int W = p.conv_size;
  const int64_t dk = static_cast<int64_t>(p.num_heads) * K;
  const float* pr = p.proj + static_cast<int64_t>(t) * p.ld_proj;
  float ss_q = 0.0f, ss_k = 0.0f;
  float qv[kPer], kv[kPer];
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int j = lane + 32 * i;
    qv[i] = kv[i] = 0.0f;
    if (j >= K) continue;
    const int64_t c = static_cast<int64_t>(h) * K + j;
    float aq = 0.0f, ak = 0.0f;
    for (int w = 0; w < W; ++w) {
      aq = fmaf(p.q_conv[c * W + w], WindowAt<T>(local + w, W, q_state, seq_proj, p.ld_proj, p.q_col, dk, c), aq);
      ak = fmaf(p.k_conv[c * W + w], WindowAt<T>(local + w, W, k_state, seq_proj, p.ld_proj, p.k_col, dk, c), ak);
    }
    qv[i] = RoundTo<T>(Silu(aq));
    kv[i] = RoundTo<T>(Silu(ak));
    ss_q = fmaf(qv[i], qv[i], ss_q);
    ss_k = fmaf(kv[i], kv[i], ss_k);
    const int64_t out_index = static_cast<int64_t>(t) * dk + c;
    p.v[out_index] = RoundTo<T>(pr[p.v_col + c]);
    if (p.g_col >= 0) static_cast<T*>(p.z)[out_index] = FromFloat<T>(pr[p.g_col + c]);
  }
  // L2NormHeads with fp16 rounding (fla's chunk path writes the normalised q and k as fp16).
  ss_q = WarpSum(ss_q);
  ss_k = WarpSum(ss_k);
  const float inv_q = 1.0f / sqrtf(ss_q + 1e-6f), inv_k = 1.0f / sqrtf(ss_k + 1e-6f);
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int j = lane + 32 * i;
    if (j >= K) continue;
    const int64_t out_index = static_cast<int64_t>(t) * dk + static_cast<int64_t>(h) * K + j;
    p.q[out_index] = RoundTo<__half>(qv[i] * inv_q);
    p.k[out_index] = RoundTo<__half>(kv[i] * inv_k);
  }
  if (lane == 0) MesaGates<T>(p, pr, h, static_cast<int64_t>(t) * p.num_heads + h);
}

// One thread per channel and sequence (grid.y): state[i] = window[len + i] for i < W-1, in
// increasing i (a read of the old state is always ahead of the writes).
template <typename T>
__global__ void ConvStatePrefillKernel(MixerInputsPrefillParams p) {
  const int64_t dk = static_cast<int64_t>(p.num_heads) * p.head_dim;
  const int W = p.conv_size;
  const int seq = blockIdx.y;
  float* q_state = p.conv_q_state[seq];
  float* k_state = p.conv_k_state[seq];
  const float* seq_proj = p.proj + static_cast<int64_t>(p.seqs.start[seq]) * p.ld_proj;
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < dk;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    for (int i = 0; i + 1 < W; ++i) {
      const int pos = p.seqs.length(seq) + i;
      q_state[i * dk + c] = WindowAt<T>(pos, W, q_state, seq_proj, p.ld_proj, p.q_col, dk, c);
      k_state[i * dk + c] = WindowAt<T>(pos, W, k_state, seq_proj, p.ld_proj, p.k_col, dk, c);
    }
  }
}

absl::Status CheckPrefill(const MixerInputsPrefillParams& p) {
  if (p.head_dim < 1 || p.head_dim > 1024 || p.conv_size < 1 || p.conv_size > kMaxConv ||
      p.seqs.count < 0 || p.seqs.count > kMaxPackedSeqs || p.num_heads < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "MixerInputsPrefill: head_dim ", p.head_dim, " (1..1024), conv_size ", p.conv_size,
        " (1..", kMaxConv, "), sequences ", p.seqs.count, " (0..", kMaxPackedSeqs,
        ") or num_heads ", p.num_heads, " out of range"));
  }
  for (int s = 0; s < p.seqs.count; ++s) {
    if (p.seqs.length(s) < 1) {
      return absl::InvalidArgumentError(absl::StrCat("MixerInputsPrefill: sequence ", s, " has ",
                                                     p.seqs.length(s), " tokens (at least 1)"));
    }
    if (p.conv_size > 1 && (p.conv_q_state[s] == nullptr || p.conv_k_state[s] == nullptr)) {
      return absl::InvalidArgumentError(
          absl::StrCat("MixerInputsPrefill: sequence ", s, " has a null conv state"));
    }
  }
  if (p.g_col >= 0 && p.z == nullptr) {
    return absl::InvalidArgumentError("MixerInputsPrefill: g_col is set but z is null");
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status MixerInputsPrefill(const MixerInputsPrefillParams& p) {
  MESA_RETURN_IF_ERROR(CheckPrefill(p));
  if (p.seqs.count == 0 || p.num_heads == 0) return absl::OkStatus();
  return DispatchActType(p.act, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int64_t rows = static_cast<int64_t>(p.seqs.rows()) * p.num_heads;
    const unsigned blocks = static_cast<unsigned>((rows + kPrefillWarps - 1) / kPrefillWarps);
    DispatchChannelsPerLane(p.head_dim, [&](auto per) {  // head_dim <= 1024 (CheckPrefill)
      MixerInputsPrefillKernel<T, decltype(per)::value><<<blocks, 32 * kPrefillWarps, 0, p.stream>>>(p);
    });
    MESA_CUDA_RETURN_IF_LAUNCH_FAILED("MixerInputsPrefillKernel");
    return absl::OkStatus();
  });
}

absl::Status ConvStatePrefillUpdate(const MixerInputsPrefillParams& p) {
  MESA_RETURN_IF_ERROR(CheckPrefill(p));
  if (p.seqs.count == 0 || p.num_heads == 0 || p.conv_size == 1) return absl::OkStatus();
  return DispatchActType(p.act, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int64_t dk = static_cast<int64_t>(p.num_heads) * p.head_dim;
    const dim3 grid(static_cast<unsigned>((dk + 255) / 256), static_cast<unsigned>(p.seqs.count));
    ConvStatePrefillKernel<T><<<grid, 256, 0, p.stream>>>(p);
    MESA_CUDA_RETURN_IF_LAUNCH_FAILED("ConvStatePrefillKernel");
    return absl::OkStatus();
  });
}

absl::Status MixerInputsDecode(const MixerInputsDecodeParams& p) {
  if (p.head_dim < 1 || p.head_dim > 1024 || p.conv_size < 1 || p.conv_size > kMaxConv ||
      p.batch < 0 || p.batch > 65535 || p.num_heads < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "MixerInputsDecode: head_dim ", p.head_dim, " (1..1024), conv_size ", p.conv_size,
        " (1..", kMaxConv, "), batch ", p.batch, " (<= 65535) or num_heads ", p.num_heads,
        " out of range"));
  }
  if (p.batch == 0 || p.num_heads == 0) return absl::OkStatus();
  if (p.g_col >= 0 && p.z == nullptr) {
    return absl::InvalidArgumentError("MixerInputsDecode: g_col is set but z is null");
  }
  if (p.conv_q_state == nullptr || p.conv_k_state == nullptr) {
    return absl::InvalidArgumentError("MixerInputsDecode: conv state tables are null");
  }
  return DispatchActType(p.act, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const dim3 grid(p.num_heads, p.batch);
    return LaunchKernel("MixerInputsDecodeKernel", MixerInputsDecodeKernel<T>, grid,
                        RoundUpToWarp(p.head_dim), 0, p.stream, p);
  });
}

}  // namespace mesa::gpu
