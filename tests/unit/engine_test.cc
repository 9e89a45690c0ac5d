// The serving engine with the real CPU runner on a small random model: continuous batching,
// stop conditions, cancellation, deadlines, queue limits, slow readers, drain, slot hygiene.
// Every test runs twice: on the CPU runner as is, and with its greedy and softmax tokens chosen
// "on the device" in pipelined steps (tests/testing/choosing_runner.h), as on a GPU.
#include <condition_variable>
#include <mutex>

#include "engine/engine.h"
#include "engine/stop_matcher.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/choosing_runner.h"
#include "tests/testing/random_checkpoint.h"
#include "tests/testing/temp_checkpoint.h"

namespace mesa {
namespace {

using ::testing::HasSubstr;

// Collects events; optionally stops "reading" (its backlog then grows until Release()).
class TestSink : public GenerationSink {
 public:
  explicit TestSink(bool stalled = false) : stalled_(stalled) {}
  void Push(GenerationEvent event) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (stalled_) {
      ++backlog_;
    }
    for (const TokenChoice& c : event.tokens) tokens_.push_back(c.token);
    text_ += event.text;
    ++events_;
    if (event.final) {
      final_ = event;
      done_ = true;
      cv_.notify_all();
    }
  }
  size_t Backlog() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return backlog_;
  }
  void Release() {
    std::lock_guard<std::mutex> lock(mu_);
    stalled_ = false;
    backlog_ = 0;
  }
  bool Wait(absl::Duration timeout = absl::Seconds(60)) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, absl::ToChronoNanoseconds(timeout), [&] { return done_; });
  }
  std::vector<int32_t> tokens() const {
    std::lock_guard<std::mutex> lock(mu_);
    return tokens_;
  }
  std::string text() const {
    std::lock_guard<std::mutex> lock(mu_);
    return text_;
  }
  GenerationEvent final_event() const {
    std::lock_guard<std::mutex> lock(mu_);
    return final_;
  }
  int events() const {
    std::lock_guard<std::mutex> lock(mu_);
    return events_;
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stalled_;
  size_t backlog_ = 0;
  std::vector<int32_t> tokens_;
  std::string text_;
  GenerationEvent final_;
  bool done_ = false;
  int events_ = 0;
};

class EngineTest : public ::testing::TestWithParam<bool> {
 protected:
  static void SetUpTestSuite() {
    MesaConfig c = testing::TinyConfig();
    c.vocab_size = 400;
    auto checkpoint = testing::TempCheckpoint::Create("engine", c);
    ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
    checkpoint_ = checkpoint->release();
    auto tok = Tokenizer::Load(MESA_TESTDATA_DIR "/tokenizer/tiny.model", 400);
    ASSERT_TRUE(tok.ok()) << tok.status();
    tokenizer_ = tok->release();
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    delete checkpoint_;
  }

  std::unique_ptr<Engine> MakeEngine(int32_t slots, EngineOptions options = {}) {
    auto cpu = checkpoint_->CpuRunner(slots);
    EXPECT_TRUE(cpu.ok()) << cpu.status();
    if (!cpu.ok()) return nullptr;
    std::unique_ptr<ModelRunner> runner = std::move(*cpu);
    if (GetParam()) runner = std::make_unique<testing::ChoosingRunner>(std::move(runner), slots);
    options.prefill_chunk = 64;
    options.prefill_budget = 128;
    auto engine = Engine::Create(std::move(runner), tokenizer_, nullptr, options);
    EXPECT_TRUE(engine.ok()) << engine.status();
    return std::move(*engine);
  }

  static GenerationRequest Greedy(std::vector<int32_t> prompt, int32_t max_new) {
    GenerationRequest r;
    r.prompt = std::move(prompt);
    r.sampling.temperature = 0.0f;
    r.stopping.max_new_tokens = max_new;
    r.stopping.ignore_eos = true;
    return r;
  }

