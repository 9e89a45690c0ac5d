// The CUDA runner's decode steps: one at a time (DecodeAndChoose) or pipelined (StartDecode /
// FinishDecode), each a CUDA graph per bucket, and the layers a step runs.
#include "engine/cuda_runner_impl.h"

namespace mesa::cuda_runner {
namespace {

// A result's logprob arrays for `b` rows: zeroed when some row asked for logprobs, else empty.
void SizeLogprobs(int64_t b, bool any_logprobs, DecodeResult* result) {
  if (any_logprobs) {
    result->logprobs.assign(b, 0.0f);
    result->top_logprobs.assign(b * kMaxDeviceTopLogprobs, TokenLogprob{});
  } else {
    result->logprobs.clear();
    result->top_logprobs.clear();
  }
}

}  // namespace

absl::Status CudaModelRunnerImpl::DecodeAndChoose(absl::Span<const DecodeRow> rows,
                                                   absl::Span<const PlainChoice> choices,
                                                   DecodeResult* result) {
  MESA_RETURN_IF_ERROR(Enter());
  // The shared checks (engine/runner_checks.h), all before any device work.
  MESA_RETURN_IF_ERROR(CheckDecodeRows(rows, options_.num_slots, c_.vocab_size));
  feedable_.clear();  // ws_.chosen gets this step's choices: nothing to feed on any more
  if (!choices.empty() && choices.size() != rows.size()) {
    return absl::InvalidArgumentError(absl::StrCat("Decode: ", choices.size(), " choices for ",
                                                   rows.size(), " rows"));
  }
  const int64_t b = static_cast<int64_t>(rows.size());
  result->stats.Resize(static_cast<int32_t>(b), c_.num_hidden_layers, c_.num_heads);
  // Penalised rows go to the device only if all their seen tokens fit one upload.
  int64_t seen_total = 0;
  bool any_logprobs = false;
  for (const PlainChoice& c : choices) {
    seen_total += static_cast<int64_t>(c.seen.size());
    any_logprobs = any_logprobs || c.top_logprobs > 0;
  }
  const bool penalties_fit = seen_total <= kSeenCapacity;
  // Logits only where the caller samples (model_runner.h): rows it does not read are not filled.
  bool host_rows = choices.empty();
  for (size_t i = 0; i < choices.size() && !host_rows; ++i) {
    host_rows = rows[i].slot != kPadSlot && !DeviceChooses(choices[i], penalties_fit);
  }
  SizeLogprobs(b, any_logprobs, result);
  if (choices.empty()) {
    result->logits.assign(b * static_cast<int64_t>(c_.vocab_size), 0.0f);
    result->tokens.clear();
  } else {
    if (host_rows) {
      result->logits.resize(b * static_cast<int64_t>(c_.vocab_size));  // filled per row below
    } else {
      result->logits.clear();
    }
    result->tokens.assign(b, -1);
  }
  // Rows are independent (distinct slots), so a batch larger than the workspaces is run in
  // pieces with the same result.
  for (int64_t start = 0; start < b; start += max_batch_) {
    const int64_t n = std::min(max_batch_, b - start);
    const absl::Span<const DecodeRow> piece = rows.subspan(start, n);
    const absl::Span<const PlainChoice> piece_choices =
        choices.empty() ? choices : choices.subspan(start, n);
    MESA_RETURN_IF_ERROR(
        NoteFailure(DecodeChunk(piece, piece_choices, penalties_fit, start, result)));
    for (const DecodeRow& row : piece) {
      if (row.slot != kPadSlot) positions_[row.slot] += 1;
    }
  }
  return absl::OkStatus();
}

absl::Status CudaModelRunnerImpl::StartDecode(absl::Span<const DecodeRow> rows,
                                               absl::Span<const PlainChoice> choices) {
  MESA_RETURN_IF_ERROR(Enter());
  const int64_t b = static_cast<int64_t>(rows.size());
  if (b < 1 || b > max_batch_ || choices.size() != rows.size()) {
    return absl::InvalidArgumentError(absl::StrCat("StartDecode: ", b, " rows and ", choices.size(),
                                                   " choices; a started step takes 1 to ",
                                                   max_batch_, " rows, one choice each"));
  }
  if (started_.size() >= 2) {
    return absl::FailedPreconditionError("StartDecode: two started steps are not finished yet");
  }
  MESA_RETURN_IF_ERROR(
      CheckDecodeRows(rows, options_.num_slots, c_.vocab_size, absl::MakeConstSpan(feedable_)));
  bool any_logprobs = false;
  for (int64_t i = 0; i < b; ++i) {
    if (rows[i].slot == kPadSlot) continue;
    if (!ChoosesAhead(choices[i])) {
      return absl::InvalidArgumentError(absl::StrCat(
          "StartDecode: row ", i, "'s token cannot be chosen on the device ahead of the host"));
    }
    any_logprobs = any_logprobs || choices[i].top_logprobs > 0;
  }
  EnqueuedStep step;
  step.any_logprobs = any_logprobs;
  step.buffer = next_buffer_;
  PipelinedBuffer& buffer = pipelined_[step.buffer];
  absl::Status s = [&]() -> absl::Status {
    MESA_RETURN_IF_ERROR(EnqueueDecode(rows, choices, false, buffer.host.data(), ps_, &step));
    MESA_CUDA_RETURN_IF_ERROR(cudaEventRecord(buffer.done, stream_));
    return absl::OkStatus();
  }();
  MESA_RETURN_IF_ERROR(NoteFailure(std::move(s)));
  for (const DecodeRow& row : rows) {
    if (row.slot != kPadSlot) positions_[row.slot] += 1;
  }
  feedable_.assign(b, 0);
  for (int64_t i = 0; i < b; ++i) feedable_[i] = rows[i].slot != kPadSlot;
  next_buffer_ ^= 1;
  started_.push_back(std::move(step));
  return absl::OkStatus();
}

absl::Status CudaModelRunnerImpl::FinishDecode(DecodeResult* result) {
  MESA_RETURN_IF_ERROR(Enter());
  if (started_.empty()) return absl::FailedPreconditionError("FinishDecode: no started step");
  const EnqueuedStep step = std::move(started_.front());
  started_.pop_front();
  const PipelinedBuffer& buffer = pipelined_[step.buffer];
  absl::Status s = [&]() -> absl::Status {
    MESA_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(buffer.done));
    return absl::OkStatus();
  }();
  MESA_RETURN_IF_ERROR(NoteFailure(std::move(s)));
  const int64_t b = static_cast<int64_t>(step.slots.size());
  result->stats.Resize(static_cast<int32_t>(b), c_.num_hidden_layers, c_.num_heads);
  result->logits.clear();
  result->tokens.assign(b, -1);
  SizeLogprobs(b, step.any_logprobs, result);
  CollectDecode(step, buffer.host.data(), ps_, 0, result);
  return absl::OkStatus();
}

