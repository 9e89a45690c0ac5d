#include "tests/gpu_model/reference_decoder.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/mesa_decode.h"
#include "kernels/cpu/mixer_inputs.h"
#include "kernels/cpu/norm.h"
#include "kernels/cpu/short_conv.h"

namespace mesa::testing {

ReferenceDecoder::ReferenceDecoder(MesaWeights weights, int32_t num_slots, bool perturb_gemm_order)
    : w_(std::move(weights)), perturb_(perturb_gemm_order) {
  const MesaConfig& c = w_.config;
  const int64_t kk = static_cast<int64_t>(c.num_heads) * c.head_dim * c.head_dim;
  const int64_t conv = static_cast<int64_t>(c.conv_size - 1) * c.key_dim();
  h_kv_ = kk;
  conv_q_ = 2 * kk;
  conv_k_ = 2 * kk + conv;
  stride_ = 2 * kk + 2 * conv;
  slot_floats_ = stride_ * c.num_hidden_layers;
  states_.assign(static_cast<size_t>(slot_floats_) * num_slots, 0.0f);
}

absl::Span<const float> ReferenceDecoder::SlotState(SlotId slot) const {
  return absl::MakeConstSpan(states_).subspan(static_cast<size_t>(slot) * slot_floats_,
                                              slot_floats_);
}

float ReferenceDecoder::Round(float x) const { return ApplyRounding(x, RoundingFor(w_.config.dtype)); }

void ReferenceDecoder::Gemm(float* y, const float* x, int64_t n, const WeightMatrix& w) {
  if (!perturb_) {
    cpu::MatMulRowInvariant(y, x, n, w.data(), w.type, w.rows, w.cols);
    return;
  }
  // The exact sum, moved by a random relative error of the size another fp32 summation order
  // typically has (random-sign terms: about sqrt(k) roundings of 2^-24 each).
  const double spread = std::sqrt(static_cast<double>(w.cols)) * 0x1p-24;
  std::uniform_real_distribution<double> unit(-1.0, 1.0);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t r = 0; r < w.rows; ++r) {
      double acc = 0.0;
      for (int64_t c = 0; c < w.cols; ++c) acc += static_cast<double>(x[i * w.cols + c]) * w.at(r, c);
      y[i * w.rows + r] = static_cast<float>(acc * (1.0 + spread * unit(rng_)));
    }
  }
}

