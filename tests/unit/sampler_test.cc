// Token sampling: greedy, temperature, top-k/top-p/min-p truncation, penalties, seeds, logprobs.
#include <cmath>
#include <map>

#include "engine/sampler.h"
#include "gtest/gtest.h"

namespace mesa {
namespace {

std::vector<float> Logits() { return {1.0f, 3.0f, 2.0f, 0.5f, 3.0f - std::log(2.0f), -4.0f}; }

std::map<int32_t, int> Histogram(SamplingParams p, int draws) {
  Sampler s(p, 6);
  std::map<int32_t, int> h;
  const std::vector<float> logits = Logits();
  for (int i = 0; i < draws; ++i) ++h[s.Sample(logits)];
  return h;
}

TEST(SamplerTest, GreedyPicksTheArgmaxAndIgnoresPaddedVocab) {
  SamplingParams p;
  p.temperature = 0.0f;
  Sampler s(p, 6);
  std::vector<float> logits = Logits();
  logits.push_back(100.0f);  // id 6: beyond the tokenizer's pieces
  EXPECT_EQ(s.Sample(logits), 1);
}

TEST(SamplerTest, TemperatureSamplingFollowsTheSoftmax) {
  SamplingParams p;
  p.seed = 3;
  const int draws = 60000;
  const auto h = Histogram(p, draws);
  const std::vector<float> l = Logits();
  double z = 0.0;
  for (float x : l) z += std::exp(x);
  for (int i = 0; i < 6; ++i) {
    const double expect = std::exp(l[i]) / z;
    const double got = h.count(i) ? static_cast<double>(h.at(i)) / draws : 0.0;
    EXPECT_NEAR(got, expect, 4.0 * std::sqrt(expect * (1 - expect) / draws) + 1e-4) << "token " << i;
  }
}

TEST(SamplerTest, TopKTopPAndMinPTruncate) {
  SamplingParams p;
  p.seed = 1;
  p.top_k = 2;
  auto h = Histogram(p, 5000);
  EXPECT_EQ(h.size(), 2u);  // ids 1 and 4 (logits 3 and 3 - ln 2)
  EXPECT_TRUE(h.count(1) && h.count(4));
  p.top_k = 0;
  p.top_p = 0.3f;  // the top token alone has ~0.47 of the mass
  h = Histogram(p, 2000);
  EXPECT_EQ(h.size(), 1u);
  EXPECT_TRUE(h.count(1));
  p.top_p = 1.0f;
  p.min_p = 0.45f;  // keeps p >= 0.45 p_max: ids 1 (1.0), 4 (0.5)
  h = Histogram(p, 5000);
  EXPECT_EQ(h.size(), 2u);
  EXPECT_TRUE(h.count(1) && h.count(4));
}

TEST(SamplerTest, SameSeedSameTokensDifferentSeedDifferentTokens) {
  SamplingParams p;
  p.seed = 42;
  Sampler a(p, 6), b(p, 6);
  p.seed = 43;
  Sampler c(p, 6);
  std::vector<int32_t> ta, tb, tc;
  for (int i = 0; i < 50; ++i) {
    ta.push_back(a.Sample(Logits()));
    tb.push_back(b.Sample(Logits()));
    tc.push_back(c.Sample(Logits()));
  }
  EXPECT_EQ(ta, tb);
  EXPECT_NE(ta, tc);
}

TEST(SamplerTest, PenaltiesDiscourageSeenTokens) {
  SamplingParams p;
  p.temperature = 0.0f;
  p.presence_penalty = 1.5f;
  Sampler s(p, 6);
  s.Observe(1);
  EXPECT_EQ(s.Sample(Logits()), 4);  // id 1 drops to 1.5, below id 4's 3 - ln 2
  SamplingParams r;
  r.temperature = 0.0f;
  r.repetition_penalty = 2.0f;
  Sampler t(r, 6);
  t.Observe(1);
  EXPECT_EQ(t.Sample(Logits()), 4);  // 3/2 < 3 - ln 2
}

TEST(SamplerTest, LogprobsAreOfTheRawDistribution) {
  SamplingParams p;
  p.temperature = 0.0f;
  Sampler s(p, 6);
  std::vector<TokenLogprob> top;
  float chosen = 0.0f;
  const std::vector<float> l = Logits();
  const int32_t t = s.Sample(l, 3, &top, &chosen);
  double z = 0.0;
  for (float x : l) z += std::exp(x);
  EXPECT_EQ(t, 1);
  EXPECT_NEAR(chosen, l[1] - std::log(z), 1e-5);
  ASSERT_EQ(top.size(), 3u);
  EXPECT_EQ(top[0].token, 1);
  EXPECT_EQ(top[1].token, 4);
  EXPECT_EQ(top[2].token, 2);
  EXPECT_NEAR(top[1].logprob, l[4] - std::log(z), 1e-5);
}

// NextChoice: which rule a runner may apply itself, with the parameters it needs, and the same
// random stream as Sample either way.
TEST(SamplerTest, NextChoiceDescribesTheRuleAndKeepsTheStream) {
  SamplingParams p;
  p.seed = 9;
  p.temperature = 0.0f;
  EXPECT_EQ(Sampler(p, 6).NextChoice(0).kind, PlainChoice::Kind::kGreedy);
  p.temperature = 0.7f;
  PlainChoice c = Sampler(p, 6).NextChoice(0);
  EXPECT_EQ(c.kind, PlainChoice::Kind::kSoftmax);
  EXPECT_EQ(c.temperature, 0.7f);
  EXPECT_EQ(c.valid_vocab, 6);
  p.top_p = 0.9f;
  p.top_k = 3;
  c = Sampler(p, 6).NextChoice(5);
  EXPECT_EQ(c.kind, PlainChoice::Kind::kTruncated);
  EXPECT_EQ(c.top_k, 3);
  EXPECT_EQ(c.top_p, 0.9f);
  EXPECT_EQ(c.top_logprobs, 5);
  EXPECT_TRUE(c.seen.empty());
  // More logprobs than a device reports: the host's.
  EXPECT_EQ(Sampler(p, 6).NextChoice(kMaxDeviceTopLogprobs + 1).kind, PlainChoice::Kind::kHost);
  // Penalties: the seen tokens travel with the choice; with logprobs (of the raw logits, which
  // the device's penalties change in place) the host's.
  p.repetition_penalty = 1.3f;
  Sampler s(p, 6);
  s.Observe(4);
  s.Observe(1);
  s.Observe(4);
  c = s.NextChoice(0);
  EXPECT_EQ(c.kind, PlainChoice::Kind::kTruncated);
  ASSERT_EQ(c.seen.size(), 2u);
  EXPECT_EQ(c.seen[0].token, 4);
  EXPECT_EQ(c.seen[0].count, 2);
  EXPECT_EQ(c.seen[1].token, 1);
  EXPECT_EQ(c.repetition_penalty, 1.3f);
  EXPECT_EQ(s.NextChoice(3).kind, PlainChoice::Kind::kHost);
  // The draw NextChoice takes is the one Sample would: the same tokens either way.
  SamplingParams q;
  q.seed = 5;
  Sampler a(q, 6), b(q, 6);
  for (int i = 0; i < 50; ++i) {
    const PlainChoice choice = a.NextChoice(0);
    EXPECT_EQ(a.Sample(Logits(), 0, nullptr, nullptr, &choice), b.Sample(Logits())) << "draw " << i;
  }
}

TEST(SamplerTest, ValidationNamesTheFieldAndValue) {
  SamplingParams p;
  p.top_p = 0.0f;
  EXPECT_NE(std::string(ValidateSamplingParams(p).message()).find("top_p = 0"), std::string::npos);
  p = {};
  p.temperature = -1.0f;
  EXPECT_NE(std::string(ValidateSamplingParams(p).message()).find("temperature = -1"), std::string::npos);
}

}  // namespace
}  // namespace mesa
