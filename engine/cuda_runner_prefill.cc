// The CUDA runner's prefill: requests packed into launches (engine/prefill_packing.h), every
// layer over all of a launch's rows at once, and the first generated tokens chosen on the device.
#include "engine/cuda_runner_impl.h"

namespace mesa::cuda_runner {

absl::Status CudaModelRunnerImpl::Prefill(absl::Span<const PrefillRequest> requests,
                                          absl::Span<PrefillResult> results) {
  MESA_RETURN_IF_ERROR(Enter());
  MESA_RETURN_IF_ERROR(
      CheckPrefillRequests(requests, results.size(), options_.num_slots, c_.vocab_size));
  for (size_t r = 0; r < requests.size(); ++r) {
    SizePrefillResult(requests[r], c_, &results[r], /*logits=*/!ChoosesAfterPrefill(requests[r]));
  }
  for (const PrefillPack& pack :
       PackPrefill(requests, prefill_rows_, gpu::kMaxPackedSeqs, gpu::kPrefillChunk)) {
    MESA_RETURN_IF_ERROR(NoteFailure(PrefillPackStep(requests, pack, results)));
    for (const PrefillPiece& piece : pack) positions_[requests[piece.request].slot] += piece.len;
  }
  return absl::OkStatus();
}

absl::Status CudaModelRunnerImpl::PrefillPackStep(absl::Span<const PrefillRequest> requests,
                                                  const PrefillPack& pack,
                                                  absl::Span<PrefillResult> results) {
  const int64_t L = c_.num_hidden_layers, H = c_.num_heads, d = c_.hidden_size;
  const int64_t dk = c_.key_dim(), vocab = c_.vocab_size;
  const ScalarType act = c_.dtype;
  // The pieces' rows back to back; the staging buffer is free between steps (each step ends
  // with a synchronisation).
  std::vector<int64_t> row0(pack.size());
  int64_t n = 0;
  for (size_t i = 0; i < pack.size(); ++i) {
    const PrefillPiece& piece = pack[i];
    row0[i] = n;
    std::memcpy(host_.data() + n * sizeof(int32_t),
                requests[piece.request].tokens.data() + piece.offset, piece.len * sizeof(int32_t));
    n += piece.len;
  }
  // Logits: every row of a piece that asks for all, else the last row of a request's last
  // piece. Their indices follow the token ids (at ws_rows_), uploaded with them: the final
  // norm gathers those rows to the front of u in one launch, one GEMM makes all their logits.
  auto* logit_index = reinterpret_cast<int32_t*>(host_.data()) + ws_rows_;
  std::vector<int64_t> logit_row(pack.size(), -1);
  int64_t logit_rows = 0;
  for (size_t i = 0; i < pack.size(); ++i) {
    const PrefillPiece& piece = pack[i];
    const PrefillRequest& req = requests[piece.request];
    const int64_t rows = req.all_logits ? piece.len : (piece.last ? 1 : 0);
    if (rows == 0) continue;
    const int64_t first = row0[i] + (req.all_logits ? 0 : piece.len - 1);
    for (int64_t r = 0; r < rows; ++r) logit_index[logit_rows + r] = static_cast<int32_t>(first + r);
    logit_row[i] = logit_rows;
    logit_rows += rows;
  }
  MESA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(Ws(ws_.prefill_tokens), host_.data(),
                                            (ws_rows_ + logit_rows) * sizeof(int32_t),
                                            cudaMemcpyHostToDevice, stream_));
  // Batch invariance covers prefill too: a launch's GEMMs have one row per token of every
  // packed prompt, so without pinning a prompt's states would depend on what it was packed with.
  const GemmAlgoRowsScope pinned(&gemm_algo_rows_,
                                 options_.batch_invariant_rows > 0 ? prefill_rows_ : 0);
  MESA_RETURN_IF_ERROR(gpu::Embed(Ws(ws_.x), Wt(wo_.embeddings), Ws<int32_t>(ws_.prefill_tokens),
                                  n, d, vocab, act, stream_));
  for (int layer = 0; layer < L; ++layer) {
    const LayerWeightOffsets& lo = wo_.layers[layer];
    MESA_RETURN_IF_ERROR(LayerHead(layer, n));
    gpu::MixerInputsPrefillParams mi;
    gpu::MesaPrefillParams p;
    for (const PrefillPiece& piece : pack) {
      const PrefillRequest& req = requests[piece.request];
      float* state = SlotState(req.slot) + layer * layer_.stride;
      const auto len = static_cast<int32_t>(piece.len);
      mi.AddSequence(len, state + layer_.conv_q, state + layer_.conv_k);
      p.AddSequence(len, state + layer_.h_kk, state + layer_.h_kv, req.cg);
    }
    SetMixerInputs(lo, mi);
    mi.q = Ws<float>(ws_.q);
    mi.k = Ws<float>(ws_.k);
    mi.v = Ws<float>(ws_.v);
    MESA_RETURN_IF_ERROR(gpu::MixerInputsPrefill(mi));
    MESA_RETURN_IF_ERROR(gpu::ConvStatePrefillUpdate(mi));

    p.num_heads = c_.num_heads;
    p.head_dim = c_.head_dim;
    p.q = Ws<float>(ws_.q);
    p.k = Ws<float>(ws_.k);
    p.v = Ws<float>(ws_.v);
    p.ld_in = dk;
    p.log_decay = Ws<float>(ws_.log_decay);
    p.beta = Ws<float>(ws_.beta);
    p.lambda = Wt<float>(lo.lambda);
    p.value_rounding = RoundingFor(act);
    p.out = Ws<float>(ws_.mix_f);
    p.ld_out = dk;
    p.cg_iters = Ws<int32_t>(ws_.iters) + layer * n * H;
    p.cg_residual = Ws<float>(ws_.residual) + layer * n * H;
    p.workspace_rows = static_cast<int32_t>(ws_.prefill_max_tokens);
    p.workspace = Ws(ws_.prefill);
    p.stream = stream_;
    MESA_RETURN_IF_ERROR(gpu::MesaPrefill(p));
    MESA_RETURN_IF_ERROR(gpu::ToAct(Ws(ws_.mix), Ws<float>(ws_.mix_f), n * dk, act, stream_));
    MESA_RETURN_IF_ERROR(LayerTail(layer, n));
  }

