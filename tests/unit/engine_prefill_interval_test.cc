// EngineOptions::prefill_interval: while requests decode, prompts that arrive one per step are
// prefilled together every few steps instead of one launch each; the tokens stay the same, and
// with nothing decoding (or a full launch) a prompt starts at once.
#include <memory>
#include <utility>
#include <vector>

#include "engine/engine.h"
#include "gtest/gtest.h"
#include "tests/testing/choosing_runner.h"
#include "tests/testing/collecting_sink.h"
#include "tests/testing/random_checkpoint.h"
#include "tests/testing/temp_checkpoint.h"

namespace mesa {
namespace {

using testing::ChoosingRunner;
using Collect = testing::CollectingSink;
using testing::TokenActionSink;

GenerationRequest Request(int i, int max_new) {
  GenerationRequest r;
  for (int t = 0; t < 8 + 5 * i; ++t) r.prompt.push_back(1 + (t * 11 + i * 7) % 90);
  r.sampling.temperature = i % 2 == 0 ? 0.0f : 0.9f;
  r.sampling.seed = 40 + i;
  r.stopping.max_new_tokens = max_new;
  r.stopping.ignore_eos = true;
  return r;
}

struct Outcome {
  std::vector<std::vector<int32_t>> tokens;  // request 0 (the long one), then the late ones
  int64_t prefill_calls = 0;
};

class EnginePrefillIntervalTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto c = testing::TempCheckpoint::Create("engine_prefill_interval", testing::TinyConfig());
    ASSERT_TRUE(c.ok()) << c.status();
    checkpoint_ = c->release();
  }
  static void TearDownTestSuite() { delete checkpoint_; }

  // Request 0 decodes 40 tokens; its tokens 2 to 7 each submit one more request (6 in all,
  // one per engine step), which then run beside it.
  static Outcome Run(int32_t interval, bool pipelined) {
    auto cpu = checkpoint_->CpuRunner(8);
    EXPECT_TRUE(cpu.ok()) << cpu.status();
    if (!cpu.ok()) return {};
    auto owned = std::make_unique<ChoosingRunner>(std::move(*cpu), /*pipelined_rows=*/8);
    ChoosingRunner* runner = owned.get();
    EngineOptions options;
    options.prefill_chunk = 64;
    options.prefill_budget = 256;
    options.prefill_interval = interval;
    options.pipeline_decode = pipelined;
    auto engine = Engine::Create(std::move(owned), nullptr, nullptr, options);
    EXPECT_TRUE(engine.ok()) << engine.status();
    if (!engine.ok()) return {};
    auto first = std::make_shared<TokenActionSink>();
    std::vector<std::shared_ptr<Collect>> sinks = {first};
    for (int i = 1; i <= 6; ++i) sinks.push_back(std::make_shared<Collect>());
    first->on_token = [&](size_t n) {
      if (n >= 2 && n <= 7) {
        EXPECT_TRUE((*engine)->Submit(Request(static_cast<int>(n) - 1, 12), sinks[n - 1]).ok());
      }
    };
    EXPECT_TRUE((*engine)->Submit(Request(0, 40), first).ok());
    Outcome out;
    for (auto& s : sinks) {
      const GenerationEvent f = s->Wait();
      EXPECT_TRUE(f.final && f.status.ok()) << f.status;
      out.tokens.push_back(s->tokens());
    }
    out.prefill_calls = runner->prefill_calls();
    return out;
  }

  static testing::TempCheckpoint* checkpoint_;
};

testing::TempCheckpoint* EnginePrefillIntervalTest::checkpoint_ = nullptr;

