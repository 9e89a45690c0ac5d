// A token choice that needs nothing but the raw logits row, the sampling parameters and one
// uniform draw: what a runner can make on its device without sending the row to the host
// (ModelRunner::DecodeAndChoose). Sampler::NextChoice makes them, with the rule of
// Sampler::Sample for these cases.
#pragma once

#include <cstdint>

#include "absl/types/span.h"

namespace mesa {

struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0.0f;
};

// A token of the context and how often it occurred (for the penalties).
struct SeenToken {
  int32_t token = 0;
  int32_t count = 0;
};

struct PlainChoice {
  enum class Kind : int32_t {
    kHost = 0,     // penalties together with logprobs, or more than kMaxDeviceTopLogprobs
    kGreedy = 1,   // the first id with the largest logit
    kSoftmax = 2,  // inverse CDF of softmax(logits / temperature) in id order at u = draw * mass
    // Softmax with top-k / min-p / top-p truncation: the kept candidates in decreasing
    // probability (ties: smaller id first), the first whose running sum passes u = draw * mass.
    kTruncated = 3,
  };
  Kind kind = Kind::kHost;
  float temperature = 1.0f;
  int32_t top_k = 0;    // kTruncated: as SamplingParams
  float top_p = 1.0f;
  float min_p = 0.0f;
  double draw = 0.0;  // in [0, 1); also what a kHost choice with temperature > 0 samples with
  int32_t valid_vocab = 0;  // ids [0, valid_vocab) can be chosen (the tokenizer's pieces)
  // Penalties, applied to the seen tokens' logits before any rule (Sampler::Sample): l = l > 0 ?
  // l / repetition : l * repetition, then l -= fma(frequency, count, presence). `seen` is empty
  // when no penalty applies; it points into the Sampler and is valid until its next Observe.
  float repetition_penalty = 1.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  absl::Span<const SeenToken> seen;
  // The log-probabilities to report with the token (of the raw logits, as Sampler::Sample):
  // the chosen token's and the n most likely tokens', n = top_logprobs (0: none).
  int32_t top_logprobs = 0;
};

// Whether the choice changes logits by the penalties (with or without seen tokens so far).
inline bool HasPenalties(const PlainChoice& c) {
  return c.repetition_penalty != 1.0f || c.presence_penalty != 0.0f || c.frequency_penalty != 0.0f ||
         !c.seen.empty();
}

// Most log-probabilities a runner reports per token; a request asking for more is sampled on
// the host.
inline constexpr int32_t kMaxDeviceTopLogprobs = 20;

}  // namespace mesa