absl::Status CudaModelRunnerImpl::StepKernels(int64_t b, const StepArgsLayout& args) {
  const int64_t d = c_.hidden_size, vocab = c_.vocab_size;
  // Decode GEMMs with one algorithm for every bucket when asked (CudaRunnerOptions).
  const GemmAlgoRowsScope pinned(&gemm_algo_rows_, options_.batch_invariant_rows);
  const gpu::DependentLaunchScope dependent(b <= options_.dependent_launch_rows);
  // Rows of a started step may feed on the tokens the step before chose (still in ws_.chosen:
  // this step's choice comes after its last layer).
  MESA_RETURN_IF_ERROR(gpu::Embed(Ws(ws_.x), Wt(wo_.embeddings), Ws<int32_t>(ws_.args + args.tokens),
                                  b, d, vocab, c_.dtype, stream_, Ws<int32_t>(ws_.args + args.feed),
                                  Ws<int32_t>(ws_.chosen)));
  for (int layer = 0; layer < c_.num_hidden_layers; ++layer) {
    MESA_RETURN_IF_ERROR(Layer(layer, b, args));
  }
  // Final norm, lm_head, and fla's rounding of the logits to the model dtype.
  MESA_RETURN_IF_ERROR(gpu::RmsNorm(Ws(ws_.u), Ws(ws_.x), Wt<float>(wo_.final_norm), b, d,
                                    c_.norm_eps, c_.dtype, stream_));
  MESA_RETURN_IF_ERROR(Gemm(Ws(ws_.logits), Ws(ws_.u), b, w_.output_matrix(), wo_.output));
  return gpu::RoundInPlace(Ws<float>(ws_.logits), b * vocab, c_.dtype, stream_);
}

