// A sticky device fault while requests run (checklist H3 on a GPU): a kernel that traps leaves
// the CUDA context unusable, as a memory fault in one of our kernels would. The CUDA runner
// must poison itself, the engine must fail every request UNAVAILABLE and report itself
// failed, and new requests must be refused; nothing may hang. The context cannot be used
// again afterwards, so the scenario runs in a child process (a death test) that exits 0 only
// when every check held.
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "engine/engine.h"
#include "gtest/gtest.h"
#include "tests/gpu_model/device_trap.h"
#include "tests/gpu_model/model_parity.h"
#include "tests/kernels/gpu_test_util.h"
#include "tests/testing/collecting_sink.h"

namespace mesa {
namespace {

using gpu::testing::GpuTest;

[[noreturn]] void Fail(const std::string& why) {
  std::fprintf(stderr, "fault scenario failed: %s\n", why.c_str());
  std::exit(1);
}

GenerationRequest LongRequest(int i) {
  GenerationRequest r;
  for (int t = 0; t < 20 + 7 * i; ++t) r.prompt.push_back(1 + (t * 5 + i * 11) % 90);
  r.sampling.temperature = i == 0 ? 0.0f : 0.9f;
  r.sampling.seed = 3 + i;
  r.stopping.max_new_tokens = 100000;  // runs until the fault
  r.stopping.ignore_eos = true;
  return r;
}

void RunFaultScenario(bool pipelined) {
  std::unique_ptr<CudaModelRunner> runner = testing::MakeFirstCaseRunner(4);
  if (runner == nullptr) Fail("no CUDA runner");
  const CudaModelRunner* gpu = runner.get();
  EngineOptions options;
  options.pipeline_decode = pipelined;
  auto engine = Engine::Create(std::move(runner), nullptr, nullptr, options);
  if (!engine.ok()) Fail(std::string(engine.status().message()));
  std::vector<std::shared_ptr<testing::CollectingSink>> sinks;
  for (int i = 0; i < 3; ++i) {
    auto sink = std::make_shared<testing::CollectingSink>();
    if (!(*engine)->Submit(LongRequest(i), sink).ok()) Fail("submit refused before the fault");
    sinks.push_back(sink);
  }
  for (auto& sink : sinks) {
    for (int w = 0; w < 30000 && sink->count() < 3; ++w) absl::SleepFor(absl::Milliseconds(1));
    if (sink->count() < 3) Fail("no tokens before the fault");
  }
  testing::LaunchDeviceTrap();
  const absl::Time start = absl::Now();
  for (auto& sink : sinks) {
    const GenerationEvent f = sink->Wait();  // at most a minute
    if (!f.final) Fail("a request never ended after the fault");
    if (f.status.code() != absl::StatusCode::kUnavailable) {
      Fail("a request ended with " + f.status.ToString() + ", not UNAVAILABLE");
    }
  }
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  if (seconds > 1.0) Fail("requests took " + std::to_string(seconds) + " s to fail (limit 1 s)");
  if (!gpu->poisoned()) Fail("the runner is not poisoned");
  if (!(*engine)->Health().failed) Fail("the engine does not report itself failed");
  auto late = (*engine)->Submit(LongRequest(0), std::make_shared<testing::CollectingSink>());
  if (late.status().code() != absl::StatusCode::kUnavailable) Fail("a new request was not refused");
  std::fprintf(stderr, "fault scenario passed: %d requests failed UNAVAILABLE in %.3f s\n",
               static_cast<int>(sinks.size()), seconds);
  std::fflush(stderr);
  std::_Exit(0);  // skip destructors: the context is unusable
}

class DeviceFaultTest : public GpuTest, public ::testing::WithParamInterface<bool> {};

TEST_P(DeviceFaultTest, AStickyFaultFailsEveryRequestAndTheEngine) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");  // a fresh process: no inherited CUDA state
  EXPECT_EXIT(RunFaultScenario(GetParam()), ::testing::ExitedWithCode(0), "fault scenario passed");
}

INSTANTIATE_TEST_SUITE_P(Steps, DeviceFaultTest, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "pipelined" : "one_at_a_time"; });

}  // namespace
}  // namespace mesa
