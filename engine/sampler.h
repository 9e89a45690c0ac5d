// Token selection from logits: penalties, temperature, top-k, top-p, min-p, seeded RNG.
// One Sampler per request (it owns the request's random stream). Not thread-safe.
#pragma once

#include <cstdint>
#include <random>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "engine/plain_choice.h"

namespace mesa {

struct SamplingParams {
  float temperature = 1.0f;         // 0 = greedy (argmax)
  int32_t top_k = 0;                // 0 = off
  float top_p = 1.0f;               // 1 = off
  float min_p = 0.0f;               // 0 = off; keeps tokens with p >= min_p * p_max
  float repetition_penalty = 1.0f;  // >1 discourages tokens already seen (CTRL-style)
  float presence_penalty = 0.0f;    // subtracted once from seen tokens' logits
  float frequency_penalty = 0.0f;   // subtracted per occurrence
  uint64_t seed = 0;
};

// Checks ranges; messages name the field, the limit and the value.
absl::Status ValidateSamplingParams(const SamplingParams& p);


class Sampler {
 public:
  // Only ids in [0, valid_vocab) can be chosen (a model's vocab may be padded past the
  // tokenizer's pieces).
  Sampler(const SamplingParams& params, int32_t valid_vocab);

  // Records a token of the context (prompt or generated) for the penalties.
  void Observe(int32_t token);
  // The next choice as a PlainChoice (kHost when it needs the host: logprobs together with
  // penalties, or more than kMaxDeviceTopLogprobs of them), consuming the random draw the
  // choice takes: pass that choice to Sample if the token is chosen on the host after all.
  // top_logprobs: the log-probabilities the request wants with each token (0: none).
  PlainChoice NextChoice(int32_t top_logprobs);
  // NextChoice without its draw (draw 0): the rule every later choice of this request follows
  // once its prompt has been observed (penalties show only with context to penalise).
  PlainChoice ChoiceRule(int32_t top_logprobs) const;
  // Chooses the next token from `logits` (model vocab size). `top_logprobs` (optional) gets the
  // n most likely tokens under the unpenalised, untempered distribution, `chosen_logprob`
  // (optional) the chosen one's; leave both null when not needed (saves a pass over the vocab).
  // `choice` (optional): a PlainChoice from NextChoice whose draw is to be used instead of a new
  // one (so the random stream is the same whichever side chooses).
  int32_t Sample(absl::Span<const float> logits, int32_t num_top_logprobs = 0,
                 std::vector<TokenLogprob>* top_logprobs = nullptr, float* chosen_logprob = nullptr,
                 const PlainChoice* choice = nullptr);

 private:
  SamplingParams params_;
  int32_t valid_vocab_;
  std::mt19937_64 rng_;
  std::vector<SeenToken> seen_;                  // context tokens in first-seen order
  std::unordered_map<int32_t, size_t> seen_index_;  // token -> its entry in seen_
  // Scratch reused across calls (this is on the per-token path).
  std::vector<float> work_;     // penalised logits
  std::vector<int32_t> order_;  // candidate token ids
  std::vector<float> probs_;    // their unnormalised probabilities
  std::vector<int32_t> index_;  // sort permutation (top logprobs)
  std::vector<uint64_t> keys_;  // candidates as (probability, id) sort keys (truncation)

  // A uniform draw in [0, 1) (53 bits), as std::uniform_real_distribution takes it.
  double Draw();
  bool HasPenalties() const;
  bool Truncates() const;
  // Cuts order_/probs_ to the top-k / min-p / top-p set in decreasing probability.
  void Truncate();
};

}  // namespace mesa
