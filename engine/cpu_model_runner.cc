#include "engine/cpu_model_runner.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "base/half.h"
#include "base/status_macros.h"
#include "engine/runner_checks.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/mesa_decode.h"
#include "kernels/cpu/mesa_prefill.h"
#include "kernels/cpu/mixer_inputs.h"
#include "kernels/cpu/norm.h"
#include "kernels/cpu/short_conv.h"

namespace mesa {
namespace {

// Offsets (in floats) of one layer's state inside a slot.
struct LayerStateLayout {
  int64_t h_kk = 0, h_kv = 0, conv_q = 0, conv_k = 0, stride = 0;
};

class CpuModelRunner final : public ModelRunner {
 public:
  CpuModelRunner(MesaWeights weights, const CpuRunnerOptions& options)
      : w_(std::move(weights)),
        c_(w_.config),
        options_(options),
        inproj_(InProjLayout::For(c_)),
        act_(RoundingFor(c_.dtype)) {
    const int64_t kk = static_cast<int64_t>(c_.num_heads) * c_.head_dim * c_.head_dim;
    const int64_t conv = static_cast<int64_t>(c_.conv_size - 1) * c_.key_dim();
    layer_.h_kk = 0;
    layer_.h_kv = kk;
    layer_.conv_q = 2 * kk;
    layer_.conv_k = 2 * kk + conv;
    layer_.stride = 2 * kk + 2 * conv;
    slot_floats_ = layer_.stride * c_.num_hidden_layers;
    states_.assign(static_cast<size_t>(slot_floats_) * options_.num_slots, 0.0f);
    positions_.assign(options_.num_slots, 0);
  }

  const MesaConfig& config() const override { return c_; }
  const char* backend_name() const override { return "cpu"; }
  int32_t num_slots() const override { return options_.num_slots; }
  size_t state_bytes_per_slot() const override { return slot_floats_ * sizeof(float); }
  size_t weight_bytes() const override { return w_.bytes(); }

  absl::Status ResetSlot(SlotId slot) override {
    MESA_RETURN_IF_ERROR(CheckSlot(slot));
    std::fill_n(SlotBase(slot), slot_floats_, 0.0f);
    positions_[slot] = 0;
    return absl::OkStatus();
  }

  int64_t SlotPosition(SlotId slot) const override {
    return slot >= 0 && slot < options_.num_slots ? positions_[slot] : -1;
  }

  absl::Status Prefill(absl::Span<const PrefillRequest> requests,
                       absl::Span<PrefillResult> results) override;
  absl::Status Decode(absl::Span<const DecodeRow> rows, DecodeResult* result) override;

 private:
  float* SlotBase(SlotId slot) { return states_.data() + static_cast<int64_t>(slot) * slot_floats_; }
  float* LayerState(SlotId slot, int layer) { return SlotBase(slot) + layer * layer_.stride; }

  absl::Status CheckSlot(SlotId slot) const { return CheckSlotInPool(slot, options_.num_slots); }

  void Embed(const int32_t* tokens, int64_t n, float* x) const {
    const int64_t d = c_.hidden_size;
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < d; ++j) x[i * d + j] = w_.embeddings.at(tokens[i], j);
    }
  }

  // u = attn_norm(x); proj = round(u W_in^T (+ bias for the gates)).
  void InputProjections(const MesaLayerWeights& l, int64_t n) {
    const int64_t d = c_.hidden_size, rows = inproj_.rows;
    cpu::RmsNorm(u_.data(), x_.data(), l.attn_norm.data(), n, d, c_.norm_eps, act_);
    Gemm(proj_.data(), u_.data(), n, l.in_proj);
    for (int64_t i = 0; i < n; ++i) {
      float* pr = proj_.data() + i * rows;
      for (int64_t j = 0; j < rows; ++j) {
        float bias = 0.0f;
        if (j >= inproj_.a && j < inproj_.a + c_.num_heads) bias = l.a_bias[j - inproj_.a];
        if (j >= inproj_.b) bias = l.b_bias[j - inproj_.b];
        pr[j] = Round(pr[j] + bias);
      }
    }
  }

