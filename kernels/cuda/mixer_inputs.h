// Everything between the in_proj GEMM and the fused decode step, for one decode token per row,
// in one kernel. It is the GPU twin of this sequence in the CPU runner's Decode
// (engine/cpu_model_runner.cc), with the same rounding points:
//   proj = act(proj + bias)                    (InputProjections; bias only on the a/b gates)
//   q, k = ShortConvSilu(proj_q/k, state, t=1)  (kernels/cpu/short_conv.h, rounded to act)
//   q, k = L2NormHeads(q/k, rounding act)       (kernels/cpu/mixer_inputs.h; decode keeps act)
//   log_decay, beta = MesaGates(a, b)           (kernels/cpu/mixer_inputs.h)
//   v = act(proj_v), z = act(proj_g)            (copies of the rounded projections)
// One block per (row, head), one thread per channel of the head.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "base/half.h"
#include "kernels/cuda/packed_sequences.h"

namespace mesa::gpu {

// All pointers are device pointers; "act" arrays hold the model dtype `act`.
struct MixerInputsDecodeParams {
  int32_t batch = 0;      // B
  int32_t num_heads = 0;  // H
  int32_t head_dim = 0;   // K, <= 1024
  int32_t conv_size = 0;  // W, 1..16 (kMaxConvSize)
  const float* proj = nullptr;  // [B, ld_proj] fp32 in_proj GEMM output, bias not yet added
  int64_t ld_proj = 0;
  // Column offsets inside a proj row (models/mesa_weights.h InProjLayout); g < 0: no gate.
  int64_t q_col = 0, k_col = 0, v_col = 0, g_col = -1, a_col = 0, b_col = 0;
  const float* a_bias = nullptr;  // [H]
  const float* b_bias = nullptr;  // [H]
  const float* q_conv = nullptr;  // [H*K, W]: tap W-1 multiplies the current token
  const float* k_conv = nullptr;  // [H*K, W]
  // [B] -> [W-1, H*K] fp32 conv state of the row's slot (previous inputs, oldest first),
  // updated in place. A null entry is a pad row: zeros are used and nothing is written.
  float* const* conv_q_state = nullptr;
  float* const* conv_k_state = nullptr;
  void* q = nullptr;  // act [B, H*K] out: conv + SiLU + l2 norm
  void* k = nullptr;  // act [B, H*K] out
  void* v = nullptr;  // act [B, H*K] out
  void* z = nullptr;  // act [B, H*K] out, only when g_col >= 0 (output gate values)
  float* log_decay = nullptr;  // [B, H] out
  float* beta = nullptr;       // [B, H] out
  ScalarType act = ScalarType::kBf16;
  cudaStream_t stream = nullptr;
};

absl::Status MixerInputsDecode(const MixerInputsDecodeParams& p);

// The same steps for the tokens of one prefill call of up to kMaxPackedSeqs sequences packed
// back to back in the rows (as MesaPrefill takes them), per sequence as the CPU runner's
// PrefillSegment: the conv reads the sequence's conv state for the first W-1 taps (it never
// reaches into the rows of another sequence), q and k are l2-normalised and rounded to fp16
// (fla's chunk path), and the outputs the chunk kernel reads (q, k, v) are fp32 arrays of those
// values. The conv states are NOT updated here (every token reads the old one):
// ConvStatePrefillUpdate does that afterwards.
struct MixerInputsPrefillParams {
  PackedSeqs seqs;        // added with AddSequence; T = seqs.rows()
  int32_t num_heads = 0;  // H
  int32_t head_dim = 0;   // K, <= 1024
  int32_t conv_size = 0;  // W, 1..16
  const float* proj = nullptr;  // [T, ld_proj] fp32 in_proj GEMM output, bias not yet added
  int64_t ld_proj = 0;
  int64_t q_col = 0, k_col = 0, v_col = 0, g_col = -1, a_col = 0, b_col = 0;
  const float* a_bias = nullptr;
  const float* b_bias = nullptr;
  const float* q_conv = nullptr;
  const float* k_conv = nullptr;
  float* conv_q_state[kMaxPackedSeqs] = {};  // [W-1, H*K] of sequence s's slot
  float* conv_k_state[kMaxPackedSeqs] = {};
  float* q = nullptr;  // fp32 [T, H*K] out (fp16 values)
  float* k = nullptr;  // fp32 [T, H*K] out (fp16 values)
  float* v = nullptr;  // fp32 [T, H*K] out (model-dtype values)
  void* z = nullptr;   // act [T, H*K] out, only when g_col >= 0
  float* log_decay = nullptr;  // [T, H] out
  float* beta = nullptr;       // [T, H] out
  ScalarType act = ScalarType::kBf16;
  cudaStream_t stream = nullptr;

  // Appends a sequence of `len` >= 1 tokens (the next len rows) and its conv states; returns
  // its index, or -1 when kMaxPackedSeqs are already there.
  int32_t AddSequence(int32_t len, float* q_state, float* k_state) {
    const int32_t s = seqs.Add(len);
    if (s >= 0) {
      conv_q_state[s] = q_state;
      conv_k_state[s] = k_state;
    }
    return s;
  }
};

absl::Status MixerInputsPrefill(const MixerInputsPrefillParams& p);

// After MixerInputsPrefill: each sequence's conv states become the last W-1 conv inputs of its
// window (old state followed by its rows' rounded projections), as ShortConvSilu leaves them.
absl::Status ConvStatePrefillUpdate(const MixerInputsPrefillParams& p);

}  // namespace mesa::gpu
