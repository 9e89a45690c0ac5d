#include "engine/fault_injection.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace mesa {
namespace {

class FaultInjectingRunner final : public ModelRunner {
 public:
  FaultInjectingRunner(std::unique_ptr<ModelRunner> inner, int64_t prefill_fail_at,
                       int64_t decode_fail_at, int64_t poison_at)
      : inner_(std::move(inner)),
        prefill_fail_at_(prefill_fail_at),
        decode_fail_at_(decode_fail_at),
        poison_at_(poison_at) {}

  const MesaConfig& config() const override { return inner_->config(); }
  const char* backend_name() const override { return inner_->backend_name(); }
  int32_t num_slots() const override { return inner_->num_slots(); }
  size_t state_bytes_per_slot() const override { return inner_->state_bytes_per_slot(); }
  size_t weight_bytes() const override { return inner_->weight_bytes(); }
  absl::Status ResetSlot(SlotId slot) override {
    if (poisoned_) return absl::InternalError("injected fault: the runner is poisoned");
    return inner_->ResetSlot(slot);
  }
  int64_t SlotPosition(SlotId slot) const override { return inner_->SlotPosition(slot); }
  bool poisoned() const override { return poisoned_; }

  absl::Status Prefill(absl::Span<const PrefillRequest> requests,
                       absl::Span<PrefillResult> results) override {
    if (absl::Status s = Check(++prefills_ == prefill_fail_at_, "prefill"); !s.ok()) return s;
    return inner_->Prefill(requests, results);
  }
  absl::Status Decode(absl::Span<const DecodeRow> rows, DecodeResult* result) override {
    if (absl::Status s = Check(++decodes_ == decode_fail_at_, "decode"); !s.ok()) return s;
    return inner_->Decode(rows, result);
  }
  absl::Status DecodeAndChoose(absl::Span<const DecodeRow> rows,
                               absl::Span<const PlainChoice> choices,
                               DecodeResult* result) override {
    if (absl::Status s = Check(++decodes_ == decode_fail_at_, "decode"); !s.ok()) return s;
    return inner_->DecodeAndChoose(rows, choices, result);
  }
  // Pipelined decode as the inner runner does it; a started step counts as a decode call.
  int32_t PipelinedDecodeRows() const override { return inner_->PipelinedDecodeRows(); }
  bool ChoosesAhead(const PlainChoice& choice) const override { return inner_->ChoosesAhead(choice); }
  absl::Status StartDecode(absl::Span<const DecodeRow> rows,
                           absl::Span<const PlainChoice> choices) override {
    if (absl::Status s = Check(++decodes_ == decode_fail_at_, "decode"); !s.ok()) return s;
    return inner_->StartDecode(rows, choices);
  }
  absl::Status FinishDecode(DecodeResult* result) override {
    if (poisoned_) return absl::InternalError("injected fault: decode on a poisoned runner");
    return inner_->FinishDecode(result);
  }

 private:
  absl::Status Check(bool fail_this_one, const char* what) {
    ++calls_;
    if (calls_ == poison_at_) poisoned_ = true;
    if (poisoned_) return absl::InternalError(absl::StrCat("injected fault: ", what, " on a poisoned runner"));
    if (fail_this_one) return absl::InternalError(absl::StrCat("injected fault: ", what, " step failed"));
    return absl::OkStatus();
  }

  std::unique_ptr<ModelRunner> inner_;
  int64_t prefill_fail_at_, decode_fail_at_, poison_at_;
  int64_t prefills_ = 0, decodes_ = 0, calls_ = 0;
  bool poisoned_ = false;
};

}  // namespace

absl::StatusOr<std::unique_ptr<ModelRunner>> WrapWithFaultInjection(std::unique_ptr<ModelRunner> runner,
                                                                    const std::string& spec) {
  int64_t prefill = -1, decode = -1, poison = -1;
  for (absl::string_view item : absl::StrSplit(spec, ',', absl::SkipWhitespace())) {
    std::pair<absl::string_view, absl::string_view> kv = absl::StrSplit(item, absl::MaxSplits('=', 1));
    int64_t n = 0;
    if (!absl::SimpleAtoi(kv.second, &n) || n < 1) {
      return absl::InvalidArgumentError(absl::StrCat("fault injection: '", item, "' needs a positive count"));
    }
    if (kv.first == "prefill_fail_at") prefill = n;
    else if (kv.first == "decode_fail_at") decode = n;
    else if (kv.first == "poison_at") poison = n;
    else return absl::InvalidArgumentError(absl::StrCat("fault injection: unknown item '", item, "'"));
  }
  return std::unique_ptr<ModelRunner>(new FaultInjectingRunner(std::move(runner), prefill, decode, poison));
}

}  // namespace mesa
