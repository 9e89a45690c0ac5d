// Pipelined decode (EngineOptions::pipeline_decode): the engine starts a step before handling
// the previous step's tokens, which the runner feeds on the device. The tokens must be those of
// unpipelined steps whatever ends, arrives or samples on the host in between. The runner is
// the CPU runner with tokens chosen "on the device" (tests/testing/choosing_runner.h).
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/engine.h"
#include "engine/fault_injection.h"
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

struct Outcome {
  std::vector<std::vector<int32_t>> tokens;
  std::vector<FinishReason> finish;
  int64_t started_steps = 0, fed_rows = 0;
  int32_t slots_used_after = -1;
  std::vector<absl::Status> status;
  EngineHealth health;
};

class EnginePipelineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto c = testing::TempCheckpoint::Create("engine_pipeline", testing::TinyConfig());
    ASSERT_TRUE(c.ok()) << c.status();
    checkpoint_ = c->release();
  }
  static void TearDownTestSuite() { delete checkpoint_; }

  // Request i: greedy, softmax or (with truncated) top-k sampling, its own length limit, and
  // for some a stop token taken from `stop_tokens` (the unpipelined run's tokens).
  static GenerationRequest Request(int i, bool truncated,
                                   const std::vector<std::vector<int32_t>>* stop_tokens) {
    GenerationRequest r;
    for (int t = 0; t < 10 + 11 * i; ++t) r.prompt.push_back(1 + (t * 7 + i * 13) % 90);
    r.sampling.temperature = i % 3 == 0 ? 0.0f : 0.7f + 0.2f * (i % 3);
    if (truncated && i % 4 == 1) r.sampling.top_k = 5;  // chosen on the host
    if (truncated && i % 4 == 2) r.sampling.repetition_penalty = 1.3f;  // and so is this
    r.sampling.seed = 100 + i;
    r.stopping.max_new_tokens = 6 + 5 * i;
    r.stopping.ignore_eos = true;
    if (stop_tokens != nullptr && i % 2 == 1 && (*stop_tokens)[i].size() > 4) {
      r.stopping.stop_token_ids = {(*stop_tokens)[i][3]};
    }
    return r;
  }

  // An engine on 4 slots of the CPU runner choosing tokens as the GPU does (pipelining when
  // `pipelined`), behind the fault injector when `faults` names faults; *runner gets the
  // choosing runner (owned by the engine).
  std::unique_ptr<Engine> MakeEngine(bool pipelined, const std::string& faults,
                                     ChoosingRunner** runner) {
    auto cpu = checkpoint_->CpuRunner(4);
    EXPECT_TRUE(cpu.ok()) << cpu.status();
    if (!cpu.ok()) return nullptr;
    auto owned = std::make_unique<ChoosingRunner>(std::move(*cpu), /*pipelined_rows=*/4);
    *runner = owned.get();
    std::unique_ptr<ModelRunner> top = std::move(owned);
    if (!faults.empty()) {
      auto wrapped = WrapWithFaultInjection(std::move(top), faults);
      EXPECT_TRUE(wrapped.ok()) << wrapped.status();
      top = std::move(*wrapped);
    }
    EngineOptions options;
    options.prefill_chunk = 64;
    options.prefill_budget = 256;
    options.pipeline_decode = pipelined;
    auto engine = Engine::Create(std::move(top), nullptr, nullptr, options);
    EXPECT_TRUE(engine.ok()) << engine.status();
    return engine.ok() ? std::move(*engine) : nullptr;
  }

  // Runs `n` requests on 4 slots; the second half arrives once the first has tokens.
  Outcome Run(bool pipelined, int n, bool truncated,
              const std::vector<std::vector<int32_t>>* stop_tokens = nullptr,
              const std::string& faults = "") {
    ChoosingRunner* runner = nullptr;
    std::unique_ptr<Engine> engine = MakeEngine(pipelined, faults, &runner);
    if (engine == nullptr) return {};
    std::vector<std::shared_ptr<Collect>> sinks;
    for (int i = 0; i < n; ++i) {
      if (i == n / 2) {
        while (sinks[0]->count() < 3) absl::SleepFor(absl::Milliseconds(1));
      }
      auto sink = std::make_shared<Collect>();
      EXPECT_TRUE(engine->Submit(Request(i, truncated, stop_tokens), sink).ok());
      sinks.push_back(sink);
    }
    Outcome out;
    for (auto& s : sinks) {
      const GenerationEvent f = s->Wait();
      if (faults.empty()) {
        EXPECT_TRUE(f.status.ok()) << f.status;
      }
      out.tokens.push_back(s->tokens());
      out.finish.push_back(f.finish);
      out.status.push_back(f.status);
    }
    out.health = engine->Health();
    for (int i = 0; i < 400 && !engine->Idle(); ++i) absl::SleepFor(absl::Milliseconds(5));
    out.slots_used_after = engine->Health().slots_used;
    out.started_steps = runner->started_steps();
    out.fed_rows = runner->fed_rows();
    return out;
  }

  static testing::TempCheckpoint* checkpoint_;
};

