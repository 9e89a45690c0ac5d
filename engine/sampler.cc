#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <numeric>
#include <random>

#include "absl/base/casts.h"
#include "absl/strings/str_cat.h"

namespace mesa {
namespace {

absl::Status OutOfRange(const char* field, float value, const char* range) {
  return absl::InvalidArgumentError(
      absl::StrCat(field, " = ", value, " is outside the allowed range ", range));
}

// Tokens whose scaled logit is this far below the best one carry less than e^-30 (1e-13) of
// the probability each: even all 10^6 of them together are below float resolution, so they
// are never candidates. This keeps the sort (needed by top-p and min-p) small.
constexpr float kCandidateWindow = 30.0f;

}  // namespace

absl::Status ValidateSamplingParams(const SamplingParams& p) {
  if (!(p.temperature >= 0.0f && p.temperature <= 100.0f)) return OutOfRange("temperature", p.temperature, "[0, 100]");
  if (p.top_k < 0) return OutOfRange("top_k", static_cast<float>(p.top_k), "[0, vocab]");
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) return OutOfRange("top_p", p.top_p, "(0, 1]");
  if (!(p.min_p >= 0.0f && p.min_p <= 1.0f)) return OutOfRange("min_p", p.min_p, "[0, 1]");
  if (!(p.repetition_penalty > 0.0f && p.repetition_penalty <= 10.0f)) {
    return OutOfRange("repetition_penalty", p.repetition_penalty, "(0, 10]");
  }
  if (!(p.presence_penalty >= -2.0f && p.presence_penalty <= 2.0f)) {
    return OutOfRange("presence_penalty", p.presence_penalty, "[-2, 2]");
  }
  if (!(p.frequency_penalty >= -2.0f && p.frequency_penalty <= 2.0f)) {
    return OutOfRange("frequency_penalty", p.frequency_penalty, "[-2, 2]");
  }
  return absl::OkStatus();
}

Sampler::Sampler(const SamplingParams& params, int32_t valid_vocab)
    : params_(params), valid_vocab_(valid_vocab), rng_(params.seed) {}

void Sampler::Observe(int32_t token) {
  const auto [it, inserted] = seen_index_.try_emplace(token, seen_.size());
  if (inserted) seen_.push_back({token, 0});
  ++seen_[it->second].count;
}

double Sampler::Draw() {
  return std::generate_canonical<double, std::numeric_limits<double>::digits>(rng_);
}

bool Sampler::HasPenalties() const {
  return !seen_.empty() && (params_.repetition_penalty != 1.0f || params_.presence_penalty != 0.0f ||
                              params_.frequency_penalty != 0.0f);
}

bool Sampler::Truncates() const {
  return params_.top_k > 0 || params_.top_p < 1.0f || params_.min_p > 0.0f;
}

PlainChoice Sampler::NextChoice(int32_t top_logprobs) {
  PlainChoice c = ChoiceRule(top_logprobs);
  if (params_.temperature > 0.0f) c.draw = Draw();  // Sample would draw it too
  return c;
}

PlainChoice Sampler::ChoiceRule(int32_t top_logprobs) const {
  PlainChoice c;
  c.valid_vocab = valid_vocab_;
  // Logprobs are of the raw logits, which the device's penalties change in place.
  if (top_logprobs > kMaxDeviceTopLogprobs || (top_logprobs > 0 && HasPenalties())) return c;
  c.top_logprobs = top_logprobs;
  if (HasPenalties()) {
    c.repetition_penalty = params_.repetition_penalty;
    c.presence_penalty = params_.presence_penalty;
    c.frequency_penalty = params_.frequency_penalty;
    c.seen = seen_;
  }
  if (params_.temperature == 0.0f) {
    c.kind = PlainChoice::Kind::kGreedy;
    return c;
  }
  c.kind = Truncates() ? PlainChoice::Kind::kTruncated : PlainChoice::Kind::kSoftmax;
  c.temperature = params_.temperature;
  c.top_k = params_.top_k;
  c.top_p = params_.top_p;
  c.min_p = params_.min_p;
  return c;
}

