// Token choice on the GPU (kernels/cuda/sampling.h, CudaModelRunner::DecodeAndChoose) against
// the engine's Sampler, the rule it must reproduce: greedy (first maximum, padded vocab
// excluded), softmax sampling at several temperatures, and softmax with top-k, top-p and min-p
// truncation (bf16 logits: many exact ties, which the order must break by id), with the same
// uniform draws. The kernel sums the probabilities in another order (and in fixed point for
// truncation) and rounds exp in double, so a draw within about 1e-7 of a boundary between two
// tokens may pick the neighbour: allowed for at most 1 in 500 draws (a wrong temperature,
// window, cut or order moves most).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iostream>
#include <memory>
#include <random>
#include <vector>

#include "base/half.h"
#include "engine/cpu_model_runner.h"
#include "engine/cuda_model_runner.h"
#include "engine/cuda_runner_layout.h"
#include "engine/sampler.h"
#include "gtest/gtest.h"
#include "kernels/cuda/sampling.h"
#include "tests/gpu_model/model_parity.h"
#include "tests/kernels/gpu_test_util.h"

namespace mesa {
namespace {

using gpu::DeviceBuffer;
using gpu::testing::Download;
using gpu::testing::GpuTest;
using gpu::testing::Sync;
using gpu::testing::Upload;

// Logits as a trained model's look after fla's rounding: bf16 values, a few large ones.
std::vector<float> Logits(std::mt19937& rng, int rows, int vocab, float spread) {
  std::normal_distribution<float> n01(0.0f, 1.0f);
  std::vector<float> l(static_cast<size_t>(rows) * vocab);
  for (float& x : l) x = RoundBf16(spread * n01(rng));
  for (int r = 0; r < rows; ++r) {
    for (int k = 0; k < 5; ++k) l[static_cast<size_t>(r) * vocab + (rng() % vocab)] = RoundBf16(4.0f * spread + k);
  }
  return l;
}

// The runner's conversion, with the seen tokens appended to `seen`.
gpu::RowChoice ToRow(const PlainChoice& c, std::vector<gpu::SeenEntry>* seen) {
  gpu::RowChoice rc = cuda_runner::RowChoiceFor(c);
  rc.seen_offset = static_cast<int32_t>(seen->size());
  rc.seen_count = static_cast<int32_t>(c.seen.size());
  for (const SeenToken& s : c.seen) seen->push_back({s.token, s.count});
  return rc;
}

class DeviceSamplingTest : public GpuTest {};

TEST_F(DeviceSamplingTest, KernelMatchesTheSampler) {
  struct Case {
    int vocab, valid;
    float temperature, spread;
    int top_k = 0;
    float top_p = 1.0f, min_p = 0.0f;
    float repetition = 1.0f, presence = 0.0f, frequency = 0.0f;  // penalties of seen tokens
  };
  const Case cases[] = {{1000, 1000, 1.0f, 2.0f}, {1000, 990, 0.7f, 3.0f},
                        {32000, 31990, 1.0f, 3.0f}, {32000, 32000, 1.7f, 1.0f},
                        {50, 50, 0.1f, 1.0f}, {32000, 31990, 0.0f, 3.0f},
                        // Truncated.
                        {1000, 1000, 1.0f, 2.0f, 5}, {32000, 31990, 0.8f, 3.0f, 50},
                        {32000, 32000, 1.0f, 1.0f, 1}, {1000, 990, 1.0f, 1.0f, 2000},
                        {32000, 32000, 1.0f, 3.0f, 0, 0.9f}, {32000, 31990, 1.5f, 1.0f, 0, 0.5f},
                        {1000, 1000, 0.7f, 2.0f, 0, 0.99f}, {32000, 32000, 1.0f, 2.0f, 0, 1.0f, 0.05f},
                        {1000, 1000, 1.0f, 1.0f, 0, 1.0f, 0.3f},
                        {32000, 31990, 0.9f, 2.0f, 40, 0.9f},
                        {32000, 32000, 1.2f, 1.5f, 100, 0.95f, 0.1f},
                        // Penalties (on each row's 30 largest logits and 30 random ids, seen
                        // 1 to 3 times), with every rule.
                        {1000, 1000, 1.0f, 2.0f, 0, 1.0f, 0.0f, 1.3f, 0.5f, 0.2f},
                        {32000, 31990, 0.0f, 3.0f, 0, 1.0f, 0.0f, 1.2f},
                        {32000, 32000, 0.8f, 2.0f, 0, 0.9f, 0.0f, 1.1f, 0.3f, 0.4f},
                        {1000, 990, 1.0f, 2.0f, 20, 1.0f, 0.0f, 0.8f, -0.5f, 0.0f}};
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message() << "vocab " << c.vocab << " valid " << c.valid << " T "
                                      << c.temperature << " top_k " << c.top_k << " top_p "
                                      << c.top_p << " min_p " << c.min_p << " penalties "
                                      << c.repetition << "/" << c.presence << "/" << c.frequency);
    const bool penalties = c.repetition != 1.0f || c.presence != 0.0f || c.frequency != 0.0f;
    constexpr int kRows = 64, kRounds = 8;
    std::mt19937 rng(static_cast<uint32_t>(c.vocab + 1000 * c.temperature));
    std::vector<float> logits = Logits(rng, kRows, c.vocab, c.spread);
    if (c.temperature == 0.0f) {
      // A tie for the maximum: the first id wins; a larger logit past valid_vocab never does.
      logits[7] = logits[9] = 1000.0f;
      logits[static_cast<size_t>(c.vocab) + c.vocab - 1] = 2000.0f;
    }
    // Per row, the tokens its context saw: the 30 largest logits (where a penalty changes the
    // outcome) and 30 random ids, each once to three times.
    std::vector<std::vector<int32_t>> context(kRows);
    if (penalties) {
      for (int r = 0; r < kRows; ++r) {
        std::vector<int32_t> ids(c.vocab);
        for (int i = 0; i < c.vocab; ++i) ids[i] = i;
        const float* row = logits.data() + static_cast<size_t>(r) * c.vocab;
        std::partial_sort(ids.begin(), ids.begin() + 30, ids.end(),
                          [&](int32_t a, int32_t b) { return row[a] > row[b]; });
        for (int i = 0; i < 60; ++i) {
          const int32_t id = i < 30 ? ids[i] : static_cast<int32_t>(rng() % c.vocab);
          for (int k = 0; k <= static_cast<int>(rng() % 3); ++k) context[r].push_back(id);
        }
      }
    }
    MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_tokens, Upload(std::vector<int32_t>(kRows, -7)));
    SamplingParams sp;
    sp.temperature = c.temperature;
    sp.top_k = c.top_k;
    sp.top_p = c.top_p;
    sp.min_p = c.min_p;
    sp.repetition_penalty = c.repetition;
    sp.presence_penalty = c.presence;
    sp.frequency_penalty = c.frequency;
    const bool truncated = c.temperature > 0.0f && (c.top_k > 0 || c.top_p < 1.0f || c.min_p > 0.0f);
    int draws = 0, differ = 0;
    for (int round = 0; round < kRounds; ++round) {
      std::vector<gpu::RowChoice> rows(kRows);
      std::vector<gpu::SeenEntry> seen;
      std::vector<int32_t> want(kRows);
      std::vector<std::unique_ptr<Sampler>> hosts;  // their seen lists back the choices
      for (int r = 0; r < kRows; ++r) {
        sp.seed = static_cast<uint64_t>(round * kRows + r);
        hosts.push_back(std::make_unique<Sampler>(sp, c.valid));
        Sampler& host = *hosts.back();
        Sampler twin(sp, c.valid);
        for (int32_t t : context[r]) {
          host.Observe(t);
          twin.Observe(t);
        }
        const PlainChoice choice = host.NextChoice(0);
        ASSERT_EQ(choice.seen.empty(), !penalties);
        ASSERT_EQ(choice.kind, c.temperature == 0.0f ? PlainChoice::Kind::kGreedy
                               : truncated          ? PlainChoice::Kind::kTruncated
                                                    : PlainChoice::Kind::kSoftmax);
        rows[r] = ToRow(choice, &seen);
        // The twin draws the same number from its own stream, as Sample would.
        want[r] = twin.Sample(absl::MakeConstSpan(logits).subspan(static_cast<size_t>(r) * c.vocab, c.vocab));
      }
      MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_rows, Upload(rows));
      // Fresh logits every round: the penalties change them in place.
      MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_logits, Upload(logits));
      seen.push_back({0, 0});  // never empty (Upload of nothing)
      MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_seen, Upload(seen));
      gpu::SampleRowsParams p;
      p.rows = kRows;
      p.vocab = c.vocab;
      p.logits = d_logits.as<float>();
      p.choices = d_rows.as<gpu::RowChoice>();
      p.tokens = d_tokens.as<int32_t>();
      p.any_truncated = truncated;
      p.seen = d_seen.as<gpu::SeenEntry>();
      p.any_penalties = penalties;
      MESA_ASSERT_OK(gpu::SampleRows(p));
      MESA_ASSERT_OK(Sync());
      MESA_ASSERT_OK_AND_ASSIGN(std::vector<int32_t> got, Download<int32_t>(d_tokens, kRows));
      for (int r = 0; r < kRows; ++r) {
        ++draws;
        differ += got[r] != want[r];
        ASSERT_GE(got[r], 0);
        ASSERT_LT(got[r], c.valid);
      }
    }
    if (c.temperature == 0.0f) {
      MESA_ASSERT_OK_AND_ASSIGN(std::vector<int32_t> got, Download<int32_t>(d_tokens, kRows));
      EXPECT_EQ(got[0], 7) << "ties go to the first id";
      EXPECT_NE(got[1], c.vocab - 1) << "ids past valid_vocab are never chosen";
    }
    std::cout << "[ device sampling ] vocab " << c.vocab << " T " << c.temperature << " top_k "
              << c.top_k << " top_p " << c.top_p << " min_p " << c.min_p << " penalties "
              << c.repetition << "/" << c.presence << "/" << c.frequency << ": " << differ
              << " of " << draws << " draws differ from the host's\n";
    EXPECT_LE(differ, draws / 500);
  }
}