  static std::vector<int32_t> Prompt(int n, int seed) {
    std::vector<int32_t> p = {1};
    for (int i = 1; i < n; ++i) p.push_back(3 + (i * 37 + seed * 101) % 390);
    return p;
  }

  static void WaitIdle(Engine& e) {
    for (int i = 0; i < 400 && !e.Idle(); ++i) absl::SleepFor(absl::Milliseconds(10));
  }

  static testing::TempCheckpoint* checkpoint_;
  static Tokenizer* tokenizer_;
};

testing::TempCheckpoint* EngineTest::checkpoint_ = nullptr;
Tokenizer* EngineTest::tokenizer_ = nullptr;

TEST_P(EngineTest, GeneratesToTheLengthLimitWithSummary) {
  auto engine = MakeEngine(2);
  auto sink = std::make_shared<TestSink>();
  ASSERT_TRUE(engine->Submit(Greedy(Prompt(150, 1), 12), sink).ok());
  ASSERT_TRUE(sink->Wait());
  const GenerationEvent f = sink->final_event();
  EXPECT_TRUE(f.status.ok()) << f.status;
  EXPECT_EQ(f.finish, FinishReason::kLength);
  EXPECT_EQ(sink->tokens().size(), 12u);
  EXPECT_EQ(f.summary.prompt_tokens, 150);
  EXPECT_EQ(f.summary.completion_tokens, 12);
  // Prompt (150 tokens) and 11 decode steps (the first token comes from prefill), each with
  // 2 layers x 4 heads of CG solves.
  EXPECT_EQ(f.summary.cg.solves, (150u + 11u) * 2 * 4);
  EXPECT_GT(f.summary.cg.iterations, 0u);
  EXPECT_GT(f.summary.total_seconds, 0.0);
  auto text = tokenizer_->Decode(sink->tokens());
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(sink->text(), *text);
  WaitIdle(*engine);
  EXPECT_EQ(engine->Health().slots_used, 0);
}

TEST_P(EngineTest, GreedyTokensDoNotDependOnTheBatch) {
  std::vector<int32_t> alone;
  {
    auto engine = MakeEngine(1);
    auto sink = std::make_shared<TestSink>();
    ASSERT_TRUE(engine->Submit(Greedy(Prompt(90, 7), 20), sink).ok());
    ASSERT_TRUE(sink->Wait());
    alone = sink->tokens();
  }
  auto engine = MakeEngine(12);
  std::vector<std::shared_ptr<TestSink>> others;
  for (int i = 0; i < 11; ++i) {
    auto s = std::make_shared<TestSink>();
    GenerationRequest r = Greedy(Prompt(30 + 23 * i, 100 + i), 25);
    r.sampling.temperature = 0.9f;
    r.sampling.seed = i;
    ASSERT_TRUE(engine->Submit(std::move(r), s).ok());
    others.push_back(s);
  }
  auto sink = std::make_shared<TestSink>();
  ASSERT_TRUE(engine->Submit(Greedy(Prompt(90, 7), 20), sink).ok());
  ASSERT_TRUE(sink->Wait());
  EXPECT_EQ(sink->tokens(), alone);
  for (auto& s : others) ASSERT_TRUE(s->Wait());
}

TEST_P(EngineTest, StopStringIsNotReturnedAndEndsGeneration) {
  auto engine = MakeEngine(1);
  // Find what greedy generation says, then stop on a piece of it.
  auto probe = std::make_shared<TestSink>();
  ASSERT_TRUE(engine->Submit(Greedy(Prompt(20, 3), 30), probe).ok());
  ASSERT_TRUE(probe->Wait());
  const std::string full = probe->text();
  ASSERT_GT(full.size(), 6u);
  const std::string stop = full.substr(full.size() / 2, 3);
  GenerationRequest r = Greedy(Prompt(20, 3), 30);
  r.stopping.stop_strings = {stop};
  auto sink = std::make_shared<TestSink>();
  ASSERT_TRUE(engine->Submit(std::move(r), sink).ok());
  ASSERT_TRUE(sink->Wait());
  EXPECT_EQ(sink->final_event().finish, FinishReason::kStopString);
  EXPECT_EQ(sink->text(), full.substr(0, full.find(stop)));
}