  // Everything after the mixer: o_norm, o_proj, residual + mlp_norm, SwiGLU MLP, residual.
  void FinishLayer(const MesaLayerWeights& l, int64_t n) {
    const int64_t d = c_.hidden_size, dk = c_.key_dim(), inter = c_.intermediate_size;
    const int64_t rows = inproj_.rows;
    // Gate values z are read with the proj row stride; copy them contiguous.
    const float* z = nullptr;
    if (c_.use_output_gate) {
      for (int64_t i = 0; i < n; ++i) {
        std::memcpy(&gate_[i * dk], &proj_[i * rows + inproj_.g], dk * sizeof(float));
      }
      z = gate_.data();
    }
    cpu::HeadRmsNorm(mix_.data(), mix_.data(), z, l.o_norm.data(), n, c_.num_heads, c_.head_dim,
                     c_.norm_eps, act_);
    Gemm(u_.data(), mix_.data(), n, l.o_proj);
    for (int64_t i = 0; i < n * d; ++i) u_[i] = Round(u_[i]);
    // u_ = attention output a; x_ = block input h.
    if (c_.fuse_norm) {
      cpu::FusedAddRmsNorm(u_.data(), x_.data(), u_.data(), x_.data(), l.mlp_norm.data(), n, d,
                           c_.norm_eps, act_);
    } else {
      for (int64_t i = 0; i < n * d; ++i) x_[i] = Round(x_[i] + u_[i]);
      cpu::RmsNorm(u_.data(), x_.data(), l.mlp_norm.data(), n, d, c_.norm_eps, act_);
    }
    Gemm(mlp_.data(), u_.data(), n, l.gate_up);
    for (int64_t i = 0; i < n; ++i) {
      float* g = &mlp_[i * 2 * inter];
      float* up = g + inter;
      for (int64_t j = 0; j < inter; ++j) {
        act_buf_[i * inter + j] = Round(cpu::Silu(Round(g[j])) * Round(up[j]));
      }
    }
    Gemm(u_.data(), act_buf_.data(), n, l.down);
    for (int64_t i = 0; i < n * d; ++i) x_[i] = Round(x_[i] + Round(u_[i]));
  }

  // logits[r] for the rows listed in `rows` of x_.
  void Logits(const std::vector<int64_t>& rows, float* logits) {
    const int64_t d = c_.hidden_size, n = static_cast<int64_t>(rows.size());
    for (int64_t i = 0; i < n; ++i) std::memcpy(&u_[i * d], &x_[rows[i] * d], d * sizeof(float));
    cpu::RmsNorm(u_.data(), u_.data(), w_.final_norm.data(), n, d, c_.norm_eps, act_);
    const WeightMatrix& out = w_.output_matrix();
    Gemm(logits, u_.data(), n, out);
    for (int64_t i = 0; i < n * out.rows; ++i) logits[i] = Round(logits[i]);
  }

  float Round(float x) const { return ApplyRounding(x, act_); }

  // y[n, w.rows] = x[n, w.cols] w^T. Decode steps use the row-invariant kernel so a sequence's
  // logits do not depend on the rest of its batch; prefill uses the faster panel GEMM.
  void Gemm(float* y, const float* x, int64_t n, const WeightMatrix& w) const {
    if (decoding_) {
      cpu::MatMulRowInvariant(y, x, n, w.data(), w.type, w.rows, w.cols);
    } else {
      cpu::MatMul(y, x, n, w.data(), w.type, w.rows, w.cols);
    }
  }

  void EnsureWorkspace(int64_t n) {
    if (n <= workspace_rows_) return;
    const int64_t d = c_.hidden_size, dk = c_.key_dim(), inter = c_.intermediate_size;
    x_.resize(n * d);
    u_.resize(n * d);
    proj_.resize(n * inproj_.rows);
    q_.resize(n * dk);
    k_.resize(n * dk);
    v_.resize(n * dk);
    mix_.resize(n * dk);
    gate_.resize(n * dk);
    mlp_.resize(n * 2 * inter);
    act_buf_.resize(n * inter);
    log_decay_.resize(n * c_.num_heads);
    beta_.resize(n * c_.num_heads);
    iters_.resize(n * c_.num_heads);
    residual_.resize(n * c_.num_heads);
    workspace_rows_ = n;
  }

  absl::Status PrefillSegment(const PrefillRequest& req, absl::Span<const int32_t> tokens,
                              bool last_segment, int64_t row_offset, PrefillResult* result);

  MesaWeights w_;
  const MesaConfig& c_;
  CpuRunnerOptions options_;
  InProjLayout inproj_;
  Rounding act_;  // the model dtype: where fla's model stores an activation
  bool decoding_ = false;  // inside Decode(): see Gemm()
  LayerStateLayout layer_;
  int64_t slot_floats_ = 0;
  std::vector<float> states_;
  std::vector<int64_t> positions_;

  int64_t workspace_rows_ = 0;
  std::vector<float> x_, u_, proj_, q_, k_, v_, mix_, gate_, mlp_, act_buf_, log_decay_, beta_, residual_;
  std::vector<int32_t> iters_;
};