// Logprobs of the raw logits with the device's token: the chosen token's and the n most likely,
// against the host Sampler's. The host sums exp in fp32 in id order, the device in a tree:
// log-probabilities agree to 1e-4 (measured far closer); the top ids agree except among equal
// logits, whose order the host leaves unspecified (std::partial_sort), so ids are compared
// where no other id of the row has the same logit.
TEST_F(DeviceSamplingTest, LogprobsMatchTheSampler) {
  for (const int vocab : {1000, 32000}) {
    for (const int n_top : {1, 5, kMaxDeviceTopLogprobs}) {
      constexpr int kRows = 32;
      std::mt19937 rng(static_cast<uint32_t>(vocab + n_top));
      const std::vector<float> logits = Logits(rng, kRows, vocab, 2.0f);
      std::vector<gpu::RowChoice> rows(kRows);
      std::vector<int32_t> want(kRows);
      std::vector<float> want_logprob(kRows);
      std::vector<std::vector<TokenLogprob>> want_top(kRows);
      for (int r = 0; r < kRows; ++r) {
        SamplingParams sp;
        sp.temperature = r % 2 == 0 ? 0.0f : 0.9f;
        sp.top_p = r % 4 == 3 ? 0.9f : 1.0f;
        sp.seed = static_cast<uint64_t>(r);
        Sampler host(sp, vocab), twin(sp, vocab);
        const PlainChoice choice = host.NextChoice(n_top);
        ASSERT_EQ(choice.top_logprobs, n_top);
        std::vector<gpu::SeenEntry> unused;
        rows[r] = ToRow(choice, &unused);
        want[r] = twin.Sample(absl::MakeConstSpan(logits).subspan(static_cast<size_t>(r) * vocab, vocab),
                              n_top, &want_top[r], &want_logprob[r]);
      }
      MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_logits, Upload(logits));
      MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_rows, Upload(rows));
      MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_tokens, Upload(std::vector<int32_t>(kRows, -7)));
      MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_logprobs, Upload(std::vector<float>(kRows, NAN)));
      MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_top,
                                DeviceBuffer::Allocate(kRows * gpu::kMaxTopLogprobs * sizeof(gpu::TopLogprob)));
      gpu::SampleRowsParams p;
      p.rows = kRows;
      p.vocab = vocab;
      p.logits = d_logits.as<float>();
      p.choices = d_rows.as<gpu::RowChoice>();
      p.tokens = d_tokens.as<int32_t>();
      p.any_truncated = true;
      p.logprobs = d_logprobs.as<float>();
      p.top = d_top.as<gpu::TopLogprob>();
      p.any_logprobs = true;
      MESA_ASSERT_OK(gpu::SampleRows(p));
      MESA_ASSERT_OK(Sync());
      MESA_ASSERT_OK_AND_ASSIGN(std::vector<int32_t> got, Download<int32_t>(d_tokens, kRows));
      MESA_ASSERT_OK_AND_ASSIGN(std::vector<float> got_logprob, Download<float>(d_logprobs, kRows));
      std::vector<gpu::TopLogprob> got_top(kRows * gpu::kMaxTopLogprobs);
      MESA_ASSERT_OK(d_top.CopyToHost(got_top.data(), got_top.size() * sizeof(gpu::TopLogprob)));
      float worst = 0.0f;
      for (int r = 0; r < kRows; ++r) {
        SCOPED_TRACE(::testing::Message() << "vocab " << vocab << " top " << n_top << " row " << r);
        ASSERT_EQ(got[r], want[r]);
        EXPECT_NEAR(got_logprob[r], want_logprob[r], 1e-4f);
        worst = std::max(worst, std::fabs(got_logprob[r] - want_logprob[r]));
        ASSERT_EQ(want_top[r].size(), static_cast<size_t>(n_top));
        for (int a = 0; a < n_top; ++a) {
          const gpu::TopLogprob& g = got_top[r * gpu::kMaxTopLogprobs + a];
          EXPECT_NEAR(g.logprob, want_top[r][a].logprob, 1e-4f) << "entry " << a;
          worst = std::max(worst, std::fabs(g.logprob - want_top[r][a].logprob));
          // Tied with any other id of the row (inside the list or just past it)?
          const float* row = logits.data() + static_cast<size_t>(r) * vocab;
          const float value = row[want_top[r][a].token];
          const bool tied = std::count(row, row + vocab, value) > 1;
          if (!tied) {
            EXPECT_EQ(g.token, want_top[r][a].token) << "entry " << a;
          }
        }
      }
      std::cout << "[ device logprobs ] vocab " << vocab << " top " << n_top
                << ": largest difference from the host's " << worst << "\n";
    }
  }
}

