// The engine's view of a loaded model on one backend: it owns the weights and a fixed pool
// of per-sequence recurrent-state slots, and runs prefill and decode steps on them.
// Not thread-safe: one engine thread owns a runner.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "engine/plain_choice.h"
#include "kernels/cg_control.h"
#include "models/mesa_config.h"

namespace mesa {

using SlotId = int32_t;
inline constexpr SlotId kPadSlot = -1;

// CG telemetry for a set of rows (tokens): iterations and final relative residual for every
// (row, layer, head).
struct CgStats {
  int32_t rows = 0;
  int32_t layers = 0;
  int32_t heads = 0;
  std::vector<int32_t> iters;    // [rows, layers, heads]
  std::vector<float> residual;   // [rows, layers, heads]

  void Resize(int32_t r, int32_t l, int32_t h) {
    rows = r;
    layers = l;
    heads = h;
    iters.assign(static_cast<size_t>(r) * l * h, 0);
    residual.assign(iters.size(), 0.0f);
  }
  int64_t index(int32_t row, int32_t layer, int32_t head) const {
    return (static_cast<int64_t>(row) * layers + layer) * heads + head;
  }
};

struct PrefillRequest {
  SlotId slot = kPadSlot;
  absl::Span<const int32_t> tokens;  // appended to whatever the slot already holds
  CgControl cg;
  bool all_logits = false;           // logits for every token, else only for the last
  bool want_stats = false;
  // The rule for the token after the last one (a request's first generated token): a runner
  // may choose it itself when ChoosesAhead accepts the rule and all_logits is off (then
  // PrefillResult::token >= 0 and no logits come back); otherwise the caller samples it from
  // the logits with this choice's draw.
  std::optional<PlainChoice> choice;
};

struct PrefillResult {
  std::vector<float> logits;  // [tokens or 1, vocab]; empty when the runner chose `token`
  CgStats stats;              // rows = tokens when want_stats
  int32_t token = -1;         // the runner's choice by PrefillRequest::choice, or -1
  float logprob = 0.0f;       // with the choice's top_logprobs > 0: the chosen token's
  std::vector<TokenLogprob> top;  // and the top_logprobs most likely tokens
};

struct DecodeRow {
  SlotId slot = kPadSlot;  // kPadSlot rows are skipped (their logits are zero)
  int32_t token = 0;
  CgControl cg;
  // StartDecode only: >= 0 feeds the token the runner chose for that row of the step started
  // just before this one (its result may not be collected yet); `token` is then ignored.
  int32_t feed_row = -1;
};

struct DecodeResult {
  // [rows, vocab]; pad rows zero. After DecodeAndChoose: the rows the runner chose a token for
  // are unspecified, and the array is empty when it chose every live row (so a caller that
  // reuses a DecodeResult pays for no [rows, vocab] fill it does not read).
  std::vector<float> logits;
  CgStats stats;               // rows = batch
  std::vector<int32_t> tokens; // [rows]: the runner's choice, or -1 where the caller samples;
                               // empty when the runner chooses none (the CPU runner)
  // For rows the runner chose whose choice asked for top_logprobs (empty when none did): the
  // chosen token's log-probability [rows], and the choice's top_logprobs most likely tokens
  // [rows, kMaxDeviceTopLogprobs] (row i's first choices[i].top_logprobs entries).
  std::vector<float> logprobs;
  std::vector<TokenLogprob> top_logprobs;
};

class ModelRunner {
 public:
  virtual ~ModelRunner() = default;

  virtual const MesaConfig& config() const = 0;
  virtual const char* backend_name() const = 0;
  virtual int32_t num_slots() const = 0;
  virtual size_t state_bytes_per_slot() const = 0;
  virtual size_t weight_bytes() const = 0;

  // Zeroes a slot's recurrent and conv state; the next prefill starts a new sequence.
  virtual absl::Status ResetSlot(SlotId slot) = 0;
  // Tokens the slot's state has absorbed since its last reset.
  virtual int64_t SlotPosition(SlotId slot) const = 0;

  // Runs each request's tokens through the model from its slot's current state.
  virtual absl::Status Prefill(absl::Span<const PrefillRequest> requests,
                               absl::Span<PrefillResult> results) = 0;
  // One token for each row, each from and into its own slot.
  virtual absl::Status Decode(absl::Span<const DecodeRow> rows, DecodeResult* result) = 0;
  // Decode, and for each row whose choice (one per row) is not kHost the runner may choose the
  // next token itself by that rule (result->tokens[i] >= 0, and that row's logits stay zero):
  // the logits need not leave the device. This default chooses none.
  virtual absl::Status DecodeAndChoose(absl::Span<const DecodeRow> rows,
                                       absl::Span<const PlainChoice> choices,
                                       DecodeResult* result) {
    (void)choices;
    result->tokens.clear();
    return Decode(rows, result);
  }

  // Pipelined decode: a runner that chooses tokens on its device may start a step before the
  // caller has collected the previous one, feeding the previous step's chosen tokens on the
  // device (DecodeRow::feed_row), so the caller's host work on one step's result overlaps the
  // device's work on the next. Steps are collected in the order they were started, at most two
  // are outstanding, and a started step takes no other decode call in between (prefill and slot
  // resets may come between; they run after the outstanding steps).
  //
  // The most rows a started step may have (0: the runner does not pipeline).
  virtual int32_t PipelinedDecodeRows() const { return 0; }
  // Whether a started step can take a row with this choice: the runner makes it itself with
  // nothing from the host but the choice (no penalties: their seen tokens would lag a step).
  virtual bool ChoosesAhead(const PlainChoice& choice) const {
    (void)choice;
    return false;
  }
  // Whether Prefill chooses `req`'s next token itself (PrefillRequest::choice): the rule every
  // runner that chooses in Prefill follows.
  bool ChoosesAfterPrefill(const PrefillRequest& req) const {
    return !req.all_logits && req.choice.has_value() && ChoosesAhead(*req.choice);
  }
  // Starts a step whose every live row has a choice ChoosesAhead accepts (one per row).
  virtual absl::Status StartDecode(absl::Span<const DecodeRow> rows,
                                   absl::Span<const PlainChoice> choices) {
    (void)rows;
    (void)choices;
    return absl::UnimplementedError("this runner does not pipeline decode steps");
  }
  // Waits for the oldest started step and fills `result` as DecodeAndChoose does (every live
  // row chosen: tokens, CG statistics, logprobs where asked; no logits).
  virtual absl::Status FinishDecode(DecodeResult* result) {
    (void)result;
    return absl::UnimplementedError("this runner does not pipeline decode steps");
  }

  // True after an unrecoverable fault (e.g. a sticky device error): the engine then fails
  // everything and readiness goes false. A failed step of a runner that is not poisoned fails
  // only the requests in that step.
  virtual bool poisoned() const { return false; }
};

}  // namespace mesa
