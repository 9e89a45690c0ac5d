// Pipelined decode on the CUDA runner (ModelRunner::StartDecode / FinishDecode): a step started
// before the previous one is collected, its rows fed on the device with the tokens the step
// before chose, must give what the same steps give one at a time through DecodeAndChoose with
// the tokens passed from the host: the same tokens, logprobs, CG statistics and slot states,
// bit for bit, also when rows leave, come back with a host token or change order.
#include <memory>
#include <vector>

#include "engine/cuda_model_runner.h"
#include "engine/sampler.h"
#include "gtest/gtest.h"
#include "tests/gpu_model/model_parity.h"
#include "tests/kernels/gpu_test_util.h"

namespace mesa {
namespace {

using gpu::testing::GpuTest;

class PipelinedDecodeTest : public GpuTest {};

struct StepOutcome {
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;
  std::vector<int32_t> iters;
  std::vector<float> residual;
};

StepOutcome Outcome(const DecodeResult& r) {
  return {r.tokens, r.logprobs, r.stats.iters, r.stats.residual};
}

// Row plans per step: which of the four sequences run, in which order (-1: a pad row).
const std::vector<std::vector<int>>& Plans() {
  static const std::vector<std::vector<int>> plans = {
      {0, 1, 2, 3}, {0, 1, 2, 3}, {3, 2, 1, 0},  // reversed: feeds cross rows
      {0, -1, 2},                                // 1 and 3 pause
      {1, 0, 2, 3},                              // they come back with host tokens
      {1, 0, 2, 3}, {2, 3}, {2, 3, 0, 1}};
  return plans;
}

TEST_F(PipelinedDecodeTest, MatchesStepsOneAtATimeBitExactly) {
  for (const CgControl cg : {CgControl{CgMode::kFixed, 30, 0.0f}, CgControl{CgMode::kAdaptive, 30, 1e-4f}}) {
    auto sync = testing::MakeFirstCaseRunner(6);
    auto piped = testing::MakeFirstCaseRunner(6);
    ASSERT_TRUE(sync && piped);
    ASSERT_GT(piped->PipelinedDecodeRows(), 3);
    const int32_t vocab = sync->config().vocab_size;
    const std::vector<SlotId> slot = {4, 0, 2, 5};
    // Greedy with 3 logprobs, softmax T 0.8, softmax T 1.3, greedy; one seeded sampler per
    // sequence and runner.
    std::vector<SamplingParams> params(4);
    params[0].temperature = 0.0f;
    params[1].temperature = 0.8f;
    params[1].seed = 7;
    params[2].temperature = 1.3f;
    params[2].seed = 9;
    params[3].temperature = 0.0f;
    const std::vector<int32_t> top_logprobs = {3, 0, 0, 0};
    std::vector<Sampler> sync_samplers, piped_samplers;
    for (const SamplingParams& p : params) {
      sync_samplers.emplace_back(p, vocab);
      piped_samplers.emplace_back(p, vocab);
    }
    for (int i = 0; i < 4; ++i) {
      ASSERT_TRUE(piped->ChoosesAhead(piped_samplers[i].ChoiceRule(top_logprobs[i]))) << i;
    }

    // One at a time: the host passes each token on.
    std::vector<int32_t> next = {5, 17, 29, 41};
    std::vector<StepOutcome> want;
    for (const std::vector<int>& plan : Plans()) {
      std::vector<DecodeRow> rows;
      std::vector<PlainChoice> choices;
      for (int seq : plan) {
        rows.push_back(seq < 0 ? DecodeRow{kPadSlot, 0, cg} : DecodeRow{slot[seq], next[seq], cg});
        choices.push_back(seq < 0 ? PlainChoice{} : sync_samplers[seq].NextChoice(top_logprobs[seq]));
      }
      DecodeResult r;
      ASSERT_TRUE(sync->DecodeAndChoose(rows, choices, &r).ok());
      for (size_t i = 0; i < plan.size(); ++i) {
        if (plan[i] >= 0) next[plan[i]] = r.tokens[i];
      }
      want.push_back(Outcome(r));
    }

    // Pipelined: each step started before the previous one is finished; a sequence that ran
    // in the step before feeds on its row there, one that did not takes its token from the
    // host (known once that earlier step was finished).
    next = {5, 17, 29, 41};
    std::vector<int> prev_row(4, -1);  // row in the step before, -1: not in it
    std::vector<std::vector<int>> started_plans;
    std::vector<StepOutcome> got;
    auto finish = [&]() {
      DecodeResult r;
      ASSERT_TRUE(piped->FinishDecode(&r).ok());
      const std::vector<int>& plan = started_plans[got.size()];
      for (size_t i = 0; i < plan.size(); ++i) {
        if (plan[i] >= 0) next[plan[i]] = r.tokens[i];
      }
      EXPECT_TRUE(r.logits.empty());
      got.push_back(Outcome(r));
    };
    for (size_t step = 0; step < Plans().size(); ++step) {
      const std::vector<int>& plan = Plans()[step];
      std::vector<DecodeRow> rows;
      std::vector<PlainChoice> choices;
      for (int seq : plan) {
        if (seq < 0) {
          rows.push_back({kPadSlot, 0, cg});
          choices.push_back(PlainChoice{});
          continue;
        }
        DecodeRow row{slot[seq], next[seq], cg};
        if (prev_row[seq] >= 0) row.feed_row = prev_row[seq];
        rows.push_back(row);
        choices.push_back(piped_samplers[seq].NextChoice(top_logprobs[seq]));
      }
      ASSERT_TRUE(piped->StartDecode(rows, choices).ok()) << "step " << step;
      started_plans.push_back(plan);
      std::fill(prev_row.begin(), prev_row.end(), -1);
      for (size_t i = 0; i < plan.size(); ++i) {
        if (plan[i] >= 0) prev_row[plan[i]] = static_cast<int>(i);
      }
      if (step > 0) finish();  // the step before, while this one runs
    }
    finish();

    ASSERT_EQ(got.size(), want.size());
    for (size_t step = 0; step < want.size(); ++step) {
      EXPECT_EQ(got[step].tokens, want[step].tokens) << "step " << step;
      EXPECT_EQ(got[step].logprobs, want[step].logprobs) << "step " << step;
      EXPECT_EQ(got[step].iters, want[step].iters) << "step " << step;
      EXPECT_EQ(got[step].residual, want[step].residual) << "step " << step;
    }
    for (SlotId s : slot) {
      std::vector<float> a(sync->state_bytes_per_slot() / sizeof(float));
      std::vector<float> b(a.size());
      ASSERT_TRUE(sync->ReadSlotState(s, absl::MakeSpan(a)).ok());
      ASSERT_TRUE(piped->ReadSlotState(s, absl::MakeSpan(b)).ok());
      EXPECT_EQ(a, b) << "slot " << s;
      EXPECT_EQ(sync->SlotPosition(s), piped->SlotPosition(s)) << "slot " << s;
    }
  }
}

TEST_F(PipelinedDecodeTest, ResetSlotAfterAStartedStepZeroesTheSlot) {
  // The engine frees a slot whose request ended while its next step was already started.
  auto runner = testing::MakeFirstCaseRunner(4);
  ASSERT_TRUE(runner);
  const CgControl cg{CgMode::kFixed, 10, 0.0f};
  PlainChoice greedy;
  greedy.kind = PlainChoice::Kind::kGreedy;
  greedy.valid_vocab = runner->config().vocab_size;
  const std::vector<DecodeRow> rows = {{1, 7, cg}, {3, 9, cg}};
  ASSERT_TRUE(runner->StartDecode(rows, {greedy, greedy}).ok());
  ASSERT_TRUE(runner->ResetSlot(3).ok());
  DecodeResult r;
  ASSERT_TRUE(runner->FinishDecode(&r).ok());
  std::vector<float> state(runner->state_bytes_per_slot() / sizeof(float));
  ASSERT_TRUE(runner->ReadSlotState(3, absl::MakeSpan(state)).ok());
  EXPECT_EQ(std::count(state.begin(), state.end(), 0.0f), static_cast<long>(state.size()));
  ASSERT_TRUE(runner->ReadSlotState(1, absl::MakeSpan(state)).ok());
  EXPECT_LT(std::count(state.begin(), state.end(), 0.0f), static_cast<long>(state.size()));
  EXPECT_EQ(runner->SlotPosition(3), 0);
  EXPECT_EQ(runner->SlotPosition(1), 1);
}

TEST_F(PipelinedDecodeTest, ContractViolationsAreClearErrors) {
  auto runner = testing::MakeFirstCaseRunner(4);
  ASSERT_TRUE(runner);
  const CgControl cg{CgMode::kFixed, 10, 0.0f};
  const int32_t vocab = runner->config().vocab_size;
  PlainChoice greedy;
  greedy.kind = PlainChoice::Kind::kGreedy;
  greedy.valid_vocab = vocab;
  PlainChoice host;  // kHost
  DecodeRow fed{0, 0, cg};
  fed.feed_row = 0;
  DecodeResult r;

  // Feeding with no started step before.
  absl::Status s = runner->StartDecode({fed}, {greedy});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("started right after another"), absl::string_view::npos) << s;
  // A choice the device cannot make ahead of the host.
  s = runner->StartDecode({{0, 3, cg}}, {host});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  // Nothing to finish.
  EXPECT_EQ(runner->FinishDecode(&r).code(), absl::StatusCode::kFailedPrecondition);

