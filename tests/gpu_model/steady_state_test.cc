// A CUDA engine allocates nothing while it serves (reliability checklist M1): the runner makes
// its weights, workspaces, state pool, pinned staging buffers, decode graphs and pinned GEMM
// algorithms at creation, so requests of any prompt length, batch and sampling add no
// cudaMalloc or cudaMallocHost call (gpu::CudaAllocationCount), pipelined or not, pinned for
// batch invariance or not.
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "engine/engine.h"
#include "gtest/gtest.h"
#include "kernels/cuda/device_buffer.h"
#include "tests/gpu_model/model_parity.h"
#include "tests/kernels/gpu_test_util.h"
#include "tests/testing/collecting_sink.h"

namespace mesa {
namespace {

using gpu::testing::GpuTest;

// `n` requests with prompts of 1 to ~700 tokens (several prefill chunks and segments), greedy,
// softmax, top-k and penalised sampling, a few with logprobs; all run to their length.
std::vector<GenerationRequest> Workload(int n, int seed) {
  std::vector<GenerationRequest> out;
  for (int i = 0; i < n; ++i) {
    GenerationRequest r;
    const int len = 1 + (i * 97 + seed * 31) % 700;
    for (int t = 0; t < len; ++t) r.prompt.push_back(1 + (t * 13 + i * 7 + seed) % 90);
    r.sampling.temperature = i % 4 == 0 ? 0.0f : 0.8f;
    if (i % 4 == 2) r.sampling.top_k = 5;
    if (i % 4 == 3) r.sampling.repetition_penalty = 1.2f;
    r.sampling.seed = static_cast<uint64_t>(seed * 100 + i);
    if (i % 5 == 1) r.top_logprobs = 3;
    r.stopping.max_new_tokens = 4 + (i * 5) % 29;
    r.stopping.ignore_eos = true;
    out.push_back(std::move(r));
  }
  return out;
}

// Submits every request at once and waits for all; the tokens generated, or -1 if one did not
// end OK.
int64_t Serve(Engine& engine, std::vector<GenerationRequest> requests) {
  std::vector<std::shared_ptr<testing::CollectingSink>> sinks;
  for (GenerationRequest& r : requests) {
    auto sink = std::make_shared<testing::CollectingSink>();
    if (!engine.Submit(std::move(r), sink).ok()) return -1;
    sinks.push_back(sink);
  }
  int64_t tokens = 0;
  for (auto& sink : sinks) {
    const GenerationEvent f = sink->Wait();
    EXPECT_TRUE(f.final && f.status.ok()) << f.status;
    if (!f.final || !f.status.ok()) return -1;
    tokens += static_cast<int64_t>(sink->count());
  }
  return tokens;
}

class SteadyStateTest : public GpuTest, public ::testing::WithParamInterface<std::tuple<bool, bool>> {};

TEST_P(SteadyStateTest, ServingAllocatesNothingAfterStart) {
  const auto [pipelined, batch_invariant] = GetParam();
  auto weights = testing::LoadCaseWeights(testing::ModelCases()[0]);
  ASSERT_TRUE(weights.ok()) << weights.status();
  CudaRunnerOptions ro;
  ro.num_slots = 8;
  ro.max_prefill_tokens = 256;  // longer prompts run in segments
  ro.batch_invariant_rows = batch_invariant ? kCudaBatchInvariantRows : 0;
  auto runner = CreateCudaModelRunner(std::move(*weights), ro);
  ASSERT_TRUE(runner.ok()) << runner.status();
  EngineOptions eo;
  eo.pipeline_decode = pipelined;
  eo.prefill_chunk = 128;
  eo.prefill_budget = 256;
  auto engine = Engine::Create(std::move(*runner), nullptr, nullptr, eo);
  ASSERT_TRUE(engine.ok()) << engine.status();
  const int64_t after_start = gpu::CudaAllocationCount();
  ASSERT_GT(after_start, 0);  // the counter sees the runner's own buffers
  // Batches of 1 to 8 rows (slots free up at different times), prefills of 1 to 8 prompts.
  int64_t tokens = 0;
  for (const auto& [n, seed] : {std::pair{12, 1}, std::pair{1, 2}, std::pair{20, 3}}) {
    const int64_t t = Serve(**engine, Workload(n, seed));
    ASSERT_GT(t, 0);
    tokens += t;
  }
  EXPECT_GT(tokens, 500);
  EXPECT_EQ(gpu::CudaAllocationCount() - after_start, 0)
      << "allocations while serving (pipelined " << pipelined << ", batch-invariant "
      << batch_invariant << ")";
  // The counter would have seen one.
  auto probe = gpu::DeviceBuffer::Allocate(1024);
  ASSERT_TRUE(probe.ok()) << probe.status();
  EXPECT_EQ(gpu::CudaAllocationCount() - after_start, 1);
}

INSTANTIATE_TEST_SUITE_P(Modes, SteadyStateTest,
                         ::testing::Combine(::testing::Bool(), ::testing::Bool()),
                         [](const auto& info) {
                           return std::string(std::get<0>(info.param) ? "pipelined" : "stepwise") +
                                  (std::get<1>(info.param) ? "_invariant" : "");
                         });

}  // namespace
}  // namespace mesa