TEST_F(DeviceSamplingTest, HostRowsAreLeftToTheCaller) {
  const std::vector<float> logits(2 * 10, 1.0f);
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_logits, Upload(logits));
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_tokens, Upload(std::vector<int32_t>(2, 5)));
  std::vector<gpu::RowChoice> rows(2);
  rows[1].kind = 1;
  MESA_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_rows, Upload(rows));
  gpu::SampleRowsParams p;
  p.rows = 2;
  p.vocab = 10;
  p.logits = d_logits.as<float>();
  p.choices = d_rows.as<gpu::RowChoice>();
  p.tokens = d_tokens.as<int32_t>();
  MESA_ASSERT_OK(gpu::SampleRows(p));
  MESA_ASSERT_OK_AND_ASSIGN(std::vector<int32_t> got, Download<int32_t>(d_tokens, 2));
  EXPECT_EQ(got[0], -1);
  EXPECT_EQ(got[1], 0);  // all equal: the first id
}

// A CUDA runner on the first test checkpoint, 6 slots.
std::unique_ptr<CudaModelRunner> MakeRunner() { return testing::MakeFirstCaseRunner(6); }

// The runner: DecodeAndChoose picks, for rows with a plain choice, the token the host would
// pick from the logits Decode returns for the same step; other rows get their logits.
TEST_F(DeviceSamplingTest, RunnerChoosesWhatTheHostWould) {
  auto make = [] { return MakeRunner(); };

  auto logits_runner = make();
  auto choosing_runner = make();
  ASSERT_TRUE(logits_runner && choosing_runner);
  const int32_t vocab = logits_runner->config().vocab_size;
  const CgControl cg{CgMode::kFixed, 30, 0.0f};
  // Rows: greedy, softmax T 0.8, a pad, top-k 5 with logprobs (the host's), softmax T 1.3 with
  // top-p 0.9 (the truncation kernel).
  const std::vector<SlotId> slots = {2, kPadSlot, 0, 4, 1};
  std::vector<SamplingParams> params(5);
  params[0].temperature = 0.0f;
  params[2].temperature = 0.8f;
  params[2].repetition_penalty = 1.3f;  // with a context: the seen-token upload
  params[2].frequency_penalty = 0.2f;
  params[3].top_k = 5;
  params[4].temperature = 1.3f;
  params[4].top_p = 0.9f;
  int device_chosen = 0, checked = 0;
  for (int step = 0; step < 6; ++step) {
    std::vector<DecodeRow> rows;
    std::vector<PlainChoice> choices;
    std::vector<PlainChoice> twin_choices;
    std::vector<Sampler> twins;
    std::vector<std::unique_ptr<Sampler>> samplers;  // their seen lists back the choices
    for (size_t i = 0; i < slots.size(); ++i) {
      rows.push_back({slots[i], static_cast<int32_t>((11 * step + 5 * i + 1) % vocab), cg});
      params[i].seed = 100 * step + i;
      samplers.push_back(std::make_unique<Sampler>(params[i], vocab));
      twins.emplace_back(params[i], vocab);
      for (int32_t t : {1, 2, 3, 5, 8, 13, 21, 3, 5, rows.back().token}) {
        samplers.back()->Observe(t % vocab);
        twins.back().Observe(t % vocab);
      }
      // Row 3 asks for more logprobs than the device reports (the host's); row 0 for 5.
      const int32_t top_logprobs = i == 3 ? kMaxDeviceTopLogprobs + 1 : i == 0 ? 5 : 0;
      choices.push_back(samplers.back()->NextChoice(top_logprobs));
      twin_choices.push_back(twins.back().NextChoice(top_logprobs));
    }
    DecodeResult plain, chosen;
    ASSERT_TRUE(logits_runner->Decode(rows, &plain).ok());
    ASSERT_TRUE(choosing_runner->DecodeAndChoose(rows, choices, &chosen).ok());
    ASSERT_EQ(chosen.tokens.size(), rows.size());
    EXPECT_EQ(chosen.tokens[1], -1) << "pad row";
    ASSERT_EQ(chosen.logits.size(), rows.size() * vocab) << "a host row needs logits";
    EXPECT_EQ(*std::max_element(chosen.logits.begin() + vocab, chosen.logits.begin() + 2 * vocab), 0.0f);
    EXPECT_EQ(*std::min_element(chosen.logits.begin() + vocab, chosen.logits.begin() + 2 * vocab), 0.0f);
    EXPECT_EQ(chosen.tokens[3], -1) << "a row that wants 21 logprobs is sampled on the host";
    ASSERT_EQ(chosen.logprobs.size(), rows.size());
    ASSERT_EQ(chosen.top_logprobs.size(), rows.size() * kMaxDeviceTopLogprobs);
    for (size_t i = 0; i < rows.size(); ++i) {
      const absl::Span<const float> want_logits =
          absl::MakeConstSpan(plain.logits).subspan(i * vocab, vocab);
      const absl::Span<const float> got_logits =
          absl::MakeConstSpan(chosen.logits).subspan(i * vocab, vocab);
      if (chosen.tokens[i] >= 0) {
        ++device_chosen;
        std::vector<TokenLogprob> top;
        float logprob = 0.0f;
        const int32_t n_top = twin_choices[i].top_logprobs;
        const int32_t host = twins[i].Sample(want_logits, n_top, n_top > 0 ? &top : nullptr,
                                             n_top > 0 ? &logprob : nullptr, &twin_choices[i]);
        ++checked;
        EXPECT_EQ(chosen.tokens[i], host) << "step " << step << " row " << i;
        if (n_top > 0) {
          EXPECT_NEAR(chosen.logprobs[i], logprob, 1e-4f) << "row " << i;
          for (int a = 0; a < n_top; ++a) {
            EXPECT_NEAR(chosen.top_logprobs[i * kMaxDeviceTopLogprobs + a].logprob, top[a].logprob, 1e-4f);
          }
        }
      } else {
        // The logits of host rows are the same step's (bit for bit: the same kernels).
        EXPECT_EQ(std::vector<float>(got_logits.begin(), got_logits.end()),
                  std::vector<float>(want_logits.begin(), want_logits.end()))
            << "step " << step << " row " << i;
      }
    }
  }
  EXPECT_EQ(device_chosen, 6 * 3);
  EXPECT_EQ(checked, device_chosen);

  // Every live row chosen on the device: no logits come back at all.
  std::vector<DecodeRow> rows = {{0, 5, cg}, {kPadSlot, 0, cg}, {3, 9, cg}};
  PlainChoice greedy;
  greedy.kind = PlainChoice::Kind::kGreedy;
  greedy.valid_vocab = vocab;
  DecodeResult all_chosen;
  ASSERT_TRUE(choosing_runner->DecodeAndChoose(rows, {greedy, greedy, greedy}, &all_chosen).ok());
  EXPECT_TRUE(all_chosen.logits.empty());
  ASSERT_EQ(all_chosen.tokens.size(), 3u);
  EXPECT_GE(all_chosen.tokens[0], 0);
  EXPECT_EQ(all_chosen.tokens[1], -1);
  EXPECT_GE(all_chosen.tokens[2], 0);
}