absl::Status CudaModelRunnerImpl::RunStep(int64_t b, const StepArgsLayout& args) {
  if (!options_.cuda_graphs) return StepKernels(b, args);
  StepGraph& g = graphs_[b];
  if (g.exec == nullptr) {
    if (g.eager_steps++ == 0) return StepKernels(b, args);
    MESA_CUDA_RETURN_IF_ERROR(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
    const absl::Status captured = StepKernels(b, args);
    cudaGraph_t graph = nullptr;
    const cudaError_t ended = cudaStreamEndCapture(stream_, &graph);
    if (!captured.ok() || ended != cudaSuccess) {
      if (graph != nullptr) cudaGraphDestroy(graph);
      MESA_RETURN_IF_ERROR(captured);
      MESA_CUDA_RETURN_IF_ERROR(ended);
    }
    const cudaError_t made = cudaGraphInstantiate(&g.exec, graph, 0);
    cudaGraphDestroy(graph);
    if (made != cudaSuccess) g.exec = nullptr;
    MESA_CUDA_RETURN_IF_ERROR(made);
  }
  MESA_CUDA_RETURN_IF_ERROR(cudaGraphLaunch(g.exec, stream_));
  return absl::OkStatus();
}

absl::Status CudaModelRunnerImpl::DecodeChunk(absl::Span<const DecodeRow> rows,
                                              absl::Span<const PlainChoice> choices,
                                              bool penalties_fit, int64_t row0,
                                              DecodeResult* result) {
  if (rows.empty()) return absl::OkStatus();
  EnqueuedStep step;
  MESA_RETURN_IF_ERROR(EnqueueDecode(rows, choices, penalties_fit, host_.data(), hs_, &step));
  // The step's result is needed now (and the host staging buffer is reused by the next step).
  MESA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  CollectDecode(step, host_.data(), hs_, row0, result);
  return absl::OkStatus();
}

absl::Status CudaModelRunnerImpl::EnqueueDecode(absl::Span<const DecodeRow> rows,
                                                absl::Span<const PlainChoice> choices,
                                                bool penalties_fit, char* host,
                                                const HostStaging& hs, EnqueuedStep* step) {
  const int64_t b = static_cast<int64_t>(rows.size());
  const int64_t L = c_.num_hidden_layers, H = c_.num_heads;
  const int64_t vocab = c_.vocab_size;
  // The step runs at its bucket: rows [b, n) are pads.
  const int64_t n = CudaDecodeBucket(b, max_batch_);
  step->n = n;
  step->slots.resize(b);
  for (int64_t i = 0; i < b; ++i) step->slots[i] = rows[i].slot;

  // Stage the step's arguments on the host and upload them in one copy.
  const StepArgsLayout args = StepArgsLayout::For(L, n);
  char* staged = host + hs.args;
  float** tables = reinterpret_cast<float**>(staged + args.tables);
  auto* cg = reinterpret_cast<CgControl*>(staged + args.cg);
  auto* tokens = reinterpret_cast<int32_t*>(staged + args.tokens);
  auto* row_choices = reinterpret_cast<gpu::RowChoice*>(staged + args.choices);
  auto* feed = reinterpret_cast<int32_t*>(staged + args.feed);
  bool any_chosen = false;     // a row whose token the device chooses
  bool any_truncated = false;  // ... with truncation (a second kernel)
  bool any_logprobs = false;   // ... with logprobs to report
  int64_t seen_used = 0;       // seen tokens staged for the penalties
  auto* seen = reinterpret_cast<gpu::SeenEntry*>(host + hs.seen);
  for (int64_t i = 0; i < n; ++i) {
    const bool pad = i >= b || rows[i].slot == kPadSlot;
    tokens[i] = pad || rows[i].feed_row >= 0 ? 0 : rows[i].token;
    feed[i] = pad ? -1 : rows[i].feed_row;
    cg[i] = i < b ? rows[i].cg : CgControl{};
    gpu::RowChoice rc;  // kind 0: not the device's
    if (!pad && !choices.empty() && DeviceChooses(choices[i], penalties_fit)) {
      rc = cuda_runner::RowChoiceFor(choices[i]);
      rc.seen_offset = static_cast<int32_t>(seen_used);
      rc.seen_count = static_cast<int32_t>(choices[i].seen.size());
      for (const SeenToken& s : choices[i].seen) seen[seen_used++] = {s.token, s.count};
      any_logprobs = any_logprobs || rc.top_logprobs > 0;
      any_chosen = true;
      any_truncated = any_truncated || choices[i].kind == PlainChoice::Kind::kTruncated;
    }
    row_choices[i] = rc;
    for (int64_t l = 0; l < L; ++l) {
      float* state = pad ? nullptr : SlotState(rows[i].slot) + l * layer_.stride;
      tables[(l * 4 + 0) * n + i] = pad ? nullptr : state + layer_.h_kk;
      tables[(l * 4 + 1) * n + i] = pad ? nullptr : state + layer_.h_kv;
      tables[(l * 4 + 2) * n + i] = pad ? nullptr : state + layer_.conv_q;
      tables[(l * 4 + 3) * n + i] = pad ? nullptr : state + layer_.conv_k;
    }
  }
  MESA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(Ws(ws_.args), staged, args.bytes,
                                            cudaMemcpyHostToDevice, stream_));
  if (seen_used > 0) {
    MESA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(Ws(ws_.seen), seen, seen_used * sizeof(gpu::SeenEntry),
                                              cudaMemcpyHostToDevice, stream_));
  }

  MESA_RETURN_IF_ERROR(RunStep(n, args));

  // Copy back the logits of the rows the host samples (all of them unless the device chose
  // some: then runs of the others, and the chosen tokens) and the CG statistics.
  auto host_row = [&](int64_t i) { return rows[i].slot != kPadSlot && row_choices[i].kind == 0; };
  if (any_chosen) {
    gpu::SampleRowsParams sp;
    sp.rows = static_cast<int32_t>(b);  // the bucket's pad rows choose nothing
    sp.vocab = static_cast<int32_t>(vocab);
    sp.logits = Ws<float>(ws_.logits);
    sp.choices = Ws<gpu::RowChoice>(ws_.args + args.choices);
    sp.tokens = Ws<int32_t>(ws_.chosen);
    sp.any_truncated = any_truncated;
    sp.seen = Ws<gpu::SeenEntry>(ws_.seen);
    sp.any_penalties = seen_used > 0;
    sp.logprobs = Ws<float>(ws_.logprobs);
    sp.top = Ws<gpu::TopLogprob>(ws_.top);
    sp.any_logprobs = any_logprobs;
    sp.stream = stream_;
    MESA_RETURN_IF_ERROR(gpu::SampleRows(sp));
    MESA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host + hs.chosen, Ws(ws_.chosen),
                                              b * sizeof(int32_t), cudaMemcpyDeviceToHost, stream_));
    if (any_logprobs) {
      MESA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host + hs.logprobs, Ws(ws_.logprobs),
                                                b * sizeof(float), cudaMemcpyDeviceToHost, stream_));
      MESA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(
          host + hs.top, Ws(ws_.top), b * gpu::kMaxTopLogprobs * sizeof(gpu::TopLogprob),
          cudaMemcpyDeviceToHost, stream_));
    }
  }
  for (int64_t i = 0; i < b;) {  // runs of host rows, one copy each
    if (!host_row(i)) {
      ++i;
      continue;
    }
    int64_t end = i + 1;
    while (end < b && host_row(end)) ++end;
    MESA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host + hs.logits + i * vocab * sizeof(float),
                                              Ws<float>(ws_.logits) + i * vocab,
                                              (end - i) * vocab * sizeof(float),
                                              cudaMemcpyDeviceToHost, stream_));
    i = end;
  }
  const size_t stat_count = static_cast<size_t>(L * n * H);  // [L, n, H] on the device
  MESA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host + hs.iters, Ws(ws_.iters),
                                            stat_count * sizeof(int32_t), cudaMemcpyDeviceToHost,
                                            stream_));
  MESA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host + hs.residual, Ws(ws_.residual),
                                            stat_count * sizeof(float), cudaMemcpyDeviceToHost,
                                            stream_));
  return absl::OkStatus();
}