absl::Status CpuModelRunner::PrefillSegment(const PrefillRequest& req,
                                            absl::Span<const int32_t> tokens, bool last_segment,
                                            int64_t row_offset, PrefillResult* result) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t dk = c_.key_dim(), rows = inproj_.rows;
  const int32_t H = c_.num_heads, K = c_.head_dim, W = c_.conv_size;
  EnsureWorkspace(n);
  Embed(tokens.data(), n, x_.data());
  for (int layer = 0; layer < c_.num_hidden_layers; ++layer) {
    const MesaLayerWeights& l = w_.layers[layer];
    float* state = LayerState(req.slot, layer);
    InputProjections(l, n);
    cpu::ShortConvSilu(q_.data(), dk, proj_.data() + inproj_.q, rows, n, dk, l.q_conv.data(), W,
                       state + layer_.conv_q, act_);
    cpu::ShortConvSilu(k_.data(), dk, proj_.data() + inproj_.k, rows, n, dk, l.k_conv.data(), W,
                       state + layer_.conv_k, act_);
    // fla's chunk path writes the normalised q and k as fp16.
    cpu::L2NormHeads(q_.data(), n, H, K, dk, cpu::Rounding::kFp16);
    cpu::L2NormHeads(k_.data(), n, H, K, dk, cpu::Rounding::kFp16);
    cpu::MesaGates(log_decay_.data(), beta_.data(), proj_.data() + inproj_.a,
                   proj_.data() + inproj_.b, n, H, rows);
    cpu::MesaPrefillParams p;
    p.seq_len = static_cast<int32_t>(n);
    p.num_heads = H;
    p.head_dim = K;
    p.h_kk = state + layer_.h_kk;
    p.h_kv = state + layer_.h_kv;
    p.q = q_.data();
    p.k = k_.data();
    for (int64_t i = 0; i < n; ++i) std::memcpy(&v_[i * dk], &proj_[i * rows + inproj_.v], dk * sizeof(float));
    p.v = v_.data();
    p.ld_in = dk;
    p.log_decay = log_decay_.data();
    p.beta = beta_.data();
    p.lambda = l.lambda.data();
    p.cg = req.cg;
    p.value_rounding = act_;
    p.out = mix_.data();
    p.ld_out = dk;
    p.cg_iters = iters_.data();
    p.cg_residual = residual_.data();
    cpu::MesaPrefill(p);
    if (req.want_stats) {
      for (int64_t t = 0; t < n; ++t) {
        for (int h = 0; h < H; ++h) {
          const int64_t idx = result->stats.index(static_cast<int32_t>(row_offset + t), layer, h);
          result->stats.iters[idx] = iters_[t * H + h];
          result->stats.residual[idx] = residual_[t * H + h];
        }
      }
    }
    FinishLayer(l, n);
  }
  positions_[req.slot] += n;
  const int64_t vocab = c_.vocab_size;
  if (req.all_logits) {
    std::vector<int64_t> all(n);
    for (int64_t i = 0; i < n; ++i) all[i] = i;
    Logits(all, result->logits.data() + row_offset * vocab);
  } else if (last_segment) {
    Logits({n - 1}, result->logits.data());
  }
  return absl::OkStatus();
}

absl::Status CpuModelRunner::Prefill(absl::Span<const PrefillRequest> requests,
                                     absl::Span<PrefillResult> results) {
  MESA_RETURN_IF_ERROR(
      CheckPrefillRequests(requests, results.size(), options_.num_slots, c_.vocab_size));
  decoding_ = false;
  for (size_t r = 0; r < requests.size(); ++r) {
    const PrefillRequest& req = requests[r];
    PrefillResult* result = &results[r];
    const int64_t n = static_cast<int64_t>(req.tokens.size());
    SizePrefillResult(req, c_, result);
    // Split long prompts at multiples of the chunk size so the math is unchanged.
    const int64_t seg_max =
        std::max<int64_t>(cpu::kPrefillChunk, options_.max_prefill_segment / cpu::kPrefillChunk *
                                                  cpu::kPrefillChunk);
    int64_t done = 0;
    while (done < n) {
      const int64_t len = std::min(n - done, seg_max);
      MESA_RETURN_IF_ERROR(PrefillSegment(req, req.tokens.subspan(done, len), done + len == n,
                                          done, result));
      done += len;
    }
  }
  return absl::OkStatus();
}

