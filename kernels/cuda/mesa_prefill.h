// The chunked MesaNet prefill of one sequence for one layer on the GPU: the twin of
// kernels/cpu/mesa_prefill.h (spec section 4), with the same parameter semantics and the same
// rounding points in fixed (fla-compatible) mode. Starts from, and leaves, the fp32 states.
//
// Two passes: a state pass (one block per head and 32-column slab of the states walks the
// chunks in order, storing each chunk's start state and advancing the state), then the CG and
// readout of every (chunk, head) in parallel from those snapshots, each block's chunk in shared
// memory and its CG vectors in registers. Every chunk product runs on tensor cores (tf32 mma
// with fp32 accumulation): exact products of fla's rounded operands in fixed mode, a 3xTF32
// split (about fp32 accuracy) in adaptive mode and for fp32 models. See mesa_prefill.cu.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "base/half.h"
#include "kernels/cg_control.h"

namespace mesa::gpu {

inline constexpr int32_t kPrefillChunk = 64;

// All pointers are device pointers; the float inputs hold the values fla computes with
// (q, k as fp16 values after the l2 norm, v as model-dtype values).
struct MesaPrefillParams {
  int32_t seq_len = 0;    // T tokens in this call
  int32_t num_heads = 0;  // H
  int32_t head_dim = 0;   // K (= V), 1..128
  float* h_kk = nullptr;  // [H, K, K] fp32, read and updated
  float* h_kv = nullptr;  // [H, K, V] fp32, read and updated
  const float* q = nullptr;  // [T, ld_in], head h at column h*K
  const float* k = nullptr;
  const float* v = nullptr;
  int64_t ld_in = 0;
  const float* log_decay = nullptr;  // [T, H]
  const float* beta = nullptr;       // [T, H]
  const float* lambda = nullptr;     // [H*K]
  CgControl cg;                      // the same for every token of the call
  Rounding value_rounding = Rounding::kBf16;  // the model dtype (v's dtype in fla)
  float* out = nullptr;              // [T, ld_out], rounded to the model dtype
  int64_t ld_out = 0;
  int32_t* cg_iters = nullptr;       // [T, H] optional
  float* cg_residual = nullptr;      // [T, H] optional
  int32_t max_seq_len = 0;           // the longest seq_len the workspace was sized for
  void* workspace = nullptr;         // MesaPrefillWorkspaceBytes(num_heads, head_dim, max_seq_len)
  cudaStream_t stream = nullptr;
};

// Device workspace for calls of up to max_seq_len tokens: every (chunk, head)'s start states,
// fp32 H_kk and H_kv (2 K^2 floats each).
size_t MesaPrefillWorkspaceBytes(int32_t num_heads, int32_t head_dim, int32_t max_seq_len);

// Enqueues the prefill on p.stream. kInvalidArgument for shapes it does not take.
absl::Status MesaPrefill(const MesaPrefillParams& p);

}  // namespace mesa::gpu
