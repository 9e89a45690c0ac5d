// MesaNet weights in the layout the engine computes with. Matrices are stored in the model's
// compute dtype (bf16, fp16 or fp32; GEMMs accumulate in fp32); small per-channel vectors are
// kept as float holding the values the model computes with. Projections that read the same input are concatenated so one
// GEMM (or one GEMV pass over the input) computes them all.
#pragma once

#include <cstdint>
#include <vector>

#include "base/half.h"
#include "models/mesa_config.h"

namespace mesa {

// Row-major [rows, cols] matrix; y = W x means y[r] = sum_c W[r, c] * x[c]. bf16 and fp16
// elements live in `half` (bit patterns), fp32 elements in `full`.
struct WeightMatrix {
  int64_t rows = 0;
  int64_t cols = 0;
  ScalarType type = ScalarType::kBf16;
  std::vector<uint16_t> half;
  std::vector<float> full;

  const void* data() const {
    return type == ScalarType::kFp32 ? static_cast<const void*>(full.data()) : half.data();
  }
  bool empty() const { return rows == 0; }
  size_t bytes() const { return half.size() * sizeof(uint16_t) + full.size() * sizeof(float); }
  // Element (r, c) as float.
  float at(int64_t r, int64_t c) const {
    const int64_t i = r * cols + c;
    switch (type) {
      case ScalarType::kBf16: return Bf16ToFloat(half[i]);
      case ScalarType::kFp16: return Fp16ToFloat(half[i]);
      case ScalarType::kFp32: return full[i];
    }
    return 0.0f;
  }
};

struct MesaLayerWeights {
  std::vector<float> attn_norm;  // [d]
  // Rows: q [Dk], k [Dk], v [Dk], g [Dk] (only with use_output_gate), a [H], b [H].
  WeightMatrix in_proj;          // [3*Dk (+Dk) + 2*H, d]
  std::vector<float> a_bias;     // [H]
  std::vector<float> b_bias;     // [H]
  std::vector<float> lambda;     // [H*K]: softplus(lambda_params) + lambda_lower_bound, fp32
  std::vector<float> q_conv;     // [Dk, W]: tap W-1 multiplies the current token
  std::vector<float> k_conv;     // [Dk, W]
  std::vector<float> o_norm;     // [K], shared by all heads
  WeightMatrix o_proj;           // [d, Dk]
  std::vector<float> mlp_norm;   // [d]
  WeightMatrix gate_up;          // [2*I, d]: gate rows then up rows
  WeightMatrix down;             // [d, I]
};

// Row offsets inside MesaLayerWeights::in_proj.
struct InProjLayout {
  int64_t q = 0, k = 0, v = 0, g = -1, a = 0, b = 0, rows = 0;
  static InProjLayout For(const MesaConfig& c) {
    InProjLayout l;
    const int64_t dk = c.key_dim();
    l.q = 0;
    l.k = dk;
    l.v = 2 * dk;
    int64_t next = 3 * dk;
    if (c.use_output_gate) {
      l.g = next;
      next += dk;
    }
    l.a = next;
    l.b = next + c.num_heads;
    l.rows = next + 2 * c.num_heads;
    return l;
  }
};

struct MesaWeights {
  MesaConfig config;
  WeightMatrix embeddings;       // [vocab, d]
  std::vector<float> final_norm; // [d]
  WeightMatrix lm_head;          // [vocab, d]; empty when tied (use embeddings)
  std::vector<MesaLayerWeights> layers;

  const WeightMatrix& output_matrix() const {
    return config.tie_word_embeddings ? embeddings : lm_head;
  }
  size_t bytes() const;  // total bytes of weights held
};

}  // namespace mesa