TEST_P(EngineTest, StopTokenIsReturnedAndEndsGeneration) {
  auto engine = MakeEngine(1);
  auto probe = std::make_shared<TestSink>();
  ASSERT_TRUE(engine->Submit(Greedy(Prompt(20, 4), 10), probe).ok());
  ASSERT_TRUE(probe->Wait());
  const std::vector<int32_t> full = probe->tokens();
  GenerationRequest r = Greedy(Prompt(20, 4), 10);
  r.stopping.stop_token_ids = {full[4]};
  auto sink = std::make_shared<TestSink>();
  ASSERT_TRUE(engine->Submit(std::move(r), sink).ok());
  ASSERT_TRUE(sink->Wait());
  EXPECT_EQ(sink->final_event().finish, FinishReason::kStopToken);
  const size_t first = std::find(full.begin(), full.end(), full[4]) - full.begin();
  EXPECT_EQ(sink->tokens(), std::vector<int32_t>(full.begin(), full.begin() + first + 1));
}

TEST_P(EngineTest, CancelEndsTheRequestAndFreesItsSlot) {
  auto engine = MakeEngine(1);
  auto sink = std::make_shared<TestSink>();
  auto id = engine->Submit(Greedy(Prompt(20, 5), 100000), sink);
  ASSERT_TRUE(id.ok());
  while (sink->events() < 3) absl::SleepFor(absl::Milliseconds(1));
  engine->Cancel(*id, absl::CancelledError("cancelled by the client"));
  ASSERT_TRUE(sink->Wait());
  EXPECT_EQ(sink->final_event().status.code(), absl::StatusCode::kCancelled);
  WaitIdle(*engine);
  EXPECT_EQ(engine->Health().slots_used, 0);
  // The freed slot serves the next request normally.
  auto next = std::make_shared<TestSink>();
  ASSERT_TRUE(engine->Submit(Greedy(Prompt(20, 5), 5), next).ok());
  ASSERT_TRUE(next->Wait());
  EXPECT_TRUE(next->final_event().status.ok());
}