absl::Status CpuModelRunner::Decode(absl::Span<const DecodeRow> rows, DecodeResult* result) {
  const int64_t b = static_cast<int64_t>(rows.size());
  MESA_RETURN_IF_ERROR(CheckDecodeRows(rows, options_.num_slots, c_.vocab_size));
  const int64_t dk = c_.key_dim(), prow = inproj_.rows, vocab = c_.vocab_size;
  const int32_t H = c_.num_heads, K = c_.head_dim, W = c_.conv_size;
  decoding_ = true;
  EnsureWorkspace(b);
  std::vector<int32_t> tokens(b);
  for (int64_t i = 0; i < b; ++i) tokens[i] = rows[i].slot == kPadSlot ? 0 : rows[i].token;
  Embed(tokens.data(), b, x_.data());
  result->stats.Resize(static_cast<int32_t>(b), c_.num_hidden_layers, H);
  std::vector<float*> h_kk(b), h_kv(b);
  std::vector<CgControl> cg(b);
  std::vector<float> pad_conv(static_cast<size_t>(W - 1) * dk);
  for (int64_t i = 0; i < b; ++i) cg[i] = rows[i].cg;

  for (int layer = 0; layer < c_.num_hidden_layers; ++layer) {
    const MesaLayerWeights& l = w_.layers[layer];
    InputProjections(l, b);
    for (int64_t i = 0; i < b; ++i) {
      const bool pad = rows[i].slot == kPadSlot;
      float* state = pad ? nullptr : LayerState(rows[i].slot, layer);
      if (pad) std::fill(pad_conv.begin(), pad_conv.end(), 0.0f);
      cpu::ShortConvSilu(&q_[i * dk], dk, &proj_[i * prow + inproj_.q], prow, 1, dk,
                         l.q_conv.data(), W, pad ? pad_conv.data() : state + layer_.conv_q, act_);
      if (pad) std::fill(pad_conv.begin(), pad_conv.end(), 0.0f);
      cpu::ShortConvSilu(&k_[i * dk], dk, &proj_[i * prow + inproj_.k], prow, 1, dk,
                         l.k_conv.data(), W, pad ? pad_conv.data() : state + layer_.conv_k, act_);
      h_kk[i] = pad ? nullptr : state + layer_.h_kk;
      h_kv[i] = pad ? nullptr : state + layer_.h_kv;
      std::memcpy(&v_[i * dk], &proj_[i * prow + inproj_.v], dk * sizeof(float));
    }
    // fla's one-step decode keeps the normalised q and k in the model dtype.
    cpu::L2NormHeads(q_.data(), b, H, K, dk, act_);
    cpu::L2NormHeads(k_.data(), b, H, K, dk, act_);
    cpu::MesaGates(log_decay_.data(), beta_.data(), proj_.data() + inproj_.a,
                   proj_.data() + inproj_.b, b, H, prow);
    cpu::MesaDecodeParams p;
    p.batch = static_cast<int32_t>(b);
    p.num_heads = H;
    p.head_dim = K;
    p.h_kk = h_kk.data();
    p.h_kv = h_kv.data();
    p.q = q_.data();
    p.k = k_.data();
    p.v = v_.data();
    p.log_decay = log_decay_.data();
    p.beta = beta_.data();
    p.lambda = l.lambda.data();
    p.cg = cg.data();
    p.out = mix_.data();
    p.out_rounding = act_;
    p.cg_iters = iters_.data();
    p.cg_residual = residual_.data();
    cpu::MesaDecodeStep(p);
    for (int64_t i = 0; i < b; ++i) {
      for (int h = 0; h < H; ++h) {
        const int64_t idx = result->stats.index(static_cast<int32_t>(i), layer, h);
        result->stats.iters[idx] = iters_[i * H + h];
        result->stats.residual[idx] = residual_[i * H + h];
      }
    }
    FinishLayer(l, b);
  }
  result->logits.assign(b * vocab, 0.0f);
  std::vector<int64_t> live;
  for (int64_t i = 0; i < b; ++i) {
    if (rows[i].slot != kPadSlot) live.push_back(i);
  }
  std::vector<float> live_logits(live.size() * vocab);
  if (!live.empty()) Logits(live, live_logits.data());
  for (size_t j = 0; j < live.size(); ++j) {
    std::memcpy(&result->logits[live[j] * vocab], &live_logits[j * vocab], vocab * sizeof(float));
    positions_[rows[live[j]].slot] += 1;
  }
  return absl::OkStatus();
}

}  // namespace

size_t CpuStateBytesPerSlot(const MesaConfig& c) {
  const size_t kk = static_cast<size_t>(c.num_heads) * c.head_dim * c.head_dim;
  const size_t conv = static_cast<size_t>(c.conv_size - 1) * c.key_dim();
  return (2 * kk + 2 * conv) * c.num_hidden_layers * sizeof(float);
}

absl::StatusOr<std::unique_ptr<ModelRunner>> CreateCpuModelRunner(MesaWeights weights,
                                                                  const CpuRunnerOptions& options) {
  if (options.num_slots < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_slots must be at least 1, got ", options.num_slots));
  }
  if (options.max_prefill_segment < 1) {
    return absl::InvalidArgumentError(absl::StrCat("max_prefill_segment must be positive, got ",
                                                   options.max_prefill_segment));
  }
  return std::unique_ptr<ModelRunner>(new CpuModelRunner(std::move(weights), options));
}

}  // namespace mesa
