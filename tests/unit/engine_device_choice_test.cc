// The engine hands greedy and plain-softmax token choices to the runner
// (ModelRunner::DecodeAndChoose) and samples the rest itself, with one random stream either
// way: the tokens must not depend on which side chose them. A runner that wraps the CPU runner
// and chooses tokens by the documented rule (tests/testing/choosing_runner.h) stands in for the
// GPU.
#include <algorithm>
#include <cmath>
#include <memory>
#include <mutex>
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

class EngineDeviceChoiceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto c = testing::TempCheckpoint::Create("engine_choice", testing::TinyConfig());
    ASSERT_TRUE(c.ok()) << c.status();
    checkpoint_ = c->release();
  }
  static void TearDownTestSuite() { delete checkpoint_; }

  struct Outcome {
    std::vector<std::vector<int32_t>> tokens;  // per request
    std::vector<PlainChoice::Kind> kinds;      // every decode choice the runner was given
    int64_t prefill_choices = 0;               // first tokens the runner chose in Prefill
  };

  // Four requests run together: greedy, softmax at 0.8 and 1.3, and top-k 5 at 0.8.
  Outcome Run(bool device_sampling) {
    auto cpu = checkpoint_->CpuRunner(4);
    EXPECT_TRUE(cpu.ok()) << cpu.status();
    if (!cpu.ok()) return {};
    auto owned = std::make_unique<ChoosingRunner>(std::move(*cpu));
    ChoosingRunner* runner = owned.get();
    EngineOptions options;
    options.prefill_chunk = 64;
    options.prefill_budget = 256;
    options.device_sampling = device_sampling;
    auto engine = Engine::Create(std::move(owned), nullptr, nullptr, options);
    EXPECT_TRUE(engine.ok()) << engine.status();
    std::vector<std::shared_ptr<Collect>> sinks;
    for (int i = 0; i < 4; ++i) {
      GenerationRequest r;
      for (int t = 0; t < 20 + 9 * i; ++t) r.prompt.push_back(1 + (t * 7 + i * 13) % 90);
      r.sampling.temperature = i == 0 ? 0.0f : i == 2 ? 1.3f : 0.8f;
      if (i == 3) r.sampling.top_k = 5;
      r.sampling.seed = 11 + i;
      r.stopping.max_new_tokens = 16;
      r.stopping.ignore_eos = true;
      auto sink = std::make_shared<Collect>();
      EXPECT_TRUE((*engine)->Submit(std::move(r), sink).ok());
      sinks.push_back(sink);
    }
    Outcome out;
    for (auto& s : sinks) {
      s->Wait();
      out.tokens.push_back(s->tokens());
    }
    out.kinds = runner->kinds();  // the engine (and runner) still exist here
    out.prefill_choices = runner->prefill_choices();
    return out;
  }

  static testing::TempCheckpoint* checkpoint_;
};

testing::TempCheckpoint* EngineDeviceChoiceTest::checkpoint_ = nullptr;

TEST_F(EngineDeviceChoiceTest, TokensDoNotDependOnWhichSideChooses) {
  const Outcome with_device = Run(true);
  const Outcome host_only = Run(false);
  ASSERT_EQ(with_device.tokens.size(), 4u);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(with_device.tokens[i].size(), 16u);
    EXPECT_EQ(with_device.tokens[i], host_only.tokens[i]) << "request " << i;
  }
  // Each request's 15 decode tokens (the first comes from prefill): greedy, two softmax, and the
  // top-k request's truncated softmax; with device sampling off, all on the host.
  auto count = [](const std::vector<PlainChoice::Kind>& kinds, PlainChoice::Kind k) {
    return std::count(kinds.begin(), kinds.end(), k);
  };
  EXPECT_EQ(count(with_device.kinds, PlainChoice::Kind::kGreedy), 15);
  EXPECT_EQ(count(with_device.kinds, PlainChoice::Kind::kSoftmax), 30);
  EXPECT_EQ(count(with_device.kinds, PlainChoice::Kind::kTruncated), 15);
  EXPECT_EQ(count(host_only.kinds, PlainChoice::Kind::kHost), 60);
  // The first tokens of the greedy and the two softmax requests came from Prefill's choice.
  EXPECT_EQ(with_device.prefill_choices, 3);
  EXPECT_EQ(host_only.prefill_choices, 0);
}

}  // namespace
}  // namespace mesa