TEST_F(EnginePrefillIntervalTest, LateArrivalsShareLaunchesAndGetTheSameTokens) {
  for (bool pipelined : {false, true}) {
    SCOPED_TRACE(pipelined ? "pipelined" : "one step at a time");
    const Outcome every = Run(1, pipelined);
    const Outcome fourth = Run(4, pipelined);
    ASSERT_EQ(every.tokens.size(), 7u);
    EXPECT_EQ(every.tokens[0].size(), 40u);
    for (size_t i = 1; i < 7; ++i) EXPECT_EQ(every.tokens[i].size(), 12u) << i;
    EXPECT_EQ(fourth.tokens, every.tokens);
    // One launch for request 0 and one per late request, against one for request 0 and one
    // per four steps for the six that arrive over six steps.
    EXPECT_EQ(every.prefill_calls, 7);
    EXPECT_LE(fourth.prefill_calls, 3);
    EXPECT_GE(fourth.prefill_calls, 2);
  }
}

TEST_F(EnginePrefillIntervalTest, ALongPromptsLaterChunksDoNotWait) {
  // A 300-token prompt (five 64-token chunks) arrives while another request decodes, with an
  // interval of 8: its first chunk may wait up to 8 steps, the other four go one per step.
  // Waiting 8 steps per chunk would take about 40.
  auto cpu = checkpoint_->CpuRunner(4);
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  EngineOptions options;
  options.prefill_chunk = 64;
  options.prefill_budget = 256;
  options.prefill_interval = 8;
  auto engine = Engine::Create(std::move(*cpu), nullptr, nullptr, options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  auto first = std::make_shared<TokenActionSink>();
  auto long_sink = std::make_shared<TokenActionSink>();
  size_t submitted_at = 0, first_token_at = 0;
  long_sink->on_token = [&](size_t n) {
    if (n == 1) first_token_at = first->count();
  };
  first->on_token = [&](size_t n) {
    if (n != 2) return;
    GenerationRequest r = Request(1, 4);
    r.prompt.clear();
    for (int t = 0; t < 300; ++t) r.prompt.push_back(1 + (t * 17) % 90);
    submitted_at = n;
    EXPECT_TRUE((*engine)->Submit(std::move(r), long_sink).ok());
  };
  ASSERT_TRUE((*engine)->Submit(Request(0, 80), first).ok());
  EXPECT_TRUE(first->Wait().status.ok());
  EXPECT_TRUE(long_sink->Wait().status.ok());
  ASSERT_EQ(submitted_at, 2u);
  ASSERT_GT(first_token_at, submitted_at);
  EXPECT_LE(first_token_at - submitted_at, 8u + 5u + 2u) << "steps from arrival to first token";
}

TEST_F(EnginePrefillIntervalTest, ARequestAloneStartsAtOnce) {
  // Nothing decodes: the prompt is prefilled in the first step whatever the interval.
  auto cpu = checkpoint_->CpuRunner(2);
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  EngineOptions options;
  options.prefill_interval = 50;
  auto engine = Engine::Create(std::move(*cpu), nullptr, nullptr, options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  for (int i = 0; i < 3; ++i) {  // one after another: each finds nothing decoding
    auto sink = std::make_shared<Collect>();
    ASSERT_TRUE((*engine)->Submit(Request(i, 3), sink).ok());
    const GenerationEvent f = sink->Wait();
    EXPECT_TRUE(f.status.ok()) << f.status;
    EXPECT_EQ(sink->count(), 3u);
    // Its first token came from its own prefill step: no decode step waited before it.
    EXPECT_LT(f.summary.time_to_first_token_seconds, 5.0);
  }
}

TEST_F(EnginePrefillIntervalTest, AnIntervalOutOfRangeIsRefused) {
  for (int32_t bad : {0, -1, 1001}) {
    auto cpu = checkpoint_->CpuRunner(1);
    ASSERT_TRUE(cpu.ok());
    EngineOptions options;
    options.prefill_interval = bad;
    auto engine = Engine::Create(std::move(*cpu), nullptr, nullptr, options);
    ASSERT_FALSE(engine.ok());
    EXPECT_EQ(engine.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(engine.status().message().find("prefill interval"), absl::string_view::npos);
  }
}

}  // namespace
}  // namespace mesa
