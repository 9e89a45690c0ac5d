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
  // Log-softmax of the raw logits, for reported logprobs.
  float max_raw = -std::numeric_limits<float>::infinity();
  for (int32_t i = 0; i < n; ++i) max_raw = std::max(max_raw, logits[i]);
  double sum_raw = 0.0;
  for (int32_t i = 0; i < n; ++i) sum_raw += std::exp(static_cast<double>(logits[i] - max_raw));
  const float log_z = max_raw + static_cast<float>(std::log(sum_raw));

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
    order_.resize(n);
    std::iota(order_.begin(), order_.end(), 0);
    int32_t keep = n;
    if (params_.top_k > 0 && params_.top_k < n) {
      keep = params_.top_k;
      std::partial_sort(order_.begin(), order_.begin() + keep, order_.end(),
                        [&](int32_t a, int32_t b) { return work_[a] > work_[b]; });
    } else {
      std::sort(order_.begin(), order_.end(), [&](int32_t a, int32_t b) { return work_[a] > work_[b]; });
    }
    // Probabilities of the kept candidates (sorted descending) at this temperature.
    std::vector<double> probs(keep);
    const double top = work_[order_[0]] / params_.temperature;
    double total = 0.0;
    for (int32_t i = 0; i < keep; ++i) {
      probs[i] = std::exp(work_[order_[i]] / params_.temperature - top);
      total += probs[i];
    }
    int32_t cut = keep;
    if (params_.min_p > 0.0f) {
      const double threshold = params_.min_p * probs[0];
      cut = 1;
      while (cut < keep && probs[cut] >= threshold) ++cut;
    }
    if (params_.top_p < 1.0f) {
      double cum = 0.0;
      int32_t i = 0;
      for (; i < cut; ++i) {
        cum += probs[i] / total;
        if (cum >= params_.top_p) {
          ++i;
          break;
        }
      }
      cut = std::max(1, std::min(cut, i));
    }
    double mass = 0.0;
    for (int32_t i = 0; i < cut; ++i) mass += probs[i];
    std::uniform_real_distribution<double> uniform(0.0, mass);
    const double u = uniform(rng_);
    double acc = 0.0;
    chosen = order_[cut - 1];
    for (int32_t i = 0; i < cut; ++i) {
      acc += probs[i];
      if (u < acc) {
        chosen = order_[i];
        break;
      }
    }
  }

  if (chosen_logprob != nullptr) *chosen_logprob = logits[chosen] - log_z;
  if (top_logprobs != nullptr && num_top_logprobs > 0) {
    const int32_t m = std::min(num_top_logprobs, n);
    std::vector<int32_t> idx(n);
    std::iota(idx.begin(), idx.end(), 0);
    std::partial_sort(idx.begin(), idx.begin() + m, idx.end(),
                      [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
    top_logprobs->clear();
    for (int32_t i = 0; i < m; ++i) top_logprobs->push_back({idx[i], logits[idx[i]] - log_z});
  }
  return chosen;
}

}  // namespace mesa