// Penalised rows whose seen tokens do not fit one call's upload (2^19) are sampled on the host:
// the runner returns their logits and no token.
TEST_F(DeviceSamplingTest, PenaltiesBeyondTheUploadGoToTheHost) {
  auto runner = MakeRunner();
  ASSERT_TRUE(runner);
  const int32_t vocab = runner->config().vocab_size;
  std::vector<SeenToken> seen((1 << 19) + 1);
  for (size_t i = 0; i < seen.size(); ++i) seen[i] = {static_cast<int32_t>(i % vocab), 1};
  PlainChoice penalised;
  penalised.kind = PlainChoice::Kind::kGreedy;
  penalised.valid_vocab = vocab;
  penalised.repetition_penalty = 1.2f;
  penalised.seen = seen;
  PlainChoice greedy;
  greedy.kind = PlainChoice::Kind::kGreedy;
  greedy.valid_vocab = vocab;
  const CgControl cg{CgMode::kFixed, 30, 0.0f};
  const std::vector<DecodeRow> rows = {{0, 5, cg}, {1, 7, cg}};
  DecodeResult result;
  ASSERT_TRUE(runner->DecodeAndChoose(rows, {penalised, greedy}, &result).ok());
  EXPECT_EQ(result.tokens[0], -1);
  EXPECT_GE(result.tokens[1], 0);
  ASSERT_EQ(result.logits.size(), 2u * vocab);
  EXPECT_NE(*std::max_element(result.logits.begin(), result.logits.begin() + vocab), 0.0f);
}

