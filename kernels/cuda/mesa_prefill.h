// The chunked MesaNet prefill of one layer on the GPU for up to kMaxPackedSeqs sequences of
// any lengths in one launch, packed back to back in the rows of q, k, v and out: per sequence
// the twin of kernels/cpu/mesa_prefill.h (spec section 4), with the same parameter semantics
// and the same rounding points in fixed (fla-compatible) mode. Each sequence starts from, and
// leaves, its own fp32 states (its slot's).
//
// Two passes: a state pass (every (chunk, head)'s state increment in parallel, then a scan over
// each sequence's chunks that leaves every chunk's start state in the workspace), then the CG
// and readout of every (chunk, head) of every sequence in parallel from those snapshots, each
// block's chunk in shared memory and its CG vectors in registers. Every chunk product runs on
// tensor cores (tf32 mma with fp32 accumulation): exact products of fla's rounded operands in
// fixed mode, a 3xTF32 split (about fp32 accuracy) in adaptive mode and for fp32 models. See
// mesa_prefill.cu.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "base/half.h"
#include "kernels/cg_control.h"
#include "kernels/cuda/packed_sequences.h"

namespace mesa::gpu {

// All pointers are device pointers; the float inputs hold the values fla computes with
// (q, k as fp16 values after the l2 norm, v as model-dtype values).
struct MesaPrefillParams {
  // The sequences, added with AddSequence: rows, chunks, and per sequence its states and CG.
  PackedSeqs seqs;
  float* h_kk[kMaxPackedSeqs] = {};  // [H, K, K] fp32 of sequence s, read and updated
  float* h_kv[kMaxPackedSeqs] = {};  // [H, K, V] fp32
  CgControl cg[kMaxPackedSeqs];      // per sequence; one mode for the whole call
  int32_t num_heads = 0;  // H
  int32_t head_dim = 0;   // K (= V), 1..128
  const float* q = nullptr;  // [T, ld_in] (T = seqs.rows()), head h at column h*K
  const float* k = nullptr;
  const float* v = nullptr;
  int64_t ld_in = 0;
  const float* log_decay = nullptr;  // [T, H]
  const float* beta = nullptr;       // [T, H]
  const float* lambda = nullptr;     // [H*K]
  Rounding value_rounding = Rounding::kBf16;  // the model dtype (v's dtype in fla)
  float* out = nullptr;              // [T, ld_out], rounded to the model dtype
  int64_t ld_out = 0;
  int32_t* cg_iters = nullptr;       // [T, H] optional
  float* cg_residual = nullptr;      // [T, H] optional
  int32_t workspace_rows = 0;        // what the workspace was sized for (below)
  void* workspace = nullptr;         // MesaPrefillWorkspaceBytes(num_heads, head_dim, workspace_rows)
  cudaStream_t stream = nullptr;

  // Appends a sequence of `len` >= 1 tokens (the next len rows); returns its index, or -1 when
  // kMaxPackedSeqs are already there.
  int32_t AddSequence(int32_t len, float* kk, float* kv, const CgControl& control) {
    const int32_t s = seqs.Add(len);
    if (s >= 0) {
      h_kk[s] = kk;
      h_kv[s] = kv;
      cg[s] = control;
    }
    return s;
  }
};

// The chunks a workspace sized for `rows` holds: a call fits when its sequences together have
// at most that many 64-token chunks (one sequence of `rows` tokens always fits).
int64_t MesaPrefillWorkspaceChunks(int32_t rows);

// Device workspace: every (chunk, head)'s start states, fp32 H_kk and H_kv (2 K^2 floats each),
// and its decay factor.
size_t MesaPrefillWorkspaceBytes(int32_t num_heads, int32_t head_dim, int32_t rows);

// Enqueues the prefill on p.stream. kInvalidArgument for shapes it does not take (naming the
// limit and the value): no sequence, an empty one, mixed CG modes, more chunks than the
// workspace holds.
absl::Status MesaPrefill(const MesaPrefillParams& p);

}  // namespace mesa::gpu