  // The first generated tokens the device chooses (PrefillRequest::choice).
  std::vector<uint8_t> chosen_here(pack.size(), 0);
  bool want_stats = false;
  bool any_chosen = false, any_host_rows = false, any_truncated = false, any_logprobs = false;
  auto* row_choices = reinterpret_cast<gpu::RowChoice*>(host_.data() + hs_.prefill_choices);
  for (size_t i = 0; i < pack.size(); ++i) {
    const PrefillRequest& req = requests[pack[i].request];
    want_stats = want_stats || req.want_stats;
    if (logit_row[i] < 0) continue;
    const int64_t rows = req.all_logits ? pack[i].len : 1;
    const bool choose = ChoosesAfterPrefill(req);
    for (int64_t r = 0; r < rows; ++r) {
      row_choices[logit_row[i] + r] = choose ? cuda_runner::RowChoiceFor(*req.choice) : gpu::RowChoice{};
    }
    chosen_here[i] = choose;
    any_chosen = any_chosen || choose;
    any_host_rows = any_host_rows || !choose;
    any_truncated = any_truncated || (choose && req.choice->kind == PlainChoice::Kind::kTruncated);
    any_logprobs = any_logprobs || (choose && req.choice->top_logprobs > 0);
  }
  if (logit_rows > 0) {
    MESA_RETURN_IF_ERROR(gpu::RmsNorm(Ws(ws_.u), Ws(ws_.x), Wt<float>(wo_.final_norm), logit_rows, d,
                                      c_.norm_eps, act, stream_,
                                      Ws<int32_t>(ws_.prefill_tokens) + ws_rows_));
    MESA_RETURN_IF_ERROR(
        Gemm(Ws(ws_.logits), Ws(ws_.u), logit_rows, w_.output_matrix(), wo_.output));
    MESA_RETURN_IF_ERROR(gpu::RoundInPlace(Ws<float>(ws_.logits), logit_rows * vocab, act, stream_));
    if (any_chosen) {
      // The first generated tokens, chosen as a decode step's (only their ids come back).
      MESA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(Ws(ws_.prefill_choices), row_choices,
                                                logit_rows * sizeof(gpu::RowChoice),
                                                cudaMemcpyHostToDevice, stream_));
      gpu::SampleRowsParams sp;
      sp.rows = static_cast<int32_t>(logit_rows);
      sp.vocab = static_cast<int32_t>(vocab);
      sp.logits = Ws<float>(ws_.logits);
      sp.choices = Ws<gpu::RowChoice>(ws_.prefill_choices);
      sp.tokens = Ws<int32_t>(ws_.prefill_chosen);
      sp.any_truncated = any_truncated;
      sp.logprobs = Ws<float>(ws_.prefill_logprobs);
      sp.top = Ws<gpu::TopLogprob>(ws_.prefill_top);
      sp.any_logprobs = any_logprobs;
      sp.stream = stream_;
      MESA_RETURN_IF_ERROR(gpu::SampleRows(sp));
      MESA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host_.data() + hs_.chosen, Ws(ws_.prefill_chosen),
                                                logit_rows * sizeof(int32_t),
                                                cudaMemcpyDeviceToHost, stream_));
      if (any_logprobs) {
        MESA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host_.data() + hs_.logprobs,
                                                  Ws(ws_.prefill_logprobs), logit_rows * sizeof(float),
                                                  cudaMemcpyDeviceToHost, stream_));
        MESA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(
            host_.data() + hs_.top, Ws(ws_.prefill_top),
            logit_rows * gpu::kMaxTopLogprobs * sizeof(gpu::TopLogprob), cudaMemcpyDeviceToHost,
            stream_));
      }
    }
    if (any_host_rows) {
      MESA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host_.data() + hs_.logits, Ws(ws_.logits),
                                                logit_rows * vocab * sizeof(float),
                                                cudaMemcpyDeviceToHost, stream_));
    }
  }
  const size_t stat_count = static_cast<size_t>(L * n * H);
  if (want_stats) {
    MESA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host_.data() + hs_.iters, Ws(ws_.iters),
                                              stat_count * sizeof(int32_t),
                                              cudaMemcpyDeviceToHost, stream_));
    MESA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host_.data() + hs_.residual, Ws(ws_.residual),
                                              stat_count * sizeof(float), cudaMemcpyDeviceToHost,
                                              stream_));
  }
  MESA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  const auto* logits = reinterpret_cast<const float*>(host_.data() + hs_.logits);
  const auto* chosen = reinterpret_cast<const int32_t*>(host_.data() + hs_.chosen);
  const auto* logprobs = reinterpret_cast<const float*>(host_.data() + hs_.logprobs);
  const auto* top = reinterpret_cast<const gpu::TopLogprob*>(host_.data() + hs_.top);
  for (size_t i = 0; i < pack.size(); ++i) {
    const PrefillPiece& piece = pack[i];
    const PrefillRequest& req = requests[piece.request];
    PrefillResult* result = &results[piece.request];
    if (chosen_here[i]) {
      const int64_t row = logit_row[i];
      result->token = chosen[row];
      const int32_t n_top = row_choices[row].top_logprobs;
      if (n_top > 0) {
        result->logprob = logprobs[row];
        result->top.resize(n_top);
        for (int32_t a = 0; a < n_top; ++a) {
          const gpu::TopLogprob& t = top[row * gpu::kMaxTopLogprobs + a];
          result->top[a] = {t.token, t.logprob};
        }
      }
    } else if (logit_row[i] >= 0) {
      const int64_t rows = req.all_logits ? piece.len : 1;
      float* dst = result->logits.data() + (req.all_logits ? piece.offset * vocab : 0);
      std::memcpy(dst, logits + logit_row[i] * vocab, rows * vocab * sizeof(float));
    }
    if (req.want_stats) {
      CopyStats(host_.data(), hs_, n, row0[i], piece.len, piece.offset, &result->stats);
    }
  }
  return absl::OkStatus();
}

}  // namespace mesa::cuda_runner