// Prefill chooses a prompt's first generated token on the device when the request's choice
// allows (PrefillRequest::choice): the token the host would pick from the logits Prefill
// returns without a choice, with the same draw; rules it cannot take ahead (penalties) and
// all_logits requests get their logits as before.
TEST_F(DeviceSamplingTest, PrefillChoosesWhatTheHostWould) {
  auto logits_runner = MakeRunner();
  auto choosing_runner = MakeRunner();
  ASSERT_TRUE(logits_runner && choosing_runner);
  const int32_t vocab = logits_runner->config().vocab_size;
  const CgControl cg{CgMode::kFixed, 30, 0.0f};
  // Greedy with 3 logprobs, softmax T 0.8, softmax T 1.3 with top-p 0.9, greedy with a
  // repetition penalty (the host's), and an all_logits request with a greedy choice.
  std::vector<SamplingParams> params(5);
  params[0].temperature = 0.0f;
  params[1].temperature = 0.8f;
  params[2].temperature = 1.3f;
  params[2].top_p = 0.9f;
  params[3].temperature = 0.0f;
  params[3].repetition_penalty = 1.3f;
  params[4].temperature = 0.0f;
  const std::vector<int32_t> top_logprobs = {3, 0, 0, 0, 0};
  int checked = 0;
  for (int round = 0; round < 4; ++round) {
    std::vector<std::vector<int32_t>> prompts(5);
    std::vector<PrefillRequest> plain(5), with_choice(5);
    std::vector<Sampler> samplers, twins;
    std::vector<PlainChoice> twin_choices;
    for (int i = 0; i < 5; ++i) {
      for (int t = 0; t < 9 + 13 * i + round; ++t) prompts[i].push_back((7 * t + 31 * i + round) % vocab);
      params[i].seed = 50 * round + i;
      samplers.emplace_back(params[i], vocab);
      twins.emplace_back(params[i], vocab);
      for (int32_t t : prompts[i]) {
        samplers.back().Observe(t);
        twins.back().Observe(t);
      }
      plain[i].slot = i;
      plain[i].tokens = prompts[i];
      plain[i].cg = cg;
      plain[i].all_logits = i == 4;
      with_choice[i] = plain[i];
      with_choice[i].choice = samplers.back().NextChoice(top_logprobs[i]);
      twin_choices.push_back(twins.back().NextChoice(top_logprobs[i]));
    }
    std::vector<PrefillResult> want(5), got(5);
    ASSERT_TRUE(logits_runner->Prefill(plain, absl::MakeSpan(want)).ok());
    ASSERT_TRUE(choosing_runner->Prefill(with_choice, absl::MakeSpan(got)).ok());
    for (int i = 0; i < 5; ++i) {
      SCOPED_TRACE(::testing::Message() << "round " << round << " request " << i);
      EXPECT_EQ(want[i].token, -1);
      if (i >= 3) {  // the penalised and the all_logits request: logits, no token
        EXPECT_EQ(got[i].token, -1);
        EXPECT_EQ(got[i].logits, want[i].logits);
        continue;
      }
      ASSERT_GE(got[i].token, 0);
      EXPECT_TRUE(got[i].logits.empty());
      const std::vector<float>& l = want[i].logits;
      std::vector<TokenLogprob> top;
      float logprob = 0.0f;
      const int32_t n_top = top_logprobs[i];
      const int32_t host = twins[i].Sample(l, n_top, n_top > 0 ? &top : nullptr,
                                           n_top > 0 ? &logprob : nullptr, &twin_choices[i]);
      EXPECT_EQ(got[i].token, host);
      ++checked;
      if (n_top > 0) {
        EXPECT_NEAR(got[i].logprob, logprob, 1e-4f);
        ASSERT_EQ(got[i].top.size(), static_cast<size_t>(n_top));
        for (int a = 0; a < n_top; ++a) EXPECT_NEAR(got[i].top[a].logprob, top[a].logprob, 1e-4f);
      }
    }
    for (int i = 0; i < 5; ++i) {  // the next round starts from fresh slots
      ASSERT_TRUE(logits_runner->ResetSlot(i).ok());
      ASSERT_TRUE(choosing_runner->ResetSlot(i).ok());
    }
  }
  EXPECT_EQ(checked, 4 * 3);
}

}  // namespace
}  // namespace mesa