testing::TempCheckpoint* EnginePipelineTest::checkpoint_ = nullptr;

TEST_F(EnginePipelineTest, SameTokensAsUnpipelinedSteps) {
  const Outcome plain = Run(false, 8, false);
  const Outcome piped = Run(true, 8, false);
  EXPECT_EQ(plain.started_steps, 0);
  EXPECT_GT(piped.started_steps, 10);
  EXPECT_GT(piped.fed_rows, 20);
  ASSERT_EQ(piped.tokens.size(), 8u);
  for (int i = 0; i < 8; ++i) {
    EXPECT_EQ(piped.tokens[i], plain.tokens[i]) << "request " << i;
    EXPECT_EQ(piped.tokens[i].size(), static_cast<size_t>(6 + 5 * i)) << "request " << i;
  }
  EXPECT_EQ(piped.slots_used_after, 0);
}

TEST_F(EnginePipelineTest, StopTokensEndRequestsWithRowsStillStarted) {
  // A stop token ends a request while its next row is already started: that row is dropped.
  const Outcome probe = Run(false, 8, false);
  const Outcome plain = Run(false, 8, false, &probe.tokens);
  const Outcome piped = Run(true, 8, false, &probe.tokens);
  int stopped = 0;
  for (int i = 0; i < 8; ++i) {
    EXPECT_EQ(piped.tokens[i], plain.tokens[i]) << "request " << i;
    EXPECT_EQ(piped.finish[i], plain.finish[i]) << "request " << i;
    stopped += piped.finish[i] == FinishReason::kStopToken;
  }
  EXPECT_GE(stopped, 3);
  EXPECT_GT(piped.fed_rows, 0);
  EXPECT_EQ(piped.slots_used_after, 0);
}

TEST_F(EnginePipelineTest, HostSampledRequestsSwitchStepsToUnpipelined) {
  // Top-k and penalised requests are sampled on the host here: steps with them collect the
  // started step first; the others pipeline.
  const Outcome plain = Run(false, 8, true);
  const Outcome piped = Run(true, 8, true);
  for (int i = 0; i < 8; ++i) EXPECT_EQ(piped.tokens[i], plain.tokens[i]) << "request " << i;
  EXPECT_GT(piped.started_steps, 0);
  EXPECT_EQ(piped.slots_used_after, 0);
}

TEST_F(EnginePipelineTest, AFailedStartedStepFailsItsRequestsAndServingGoesOn) {
  // The 6th decode call (a started step) fails: the requests in it end with INTERNAL, the
  // started step before it is still collected, and later requests are served.
  const Outcome plain = Run(false, 8, false);
  const Outcome faulty = Run(true, 8, false, nullptr, "decode_fail_at=6");
  int failed = 0;
  for (int i = 0; i < 8; ++i) {
    if (faulty.status[i].ok()) {
      EXPECT_EQ(faulty.tokens[i], plain.tokens[i]) << "request " << i;
      continue;
    }
    ++failed;
    EXPECT_EQ(faulty.status[i].code(), absl::StatusCode::kInternal) << faulty.status[i];
    EXPECT_NE(faulty.status[i].message().find("injected fault"), absl::string_view::npos);
    // What it generated before the failure is what it generates unpipelined.
    const std::vector<int32_t>& got = faulty.tokens[i];
    EXPECT_EQ(got, std::vector<int32_t>(plain.tokens[i].begin(), plain.tokens[i].begin() + got.size()));
  }
  EXPECT_GE(failed, 1);
  EXPECT_LT(failed, 8);  // the second half arrives later and is served
  EXPECT_FALSE(faulty.health.failed);
  EXPECT_EQ(faulty.slots_used_after, 0);
}