void Sampler::Truncate() {
  const int32_t n = static_cast<int32_t>(order_.size());
  // Decreasing probability, ties by id, as one integer per candidate: the bits of a positive
  // float order like its value, and the complemented id puts the smaller id first. A total
  // order, so the result does not depend on how the prefix below is found.
  keys_.resize(n);
  for (int32_t i = 0; i < n; ++i) {
    keys_[i] = (static_cast<uint64_t>(absl::bit_cast<uint32_t>(probs_[i])) << 32) |
               (0xffffffffu - static_cast<uint32_t>(order_[i]));
  }
  auto prob = [](uint64_t key) { return absl::bit_cast<float>(static_cast<uint32_t>(key >> 32)); };
  const std::greater<uint64_t> better;
  // keys_[0, sorted) holds the `sorted` best candidates in order; the rest are all worse.
  // Only the prefix the cuts read is ever sorted (a full sort of 32,000 candidates took
  // 2.8 ms per token on the development machine).
  int32_t sorted = 0;
  auto sort_prefix = [&](int32_t m) {
    if (m <= sorted) return;
    // A heap of m over the rest: one comparison for most candidates, as most are not in it.
    std::partial_sort(keys_.begin() + sorted, keys_.begin() + m, keys_.end(), better);
    sorted = m;
  };
  int32_t keep = n;
  if (params_.top_k > 0) keep = std::min(keep, params_.top_k);
  if (params_.min_p > 0.0f) {
    // The tokens with p >= min_p p_max are a prefix of the order: count them.
    const float threshold = params_.min_p * *std::max_element(probs_.begin(), probs_.end());
    const auto above = std::count_if(probs_.begin(), probs_.end(), [&](float p) { return p >= threshold; });
    keep = std::min<int32_t>(keep, std::max<int32_t>(1, static_cast<int32_t>(above)));
  }
  if (params_.top_p < 1.0f) {
    // The smallest prefix of the kept set that holds top_p of its mass.
    if (keep < n) std::nth_element(keys_.begin(), keys_.begin() + keep, keys_.end(), better);
    double total = 0.0;
    for (int32_t i = 0; i < keep; ++i) total += prob(keys_[i]);
    double cum = 0.0;
    int32_t cut = 0;
    for (int32_t m = std::min(keep, 64);; m = std::min(keep, 4 * m)) {
      sort_prefix(m);
      while (cut < m && cum < params_.top_p) {
        cum += prob(keys_[cut]) / total;
        ++cut;
      }
      if (cum >= params_.top_p || m == keep) break;
    }
    keep = std::max(1, cut);
  }
  sort_prefix(keep);
  order_.resize(keep);
  probs_.resize(keep);
  for (int32_t i = 0; i < keep; ++i) {
    order_[i] = static_cast<int32_t>(0xffffffffu - static_cast<uint32_t>(keys_[i]));
    probs_[i] = prob(keys_[i]);
  }
}

int32_t Sampler::Sample(absl::Span<const float> logits, int32_t num_top_logprobs,
                        std::vector<TokenLogprob>* top_logprobs, float* chosen_logprob,
                        const PlainChoice* choice) {
  const int32_t n = std::min<int32_t>(valid_vocab_, static_cast<int32_t>(logits.size()));
  work_.assign(logits.begin(), logits.begin() + n);
  for (const SeenToken& s : seen_) {
    if (s.token < 0 || s.token >= n) continue;
    float& l = work_[s.token];
    if (params_.repetition_penalty != 1.0f) {
      l = l > 0.0f ? l / params_.repetition_penalty : l * params_.repetition_penalty;
    }
    // One fused multiply-add, written out so that the compiler cannot choose (contraction is
    // up to it otherwise); the GPU twin in kernels/cuda/sampling.cu does the same.
    l -= std::fma(params_.frequency_penalty, static_cast<float>(s.count), params_.presence_penalty);
  }

  int32_t chosen = 0;
  if (params_.temperature == 0.0f) {
    chosen = static_cast<int32_t>(std::max_element(work_.begin(), work_.end()) - work_.begin());
  } else {
    const float inv_t = 1.0f / params_.temperature;
    const float top = *std::max_element(work_.begin(), work_.end());
    // Candidates in id order, with unnormalised probabilities exp((l - top) / T).
    order_.clear();
    probs_.clear();
    for (int32_t i = 0; i < n; ++i) {
      const float z = (work_[i] - top) * inv_t;
      if (z > -kCandidateWindow) {
        order_.push_back(i);
        probs_.push_back(std::exp(z));
      }
    }
    if (Truncates()) Truncate();
    double mass = 0.0;
    for (float p : probs_) mass += p;
    const double u = (choice != nullptr ? choice->draw : Draw()) * mass;
    double acc = 0.0;
    chosen = order_.back();
    for (size_t i = 0; i < order_.size(); ++i) {
      acc += probs_[i];
      if (u < acc) {
        chosen = order_[i];
        break;
      }
    }
  }

  // Log-probabilities (of the raw logits) only when asked for: a log-sum-exp over the vocab.
  const bool want_top = top_logprobs != nullptr && num_top_logprobs > 0;
  if (chosen_logprob != nullptr || want_top) {
    const float mx = *std::max_element(logits.begin(), logits.begin() + n);
    float sum = 0.0f;
    for (int32_t i = 0; i < n; ++i) sum += std::exp(logits[i] - mx);
    const float log_z = mx + std::log(sum);
    if (chosen_logprob != nullptr) *chosen_logprob = logits[chosen] - log_z;
    if (want_top) {
      const int32_t m = std::min(num_top_logprobs, n);
      index_.resize(n);
      std::iota(index_.begin(), index_.end(), 0);
      std::partial_sort(index_.begin(), index_.begin() + m, index_.end(),
                        [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
      top_logprobs->clear();
      for (int32_t i = 0; i < m; ++i) top_logprobs->push_back({index_[i], logits[index_[i]] - log_z});
    }
  }
  return chosen;
}

}  // namespace mesa