  // Two outstanding steps at most; a row may feed only on a live row of the step before.
  ASSERT_TRUE(runner->StartDecode({{0, 3, cg}, {kPadSlot, 0, cg}}, {greedy, PlainChoice{}}).ok());
  DecodeRow from_pad{1, 0, cg};
  from_pad.feed_row = 1;
  s = runner->StartDecode({from_pad}, {greedy});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("chose no token"), absl::string_view::npos) << s;
  ASSERT_TRUE(runner->StartDecode({fed}, {greedy}).ok());
  EXPECT_EQ(runner->StartDecode({{2, 3, cg}}, {greedy}).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(runner->FinishDecode(&r).ok());
  ASSERT_TRUE(runner->FinishDecode(&r).ok());
  ASSERT_EQ(r.tokens.size(), 1u);
  EXPECT_GE(r.tokens[0], 0);

  // An ordinary step in between: nothing to feed on any more; DecodeAndChoose never feeds.
  ASSERT_TRUE(runner->DecodeAndChoose({{2, 3, cg}}, {greedy}, &r).ok());
  EXPECT_EQ(runner->StartDecode({fed}, {greedy}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(runner->DecodeAndChoose({fed}, {greedy}, &r).code(), absl::StatusCode::kInvalidArgument);
  // Still serving.
  ASSERT_TRUE(runner->StartDecode({{0, 3, cg}}, {greedy}).ok());
  ASSERT_TRUE(runner->FinishDecode(&r).ok());
  EXPECT_FALSE(runner->poisoned());
}

TEST_F(PipelinedDecodeTest, PrefillBetweenStartedStepsLeavesTheFeedAlone) {
  // The engine prefills new prompts (choosing their first tokens on the device) while a decode
  // step is started; the next started step still feeds on that step's tokens.
  auto sync = testing::MakeFirstCaseRunner(6);
  auto piped = testing::MakeFirstCaseRunner(6);
  ASSERT_TRUE(sync && piped);
  const int32_t vocab = sync->config().vocab_size;
  const CgControl cg{CgMode::kFixed, 30, 0.0f};
  PlainChoice greedy;
  greedy.kind = PlainChoice::Kind::kGreedy;
  greedy.valid_vocab = vocab;
  std::vector<int32_t> prompt = {3, 14, 15, 9, 26, 5, 35};
  PrefillRequest pre;
  pre.slot = 5;
  pre.tokens = prompt;
  pre.cg = cg;
  pre.choice = greedy;

  // One at a time: step 0, the prefill, step 1 with the host's tokens.
  DecodeResult s0, s1;
  std::vector<PrefillResult> sync_pre(1), piped_pre(1);
  ASSERT_TRUE(sync->DecodeAndChoose({{0, 11, cg}, {2, 12, cg}}, {greedy, greedy}, &s0).ok());
  ASSERT_TRUE(sync->Prefill({pre}, absl::MakeSpan(sync_pre)).ok());
  ASSERT_TRUE(sync->DecodeAndChoose({{2, s0.tokens[1], cg}, {0, s0.tokens[0], cg}, {5, sync_pre[0].token, cg}},
                                    {greedy, greedy, greedy}, &s1).ok());

  // Pipelined: step 0 started, the prefill, step 1 started feeding on step 0.
  DecodeRow from1{2, 0, cg}, from0{0, 0, cg};
  from1.feed_row = 1;
  from0.feed_row = 0;
  ASSERT_TRUE(piped->StartDecode({{0, 11, cg}, {2, 12, cg}}, {greedy, greedy}).ok());
  ASSERT_TRUE(piped->Prefill({pre}, absl::MakeSpan(piped_pre)).ok());
  ASSERT_GE(piped_pre[0].token, 0);
  EXPECT_EQ(piped_pre[0].token, sync_pre[0].token);
  ASSERT_TRUE(piped->StartDecode({from1, from0, {5, piped_pre[0].token, cg}}, {greedy, greedy, greedy}).ok());
  DecodeResult p0, p1;
  ASSERT_TRUE(piped->FinishDecode(&p0).ok());
  ASSERT_TRUE(piped->FinishDecode(&p1).ok());
  EXPECT_EQ(p0.tokens, s0.tokens);
  EXPECT_EQ(p1.tokens, s1.tokens);
  EXPECT_EQ(p1.stats.iters, s1.stats.iters);
}

}  // namespace
}  // namespace mesa
