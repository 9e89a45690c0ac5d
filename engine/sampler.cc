#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

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

void Sampler::Observe(int32_t token) { ++counts_[token]; }

int32_t Sampler::Sample(absl::Span<const float> logits, int32_t num_top_logprobs,
                        std::vector<TokenLogprob>* top_logprobs, float* chosen_logprob) {
  const int32_t n = std::min<int32_t>(valid_vocab_, static_cast<int32_t>(logits.size()));
  work_.assign(logits.begin(), logits.begin() + n);
  for (const auto& [token, count] : counts_) {
    if (token < 0 || token >= n) continue;
    float& l = work_[token];
    if (params_.repetition_penalty != 1.0f) {
      l = l > 0.0f ? l / params_.repetition_penalty : l * params_.repetition_penalty;
    }
    l -= params_.presence_penalty + params_.frequency_penalty * static_cast<float>(count);
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
    const bool need_order = params_.top_k > 0 || params_.top_p < 1.0f || params_.min_p > 0.0f;
    if (need_order) {
      // Sort candidates by probability, descending; ties by id for determinism.
      index_.resize(order_.size());
      std::iota(index_.begin(), index_.end(), 0);
      std::sort(index_.begin(), index_.end(), [&](int32_t a, int32_t b) {
        return probs_[a] != probs_[b] ? probs_[a] > probs_[b] : order_[a] < order_[b];
      });
      int32_t keep = static_cast<int32_t>(index_.size());
      if (params_.top_k > 0) keep = std::min(keep, params_.top_k);
      if (params_.min_p > 0.0f) {
        const float threshold = params_.min_p * probs_[index_[0]];
        int32_t cut = 1;
        while (cut < keep && probs_[index_[cut]] >= threshold) ++cut;
        keep = cut;
      }
      if (params_.top_p < 1.0f) {
        double total = 0.0;
        for (int32_t i = 0; i < keep; ++i) total += probs_[index_[i]];
        double cum = 0.0;
        int32_t cut = 0;
        while (cut < keep) {
          cum += probs_[index_[cut]] / total;
          ++cut;
          if (cum >= params_.top_p) break;
        }
        keep = std::max(1, cut);
      }
      // Rebuild the candidate lists in kept order.
      std::vector<int32_t> ids(keep);
      std::vector<float> ps(keep);
      for (int32_t i = 0; i < keep; ++i) {
        ids[i] = order_[index_[i]];
        ps[i] = probs_[index_[i]];
      }
      order_.swap(ids);
      probs_.swap(ps);
    }
    double mass = 0.0;
    for (float p : probs_) mass += p;
    std::uniform_real_distribution<double> uniform(0.0, mass);
    const double u = uniform(rng_);
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