TEST_P(EngineTest, DeadlineEndsRunningAndWaitingRequests) {
  auto engine = MakeEngine(1);
  GenerationRequest running = Greedy(Prompt(20, 6), 100000);
  running.deadline = absl::Now() + absl::Milliseconds(200);
  GenerationRequest waiting = Greedy(Prompt(20, 7), 10);
  waiting.deadline = absl::Now() + absl::Milliseconds(100);
  auto a = std::make_shared<TestSink>(), b = std::make_shared<TestSink>();
  ASSERT_TRUE(engine->Submit(std::move(running), a).ok());
  ASSERT_TRUE(engine->Submit(std::move(waiting), b).ok());
  ASSERT_TRUE(a->Wait());
  ASSERT_TRUE(b->Wait());
  EXPECT_EQ(a->final_event().status.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(std::string(a->final_event().status.message()), HasSubstr("generated tokens"));
  EXPECT_EQ(b->final_event().status.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(std::string(b->final_event().status.message()), HasSubstr("waiting"));
}

TEST_P(EngineTest, FullWaitingQueueIsResourceExhausted) {
  EngineOptions o;
  o.max_waiting = 2;
  auto engine = MakeEngine(1, o);
  std::vector<std::shared_ptr<TestSink>> sinks;
  int rejected = 0;
  std::string message;
  for (int i = 0; i < 8; ++i) {
    auto s = std::make_shared<TestSink>();
    auto id = engine->Submit(Greedy(Prompt(20, i), 200), s);
    if (!id.ok()) {
      ++rejected;
      EXPECT_EQ(id.status().code(), absl::StatusCode::kResourceExhausted);
      message = std::string(id.status().message());
    } else {
      sinks.push_back(s);
    }
  }
  EXPECT_GE(rejected, 5);
  EXPECT_THAT(message, HasSubstr("limit is 2"));
  engine->CancelAll(absl::CancelledError("test over"));
  for (auto& s : sinks) ASSERT_TRUE(s->Wait());
}

TEST_P(EngineTest, SlowReaderPausesOnlyItself) {
  EngineOptions o;
  o.stream_buffer = 4;
  auto engine = MakeEngine(2, o);
  auto slow = std::make_shared<TestSink>(/*stalled=*/true);
  auto fast = std::make_shared<TestSink>();
  ASSERT_TRUE(engine->Submit(Greedy(Prompt(20, 8), 40), slow).ok());
  ASSERT_TRUE(engine->Submit(Greedy(Prompt(20, 9), 40), fast).ok());
  ASSERT_TRUE(fast->Wait());
  EXPECT_EQ(fast->tokens().size(), 40u);
  EXPECT_LE(slow->events(), 5) << "the stalled request should have paused at its buffer bound";
  slow->Release();
  ASSERT_TRUE(slow->Wait());
  EXPECT_EQ(slow->tokens().size(), 40u);
}

TEST_P(EngineTest, DrainRefusesNewWorkAndFinishesRunning) {
  auto engine = MakeEngine(1);
  auto a = std::make_shared<TestSink>();
  ASSERT_TRUE(engine->Submit(Greedy(Prompt(20, 10), 30), a).ok());
  engine->StartDrain();
  auto refused = engine->Submit(Greedy(Prompt(20, 11), 3), std::make_shared<TestSink>());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable);
  ASSERT_TRUE(a->Wait());
  EXPECT_TRUE(a->final_event().status.ok());
  EXPECT_TRUE(engine->Health().draining);
}

TEST_P(EngineTest, HigherPriorityIsAdmittedFirst) {
  auto engine = MakeEngine(1);
  auto blocker = std::make_shared<TestSink>();
  ASSERT_TRUE(engine->Submit(Greedy(Prompt(20, 12), 30), blocker).ok());
  auto low = std::make_shared<TestSink>(), high = std::make_shared<TestSink>();
  GenerationRequest lr = Greedy(Prompt(20, 13), 3), hr = Greedy(Prompt(20, 14), 3);
  hr.priority = 5;
  ASSERT_TRUE(engine->Submit(std::move(lr), low).ok());
  ASSERT_TRUE(engine->Submit(std::move(hr), high).ok());
  ASSERT_TRUE(low->Wait());
  ASSERT_TRUE(high->Wait());
  EXPECT_LT(high->final_event().summary.queue_seconds, low->final_event().summary.queue_seconds);
}

INSTANTIATE_TEST_SUITE_P(Runners, EngineTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "PipelinedDeviceChoice" : "CpuRunner";
                         });

TEST(StopMatcherTest, HoldsBackPossibleStopPrefixes) {
  StopMatcher m({"</s>", "END"});
  bool stopped = false;
  EXPECT_EQ(m.Append("Hello <", &stopped), "Hello ");
  EXPECT_FALSE(stopped);
  EXPECT_EQ(m.Append("/x", &stopped), "</x");
  EXPECT_EQ(m.Append(" EN", &stopped), " ");
  EXPECT_EQ(m.Append("D and more", &stopped), "");
  EXPECT_TRUE(stopped);
  StopMatcher n({"stop"});
  EXPECT_EQ(n.Append("sto", &stopped), "");
  EXPECT_EQ(n.Flush(), "sto");
  StopMatcher none({});
  EXPECT_EQ(none.Append("anything", &stopped), "anything");
}

}  // namespace
}  // namespace mesa
