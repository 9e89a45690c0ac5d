// A runner that stands in for the GPU's token choice on the CPU: it wraps a CPU runner,
// chooses the tokens of greedy and plain-softmax rows by the rule in engine/plain_choice.h,
// and (when asked) pipelines decode steps as ModelRunner describes, feeding a started step's
// chosen tokens into the next one. It records every choice it was given.
#pragma once

#include <deque>
#include <memory>
#include <mutex>
#include <vector>

#include "engine/model_runner.h"

namespace mesa::testing {

class ChoosingRunner : public ModelRunner {
 public:
  // pipelined_rows > 0: StartDecode / FinishDecode take steps of up to that many rows.
  explicit ChoosingRunner(std::unique_ptr<ModelRunner> inner, int32_t pipelined_rows = 0)
      : inner_(std::move(inner)), pipelined_rows_(pipelined_rows) {}

  const MesaConfig& config() const override { return inner_->config(); }
  const char* backend_name() const override { return "choosing"; }
  int32_t num_slots() const override { return inner_->num_slots(); }
  size_t state_bytes_per_slot() const override { return inner_->state_bytes_per_slot(); }
  size_t weight_bytes() const override { return inner_->weight_bytes(); }
  absl::Status ResetSlot(SlotId slot) override { return inner_->ResetSlot(slot); }
  int64_t SlotPosition(SlotId slot) const override { return inner_->SlotPosition(slot); }
  // Chooses the first generated token of requests whose choice it accepts (ChoosesAhead).
  absl::Status Prefill(absl::Span<const PrefillRequest> requests,
                       absl::Span<PrefillResult> results) override;
  absl::Status Decode(absl::Span<const DecodeRow> rows, DecodeResult* result) override;
  absl::Status DecodeAndChoose(absl::Span<const DecodeRow> rows,
                               absl::Span<const PlainChoice> choices,
                               DecodeResult* result) override;

  int32_t PipelinedDecodeRows() const override { return pipelined_rows_; }
  bool ChoosesAhead(const PlainChoice& c) const override;
  absl::Status StartDecode(absl::Span<const DecodeRow> rows,
                           absl::Span<const PlainChoice> choices) override;
  absl::Status FinishDecode(DecodeResult* result) override;

  std::vector<PlainChoice::Kind> kinds() const;
  int64_t started_steps() const;  // steps run through StartDecode
  int64_t fed_rows() const;       // rows whose token came from the step before
  int64_t prefill_choices() const;  // first tokens chosen in Prefill
  int64_t prefill_calls() const;    // Prefill calls (launches)

 private:
  // Chooses the tokens of greedy and softmax rows of `result` (logits from the inner runner).
  void Choose(absl::Span<const PlainChoice> choices, DecodeResult* result);

  std::unique_ptr<ModelRunner> inner_;
  int32_t pipelined_rows_;
  // Started steps not yet finished (computed at once: the CPU has nothing to overlap), and
  // which rows of the last started step chose a token (what the next one may feed on).
  std::deque<DecodeResult> started_;
  std::vector<int32_t> last_tokens_;
  std::vector<uint8_t> last_fed_;
  bool last_was_started_ = false;
  mutable std::mutex mu_;
  std::vector<PlainChoice::Kind> kinds_;
  int64_t started_steps_ = 0, fed_rows_ = 0, prefill_choices_ = 0, prefill_calls_ = 0;
};

}  // namespace mesa::testing