void CudaModelRunnerImpl::CollectDecode(const EnqueuedStep& step, const char* host,
                                        const HostStaging& hs, int64_t row0,
                                        DecodeResult* result) const {
  const int64_t b = static_cast<int64_t>(step.slots.size());
  const int64_t n = step.n;
  const int64_t vocab = c_.vocab_size;
  const StepArgsLayout args = StepArgsLayout::For(c_.num_hidden_layers, n);
  const auto* row_choices = reinterpret_cast<const gpu::RowChoice*>(host + hs.args + args.choices);
  auto host_row = [&](int64_t i) { return step.slots[i] != kPadSlot && row_choices[i].kind == 0; };
  const auto* logits = reinterpret_cast<const float*>(host + hs.logits);
  const auto* chosen = reinterpret_cast<const int32_t*>(host + hs.chosen);
  const auto* logprobs = reinterpret_cast<const float*>(host + hs.logprobs);
  const auto* top = reinterpret_cast<const gpu::TopLogprob*>(host + hs.top);
  for (int64_t i = 0; i < b; ++i) {
    const int64_t r = row0 + i;
    if (host_row(i)) {
      std::memcpy(&result->logits[r * vocab], &logits[i * vocab], vocab * sizeof(float));
    } else if (step.slots[i] == kPadSlot) {
      // Zero logits, as on the CPU (the statistics are zero from the kernel).
      if (!result->logits.empty()) std::fill_n(&result->logits[r * vocab], vocab, 0.0f);
    } else {  // the device chose the token: no logits
      result->tokens[r] = chosen[i];
      if (row_choices[i].top_logprobs > 0) result->logprobs[r] = logprobs[i];
      for (int32_t a = 0; a < row_choices[i].top_logprobs; ++a) {
        const gpu::TopLogprob& t = top[i * gpu::kMaxTopLogprobs + a];
        result->top_logprobs[r * kMaxDeviceTopLogprobs + a] = {t.token, t.logprob};
      }
    }
  }
  if (!result->stats.iters.empty()) CopyStats(host, hs, n, 0, b, row0, &result->stats);
}

