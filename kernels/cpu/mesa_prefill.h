// Chunkwise-parallel MesaNet prefill of one sequence for one layer (spec section 4): the
// call's tokens are cut into chunks of 64 from the call's first token (as fla does for a
// multi-token call on an existing cache); the CG solves of all tokens of a chunk run together (block-parallel form of the paper), against
// the chunk-start state plus the intra-chunk contributions. Starts from, and leaves, the
// fp32 state in h_kk / h_kv, so a prefill can continue an existing sequence.
//
// Fixed CG mode reproduces fla's chunk kernel, including its fp16 rounding points (chunk-start
// state snapshots, intra-chunk scores, operands of the state update); adaptive mode computes
// in fp32 from the Jacobi guess and stops each token and head on its own.
#pragma once

#include <cstdint>

#include "base/half.h"
#include "kernels/cg_control.h"

namespace mesa::cpu {

inline constexpr int32_t kPrefillChunk = 64;

struct MesaPrefillParams {
  int32_t seq_len = 0;     // T tokens in this call
  int32_t num_heads = 0;   // H
  int32_t head_dim = 0;    // K (= V)
  float* h_kk = nullptr;   // [H, K, K] fp32, read and updated
  float* h_kv = nullptr;   // [H, K, V] fp32, read and updated
  const float* q = nullptr;  // [T, ld_in] l2-normalised (fp16 values as fla), head h at h*K
  const float* k = nullptr;  // [T, ld_in] l2-normalised
  const float* v = nullptr;  // [T, ld_in] model-dtype values
  int64_t ld_in = 0;
  const float* log_decay = nullptr;  // [T, H]
  const float* beta = nullptr;       // [T, H]
  const float* lambda = nullptr;     // [H*K]
  CgControl cg;
  // The model dtype (v's dtype in fla): readout scores, the H_kv update operand and the
  // output are rounded to it. The H_kv chunk snapshot is bf16 whatever the model dtype.
  Rounding value_rounding = Rounding::kBf16;
  float* out = nullptr;              // [T, ld_out], rounded to the model dtype
  int64_t ld_out = 0;
  int32_t* cg_iters = nullptr;       // [T, H] optional
  float* cg_residual = nullptr;      // [T, H] optional
};

void MesaPrefill(const MesaPrefillParams& p);

}  // namespace mesa::cpu