// Line for line the CPU runner's Decode, InputProjections, FinishLayer and Logits.
void ReferenceDecoder::Decode(absl::Span<const DecodeRow> rows, DecodeResult* result) {
  const MesaConfig& c = w_.config;
  const Rounding act = RoundingFor(c.dtype);
  const InProjLayout ip = InProjLayout::For(c);
  const int64_t b = static_cast<int64_t>(rows.size());
  const int64_t d = c.hidden_size, dk = c.key_dim(), prow = ip.rows, inter = c.intermediate_size;
  const int64_t vocab = c.vocab_size;
  const int32_t H = c.num_heads, K = c.head_dim, W = c.conv_size;
  std::vector<float> x(b * d), u(b * d), proj(b * prow), q(b * dk), k(b * dk), v(b * dk),
      mix(b * dk), gate(b * dk), mlp(b * 2 * inter), act_buf(b * inter), log_decay(b * H),
      beta(b * H), residual(b * H), pad_conv((W - 1) * dk);
  std::vector<int32_t> iters(b * H);
  std::vector<float*> h_kk(b), h_kv(b);
  std::vector<CgControl> cg(b);
  for (int64_t i = 0; i < b; ++i) {
    const int32_t token = rows[i].slot == kPadSlot ? 0 : rows[i].token;
    for (int64_t j = 0; j < d; ++j) x[i * d + j] = w_.embeddings.at(token, j);
    cg[i] = rows[i].cg;
  }
  result->stats.Resize(static_cast<int32_t>(b), c.num_hidden_layers, H);
  for (int layer = 0; layer < c.num_hidden_layers; ++layer) {
    const MesaLayerWeights& l = w_.layers[layer];
    cpu::RmsNorm(u.data(), x.data(), l.attn_norm.data(), b, d, c.norm_eps, act);
    Gemm(proj.data(), u.data(), b, l.in_proj);
    for (int64_t i = 0; i < b; ++i) {
      for (int64_t j = 0; j < prow; ++j) {
        float bias = 0.0f;
        if (j >= ip.a && j < ip.a + H) bias = l.a_bias[j - ip.a];
        if (j >= ip.b) bias = l.b_bias[j - ip.b];
        proj[i * prow + j] = Round(proj[i * prow + j] + bias);
      }
    }
    for (int64_t i = 0; i < b; ++i) {
      const bool pad = rows[i].slot == kPadSlot;
      float* state = pad ? nullptr : states_.data() + rows[i].slot * slot_floats_ + layer * stride_;
      if (pad) std::fill(pad_conv.begin(), pad_conv.end(), 0.0f);
      cpu::ShortConvSilu(&q[i * dk], dk, &proj[i * prow + ip.q], prow, 1, dk, l.q_conv.data(), W,
                         pad ? pad_conv.data() : state + conv_q_, act);
      if (pad) std::fill(pad_conv.begin(), pad_conv.end(), 0.0f);
      cpu::ShortConvSilu(&k[i * dk], dk, &proj[i * prow + ip.k], prow, 1, dk, l.k_conv.data(), W,
                         pad ? pad_conv.data() : state + conv_k_, act);
      h_kk[i] = pad ? nullptr : state;
      h_kv[i] = pad ? nullptr : state + h_kv_;
      std::memcpy(&v[i * dk], &proj[i * prow + ip.v], dk * sizeof(float));
    }
    cpu::L2NormHeads(q.data(), b, H, K, dk, act);
    cpu::L2NormHeads(k.data(), b, H, K, dk, act);
    cpu::MesaGates(log_decay.data(), beta.data(), proj.data() + ip.a, proj.data() + ip.b, b, H, prow);
    cpu::MesaDecodeParams p;
    p.batch = static_cast<int32_t>(b);
    p.num_heads = H;
    p.head_dim = K;
    p.h_kk = h_kk.data();
    p.h_kv = h_kv.data();
    p.q = q.data();
    p.k = k.data();
    p.v = v.data();
    p.log_decay = log_decay.data();
    p.beta = beta.data();
    p.lambda = l.lambda.data();
    p.cg = cg.data();
    p.out = mix.data();
    p.out_rounding = act;
    p.cg_iters = iters.data();
    p.cg_residual = residual.data();
    cpu::MesaDecodeStep(p);
    for (int64_t i = 0; i < b; ++i) {
      for (int h = 0; h < H; ++h) {
        const int64_t idx = result->stats.index(static_cast<int32_t>(i), layer, h);
        result->stats.iters[idx] = iters[i * H + h];
        result->stats.residual[idx] = residual[i * H + h];
      }
    }
    // FinishLayer.
    const float* z = nullptr;
    if (c.use_output_gate) {
      for (int64_t i = 0; i < b; ++i) {
        std::memcpy(&gate[i * dk], &proj[i * prow + ip.g], dk * sizeof(float));
      }
      z = gate.data();
    }
    cpu::HeadRmsNorm(mix.data(), mix.data(), z, l.o_norm.data(), b, H, K, c.norm_eps, act);
    Gemm(u.data(), mix.data(), b, l.o_proj);
    for (int64_t i = 0; i < b * d; ++i) u[i] = Round(u[i]);
    if (c.fuse_norm) {
      cpu::FusedAddRmsNorm(u.data(), x.data(), u.data(), x.data(), l.mlp_norm.data(), b, d,
                           c.norm_eps, act);
    } else {
      for (int64_t i = 0; i < b * d; ++i) x[i] = Round(x[i] + u[i]);
      cpu::RmsNorm(u.data(), x.data(), l.mlp_norm.data(), b, d, c.norm_eps, act);
    }
    Gemm(mlp.data(), u.data(), b, l.gate_up);
    for (int64_t i = 0; i < b; ++i) {
      const float* g = &mlp[i * 2 * inter];
      const float* up = g + inter;
      for (int64_t j = 0; j < inter; ++j) {
        act_buf[i * inter + j] = Round(cpu::Silu(Round(g[j])) * Round(up[j]));
      }
    }
    Gemm(u.data(), act_buf.data(), b, l.down);
    for (int64_t i = 0; i < b * d; ++i) x[i] = Round(x[i] + Round(u[i]));
  }
  // Logits of every row (the CPU runner skips pad rows; row-invariant GEMMs make that moot),
  // then pad rows zeroed.
  cpu::RmsNorm(u.data(), x.data(), w_.final_norm.data(), b, d, c.norm_eps, act);
  result->logits.assign(b * vocab, 0.0f);
  Gemm(result->logits.data(), u.data(), b, w_.output_matrix());
  for (int64_t i = 0; i < b; ++i) {
    for (int64_t j = 0; j < vocab; ++j) {
      float& y = result->logits[i * vocab + j];
      y = rows[i].slot == kPadSlot ? 0.0f : Round(y);
    }
  }
}

}  // namespace mesa::testing