// One block: the CPU runner's InputProjections, mixer and FinishLayer on the device.
absl::Status CudaModelRunnerImpl::Layer(int layer, int64_t b, const StepArgsLayout& args) {
  const LayerWeightOffsets& lo = wo_.layers[layer];
  const int64_t H = c_.num_heads;
  const ScalarType act = c_.dtype;
  float* const* tables = Ws<float*>(ws_.args + args.tables) + layer * 4 * b;

  MESA_RETURN_IF_ERROR(LayerHead(layer, b));
  gpu::MixerInputsDecodeParams mi;
  SetMixerInputs(lo, mi);
  mi.batch = static_cast<int32_t>(b);
  mi.conv_q_state = tables + 2 * b;
  mi.conv_k_state = tables + 3 * b;
  mi.q = Ws(ws_.q);
  mi.k = Ws(ws_.k);
  mi.v = Ws(ws_.v);
  MESA_RETURN_IF_ERROR(gpu::MixerInputsDecode(mi));

  gpu::MesaDecodeParams p;
  p.batch = static_cast<int32_t>(b);
  p.num_heads = c_.num_heads;
  p.head_dim = c_.head_dim;
  p.h_kk = tables + 0 * b;
  p.h_kv = tables + 1 * b;
  p.q = Ws(ws_.q);
  p.k = Ws(ws_.k);
  p.v = Ws(ws_.v);
  p.log_decay = Ws<float>(ws_.log_decay);
  p.beta = Ws<float>(ws_.beta);
  p.lambda = Wt<float>(lo.lambda);
  p.cg = Ws<CgControl>(ws_.args + args.cg);
  p.out = Ws(ws_.mix);
  p.act = act;
  p.cg_iters = Ws<int32_t>(ws_.iters) + layer * b * H;
  p.cg_residual = Ws<float>(ws_.residual) + layer * b * H;
  p.stream = stream_;
  MESA_RETURN_IF_ERROR(gpu::MesaDecodeStep(p));

  return LayerTail(layer, b);
}

