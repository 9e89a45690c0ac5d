// One MesaNet decode step for a batch of sequences (spec 3.6), fp32 state:
//   H_kk = exp(g) H_kk + (beta k) k^T,  H_kv = exp(g) H_kv + (beta k) v^T,
//   x ~= (H_kk + diag(lambda))^-1 q by CG,  o = H_kv^T x.
#pragma once

#include <cstdint>

#include "base/half.h"
#include "kernels/cg_control.h"

namespace mesa::cpu {

struct MesaDecodeParams {
  int32_t batch = 0;       // B
  int32_t num_heads = 0;   // H
  int32_t head_dim = 0;    // K (= V)
  float* const* h_kk = nullptr;  // [B] -> [H, K, K] this layer's state of the row's slot;
                                 // a null entry is a pad row: skipped, its output zeroed
  float* const* h_kv = nullptr;  // [B] -> [H, K, V]
  const float* q = nullptr;  // [B, H*K] l2-normalised, model-dtype values
  const float* k = nullptr;  // [B, H*K] l2-normalised, model-dtype values
  const float* v = nullptr;  // [B, H*V] model-dtype values
  const float* log_decay = nullptr;  // [B, H] g = logsigmoid(a) <= 0
  const float* beta = nullptr;       // [B, H]
  const float* lambda = nullptr;     // [H*K]
  const CgControl* cg = nullptr;     // [B]: per-row (per-request) CG settings
  float* out = nullptr;              // [B, H*V], rounded to the model dtype
  Rounding out_rounding = Rounding::kBf16;
  int32_t* cg_iters = nullptr;       // [B, H] optional: CG steps taken
  float* cg_residual = nullptr;      // [B, H] optional: final |r| / |q|
};

void MesaDecodeStep(const MesaDecodeParams& p);

// Solves (H + diag(lambda)) x = q for one (token, head) with the decode-path CG:
// Jacobi starting guess; fixed mode reproduces fla's iteration exactly. `h` is [K, K] and
// the matrix-vector product is taken column-wise, (Ap)_j = sum_i h[i][j] p_i + lambda_j p_j,
// as fla does. `scratch` holds 3*K floats. Returns the steps taken; *residual = |r|/|q|.
int32_t SolveCgDecode(const float* h, const float* lambda, const float* q, int32_t k,
                      const CgControl& cg, float* x, float* scratch, float* residual);

}  // namespace mesa::cpu