TEST_F(EnginePipelineTest, APoisonedRunnerFailsEverythingWithAStartedStepOut) {
  // The runner poisons itself at its 6th call (a started step, with the one before it still
  // out): every request fails UNAVAILABLE, readiness drops, new requests are refused. The
  // first request's first token submits the other three from the engine thread, so the calls
  // come in the same order in every run (submitting them from here raced the engine, which
  // could reach the 6th call before the last submission, which was then refused).
  ChoosingRunner* runner = nullptr;
  std::unique_ptr<Engine> engine = MakeEngine(/*pipelined=*/true, "poison_at=6", &runner);
  ASSERT_NE(engine, nullptr);
  auto request = [](int i) {
    GenerationRequest r = Request(i, false, nullptr);
    r.stopping.max_new_tokens = 40;
    return r;
  };
  auto first = std::make_shared<TokenActionSink>();
  std::vector<std::shared_ptr<Collect>> sinks = {first};
  std::vector<absl::Status> submitted;
  for (int i = 1; i < 4; ++i) sinks.push_back(std::make_shared<Collect>());
  first->on_token = [&](size_t n) {
    if (n != 1) return;
    for (int i = 1; i < 4; ++i) submitted.push_back(engine->Submit(request(i), sinks[i]).status());
  };
  ASSERT_TRUE(engine->Submit(request(0), first).ok());
  for (auto& sink : sinks) {
    const GenerationEvent f = sink->Wait();
    EXPECT_EQ(f.status.code(), absl::StatusCode::kUnavailable) << f.status;
    EXPECT_LT(sink->count(), 40u);
  }
  ASSERT_EQ(submitted.size(), 3u);
  for (const absl::Status& s : submitted) EXPECT_TRUE(s.ok()) << s;
  EXPECT_GT(runner->started_steps(), 0);
  EXPECT_TRUE(engine->Health().failed);
  EXPECT_EQ(engine->Submit(Request(0, false, nullptr), std::make_shared<Collect>()).status().code(),
            absl::StatusCode::kUnavailable);
}

TEST_F(EnginePipelineTest, ARequestSubmittedWhileTheEngineFailsFailsToo) {
  // The first request's first token comes from its prefill (call 1); in the same engine step a
  // client submits another request, which waits in the inbox while the decode step after the
  // prefill (call 2) poisons the runner. The late request must fail too, not wait forever.
  for (bool pipelined : {false, true}) {
    SCOPED_TRACE(pipelined ? "pipelined" : "unpipelined");
    ChoosingRunner* runner = nullptr;
    std::unique_ptr<Engine> engine = MakeEngine(pipelined, "poison_at=2", &runner);
    ASSERT_NE(engine, nullptr);
    auto first = std::make_shared<TokenActionSink>();
    auto late = std::make_shared<Collect>();
    absl::Status late_submit = absl::UnknownError("not submitted");
    first->on_token = [&](size_t n) {
      if (n == 1) late_submit = engine->Submit(Request(1, false, nullptr), late).status();
    };
    ASSERT_TRUE(engine->Submit(Request(0, false, nullptr), first).ok());
    EXPECT_EQ(first->Wait().status.code(), absl::StatusCode::kUnavailable);
    EXPECT_TRUE(late_submit.ok()) << late_submit;
    const GenerationEvent f = late->Wait();
    EXPECT_TRUE(f.final);
    EXPECT_EQ(f.status.code(), absl::StatusCode::kUnavailable) << f.status;
    EXPECT_TRUE(engine->Health().failed);
    EXPECT_TRUE(engine->Idle());
  }
}

}  // namespace
}  // namespace mesa
