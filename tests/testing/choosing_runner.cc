#include "tests/testing/choosing_runner.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "engine/runner_checks.h"

namespace mesa::testing {

absl::Status ChoosingRunner::Decode(absl::Span<const DecodeRow> rows, DecodeResult* result) {
  last_was_started_ = false;
  return inner_->Decode(rows, result);
}

absl::Status ChoosingRunner::DecodeAndChoose(absl::Span<const DecodeRow> rows,
                                             absl::Span<const PlainChoice> choices,
                                             DecodeResult* result) {
  last_was_started_ = false;
  if (absl::Status s = inner_->Decode(rows, result); !s.ok()) return s;
  Choose(choices, result);
  return absl::OkStatus();
}

bool ChoosingRunner::ChoosesAhead(const PlainChoice& c) const {
  return (c.kind == PlainChoice::Kind::kGreedy || c.kind == PlainChoice::Kind::kSoftmax) &&
         !HasPenalties(c) && c.top_logprobs == 0;
}

absl::Status ChoosingRunner::StartDecode(absl::Span<const DecodeRow> rows,
                                         absl::Span<const PlainChoice> choices) {
  if (pipelined_rows_ <= 0) return ModelRunner::StartDecode(rows, choices);
  if (static_cast<int64_t>(rows.size()) > pipelined_rows_ || choices.size() != rows.size()) {
    return absl::InvalidArgumentError(absl::StrCat("StartDecode: ", rows.size(), " rows, ",
                                                   choices.size(), " choices; at most ",
                                                   pipelined_rows_, " rows"));
  }
  if (started_.size() >= 2) {
    return absl::FailedPreconditionError("StartDecode: two started steps are not finished");
  }
  const absl::Span<const uint8_t> fed =
      last_was_started_ ? absl::MakeConstSpan(last_fed_) : absl::Span<const uint8_t>();
  if (absl::Status s = CheckDecodeRows(rows, num_slots(), config().vocab_size, fed); !s.ok()) {
    return s;
  }
  for (size_t i = 0; i < rows.size(); ++i) {
    if (rows[i].slot != kPadSlot && !ChoosesAhead(choices[i])) {
      return absl::InvalidArgumentError(absl::StrCat("StartDecode: row ", i, " cannot be chosen ahead"));
    }
  }
  std::vector<DecodeRow> resolved(rows.begin(), rows.end());
  int64_t fed_now = 0;
  for (DecodeRow& r : resolved) {
    if (r.feed_row < 0) continue;
    r.token = last_tokens_[r.feed_row];
    r.feed_row = -1;
    ++fed_now;
  }
  DecodeResult result;
  if (absl::Status s = inner_->Decode(resolved, &result); !s.ok()) return s;
  Choose(choices, &result);
  result.logits.clear();  // a started step returns no logits
  last_tokens_ = result.tokens;
  last_fed_.assign(rows.size(), 0);
  for (size_t i = 0; i < rows.size(); ++i) last_fed_[i] = rows[i].slot != kPadSlot;
  last_was_started_ = true;
  started_.push_back(std::move(result));
  std::lock_guard<std::mutex> lock(mu_);
  ++started_steps_;
  fed_rows_ += fed_now;
  return absl::OkStatus();
}

absl::Status ChoosingRunner::FinishDecode(DecodeResult* result) {
  if (started_.empty()) return absl::FailedPreconditionError("FinishDecode: no started step");
  *result = std::move(started_.front());
  started_.pop_front();
  return absl::OkStatus();
}

namespace {

// The token `c` picks from a logits row by the rule in engine/plain_choice.h, or -1 where this
// stand-in leaves the choice to the host: truncated and penalised choices and those with
// logprobs (the GPU's are tested against the Sampler in tests/gpu_model), and kHost ones.
int32_t ChooseRow(const float* l, const PlainChoice& c) {
  if (c.kind == PlainChoice::Kind::kHost || c.kind == PlainChoice::Kind::kTruncated ||
      HasPenalties(c) || c.top_logprobs > 0) {
    return -1;
  }
  const int32_t n = c.valid_vocab;
  if (c.kind == PlainChoice::Kind::kGreedy) {
    return static_cast<int32_t>(std::max_element(l, l + n) - l);
  }
  const float top = *std::max_element(l, l + n);
  const float inv_t = 1.0f / c.temperature;
  double mass = 0.0;
  std::vector<int32_t> ids;
  std::vector<float> ps;
  for (int32_t j = 0; j < n; ++j) {
    const float z = (l[j] - top) * inv_t;
    if (z > -30.0f) {
      ids.push_back(j);
      ps.push_back(std::exp(z));
      mass += ps.back();
    }
  }
  const double u = c.draw * mass;
  double acc = 0.0;
  for (size_t j = 0; j < ids.size(); ++j) {
    acc += ps[j];
    if (u < acc) return ids[j];
  }
  return ids.back();
}

}  // namespace

absl::Status ChoosingRunner::Prefill(absl::Span<const PrefillRequest> requests,
                                     absl::Span<PrefillResult> results) {
  if (absl::Status s = inner_->Prefill(requests, results); !s.ok()) return s;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++prefill_calls_;
  }
  for (size_t i = 0; i < requests.size(); ++i) {
    const PrefillRequest& req = requests[i];
    if (!ChoosesAfterPrefill(req)) continue;
    const int32_t token = ChooseRow(results[i].logits.data(), *req.choice);
    if (token < 0) continue;
    results[i].token = token;
    results[i].logits.clear();
    std::lock_guard<std::mutex> lock(mu_);
    ++prefill_choices_;
  }
  return absl::OkStatus();
}

void ChoosingRunner::Choose(absl::Span<const PlainChoice> choices, DecodeResult* result) {
  const int64_t vocab = config().vocab_size;
  result->tokens.assign(choices.size(), -1);
  std::lock_guard<std::mutex> lock(mu_);
  for (size_t i = 0; i < choices.size(); ++i) {
    kinds_.push_back(choices[i].kind);
    result->tokens[i] = ChooseRow(result->logits.data() + i * vocab, choices[i]);
  }
}

int64_t ChoosingRunner::prefill_calls() const {
  std::lock_guard<std::mutex> lock(mu_);
  return prefill_calls_;
}

int64_t ChoosingRunner::prefill_choices() const {
  std::lock_guard<std::mutex> lock(mu_);
  return prefill_choices_;
}

std::vector<PlainChoice::Kind> ChoosingRunner::kinds() const {
  std::lock_guard<std::mutex> lock(mu_);
  return kinds_;
}

int64_t ChoosingRunner::started_steps() const {
  std::lock_guard<std::mutex> lock(mu_);
  return started_steps_;
}

int64_t ChoosingRunner::fed_rows() const {
  std::lock_guard<std::mutex> lock(mu_);
  return fed_rows_;
}

}  // namespace mesa::testing