absl::Status CudaModelRunnerImpl::LayerHead(int layer, int64_t b) {
  const LayerWeightOffsets& lo = wo_.layers[layer];
  MESA_RETURN_IF_ERROR(gpu::RmsNorm(Ws(ws_.u), Ws(ws_.x), Wt<float>(lo.attn_norm), b,
                                    c_.hidden_size, c_.norm_eps, c_.dtype, stream_));
  return Gemm(Ws(ws_.proj), Ws(ws_.u), b, w_.layers[layer].in_proj, lo.in_proj);
}

absl::Status CudaModelRunnerImpl::LayerTail(int layer, int64_t b) {
  const MesaLayerWeights& lw = w_.layers[layer];
  const LayerWeightOffsets& lo = wo_.layers[layer];
  const int64_t d = c_.hidden_size, H = c_.num_heads, K = c_.head_dim;
  const int64_t inter = c_.intermediate_size;
  const ScalarType act = c_.dtype;
  // o_norm (gated by silu(z) with an output gate), o_proj, residual + mlp_norm.
  MESA_RETURN_IF_ERROR(gpu::HeadRmsNorm(Ws(ws_.mix), Ws(ws_.mix),
                                        c_.use_output_gate ? Ws(ws_.z) : nullptr,
                                        Wt<float>(lo.o_norm), b, H, K, c_.norm_eps, act, stream_));
  MESA_RETURN_IF_ERROR(Gemm(Ws(ws_.gemm_out), Ws(ws_.mix), b, lw.o_proj, lo.o_proj));
  if (c_.fuse_norm) {
    MESA_RETURN_IF_ERROR(gpu::FusedAddRmsNorm(Ws(ws_.u), Ws(ws_.x), Ws<float>(ws_.gemm_out),
                                              Ws(ws_.x), Wt<float>(lo.mlp_norm), b, d,
                                              c_.norm_eps, act, stream_));
  } else {
    MESA_RETURN_IF_ERROR(gpu::AddResidual(Ws(ws_.x), Ws<float>(ws_.gemm_out), b * d, act, stream_));
    MESA_RETURN_IF_ERROR(gpu::RmsNorm(Ws(ws_.u), Ws(ws_.x), Wt<float>(lo.mlp_norm), b, d,
                                      c_.norm_eps, act, stream_));
  }
  // SwiGLU MLP and the second residual.
  MESA_RETURN_IF_ERROR(Gemm(Ws(ws_.mlp), Ws(ws_.u), b, lw.gate_up, lo.gate_up));
  MESA_RETURN_IF_ERROR(gpu::SwiGlu(Ws(ws_.swiglu), Ws<float>(ws_.mlp), b, inter, act, stream_));
  if (gpu::GemmRunsGemv(GemmFor(Ws(ws_.gemm_out), Ws(ws_.swiglu), b, lw.down, lo.down))) {
    // The down projection and the residual add in one launch (the same bits as Gemm's Gemv
    // and AddResidual).
    return gpu::GemvAddResidual(Ws(ws_.x), Ws(ws_.swiglu), Wt(lo.down), lw.down.rows, lw.down.cols,
                                act, stream_);
  }
  MESA_RETURN_IF_ERROR(Gemm(Ws(ws_.gemm_out), Ws(ws_.swiglu), b, lw.down, lo.down));
  MESA_RETURN_IF_ERROR(gpu::AddResidual(Ws(ws_.x), Ws<float>(ws_.gemm_out), b * d, act, stream_));
  return absl::OkStatus();
}

}  // namespace mesa::cuda_runner
