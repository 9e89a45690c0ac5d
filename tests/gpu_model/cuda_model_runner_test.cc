// The CUDA model runner (engine/cuda_model_runner.h) against the CPU runner, the ground truth:
// decode steps at batch 1 and at batch 5 with a pad row, fixed and adaptive CG, bf16 and fp16
// random checkpoints; logits, CG statistics and the slot states after the steps. States are
// compared with the reference decoder (reference_decoder.h), a copy of the CPU runner's decode
// that exposes its states and is checked here to match the CPU runner bit for bit.
//
// Device tests skip without a CUDA device; the device-free ones (the reference's fidelity, the
// tolerance calibration, the memory plan's message) always run.
#include "engine/cuda_model_runner.h"

#include <iostream>
#include <limits>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/cpu_model_runner.h"
#include "gtest/gtest.h"
#include "tests/gpu_model/model_parity.h"
#include "tests/gpu_model/reference_decoder.h"
#include "tests/kernels/gpu_test_util.h"

namespace mesa {
namespace {

using gpu::testing::ErrorRatio;
using gpu::testing::GpuTest;
using gpu::testing::NoGpuReason;
using testing::CompareDecode;
using testing::ModelCase;
using testing::ParityStats;
using testing::ReferenceDecoder;

const CgControl kFixed{CgMode::kFixed, 30, 0.0f};
const CgControl kAdaptive{CgMode::kAdaptive, 30, 1e-4f};
constexpr int kSteps = 12;
constexpr int32_t kSlots = 6;
// Batch 5 with a pad row and slots out of order; batch 1 in a slot of its own.
const std::vector<SlotId> kBatch5 = {2, kPadSlot, 0, 4, 1};
const std::vector<SlotId> kBatch1 = {3};

// How far the GPU runner may be from the CPU runner. The GPU computes the same sequence with
// the same rounding points, but its fp32 sums run in another order (cuBLAS GEMMs, block tree
// sums in the norms, the CG dot products); an fp32 result that differs in its last bit rounds
// to a different bf16/fp16 value now and then, and those 1-ulp flips of activations spread
// through the layers. `GemmOrderSensitivity` measures that spread on the CPU by computing the
// GEMMs with the error of another summation order (reference_decoder.h) and checks that these
// bounds admit it with a margin of at least 4x. Measured on the CPU (2026-11, worst over the
// cases, layouts and CG modes): bf16 logits error ratio 3.3e-3, max |diff|/max|logit| 6.5e-3,
// H 1.9e-3, conv 2.4e-3; fp16 1.3e-3, 1.6e-3, 8.6e-4, 4.7e-4; adaptive iterations identical.
// The bounds are about 10x those (the GPU adds other order differences: tree sums in the norms
// and CG dot products, expf/division within an ulp), still far below what a wrong gate, bias,
// conv tap or missing rounding point does (error ratios of 0.1 and more). The parity test
// prints the GPU's numbers; the first GPU run should record them in docs/cuda-backend.md.
// Per quantity:
//   * logits: error ratio and max |diff| relative to the largest logit of the step;
//   * states: error ratio of H_kk|H_kv per layer and slot, and of the conv states (which hold
//     rounded projections, so they differ only where a projection's rounding flipped);
//   * CG iterations: fixed mode runs exactly max_iters (must match exactly); adaptive mode
//     stops at |r| <= tol |q|, so a residual that lands near the tolerance may stop a step
//     earlier or later: at most 2 steps apart, for at most a quarter of the solves.
struct Tolerance {
  double logits_ratio;
  double logits_max_frac;
  double h_ratio;
  double conv_ratio;
  int32_t iter_max_diff;
  double iter_mismatch_frac;
};

Tolerance ToleranceFor(ScalarType dtype) {
  // bf16 has 8 significant bits (a flip moves a value by 2^-8), fp16 11 (2^-11).
  if (dtype == ScalarType::kBf16) return {3e-2, 6e-2, 2e-2, 2e-2, 2, 0.25};
  return {1e-2, 2e-2, 1e-2, 1e-2, 2, 0.25};
}

::testing::AssertionResult WithinTolerance(const ParityStats& s, const Tolerance& t, bool fixed) {
  const bool ok = s.logits_ratio <= t.logits_ratio && s.logits_max_frac <= t.logits_max_frac &&
                  s.h_ratio <= t.h_ratio && s.conv_ratio <= t.conv_ratio && s.pad_rows_zero &&
                  (fixed ? s.iter_max_diff == 0
                         : s.iter_max_diff <= t.iter_max_diff &&
                               s.iter_mismatch_frac <= t.iter_mismatch_frac);
  if (ok) return ::testing::AssertionSuccess() << s.Summary();
  return ::testing::AssertionFailure()
         << s.Summary() << " -- bounds: logits ratio " << t.logits_ratio << ", max frac "
         << t.logits_max_frac << ", H " << t.h_ratio << ", conv " << t.conv_ratio
         << ", iterations " << (fixed ? 0 : t.iter_max_diff) << " apart for at most "
         << (fixed ? 0.0 : t.iter_mismatch_frac);
}

std::unique_ptr<ModelRunner> MakeCpuRunner(const ModelCase& c) {
  auto weights = testing::LoadCaseWeights(c);
  EXPECT_TRUE(weights.ok()) << weights.status();
  if (!weights.ok()) return nullptr;
  CpuRunnerOptions options;
  options.num_slots = kSlots;
  auto runner = CreateCpuModelRunner(std::move(*weights), options);
  EXPECT_TRUE(runner.ok()) << runner.status();
  return runner.ok() ? std::move(*runner) : nullptr;
}

std::unique_ptr<ReferenceDecoder> MakeReference(const ModelCase& c, bool perturb) {
  auto weights = testing::LoadCaseWeights(c);
  EXPECT_TRUE(weights.ok()) << weights.status();
  if (!weights.ok()) return nullptr;
  return std::make_unique<ReferenceDecoder>(std::move(*weights), kSlots, perturb);
}

testing::DecodeFn DecodeOf(ModelRunner* r) {
  return [r](absl::Span<const DecodeRow> rows, DecodeResult* out) { return r->Decode(rows, out); };
}
testing::DecodeFn DecodeOf(ReferenceDecoder* r) {
  return [r](absl::Span<const DecodeRow> rows, DecodeResult* out) {
    r->Decode(rows, out);
    return absl::OkStatus();
  };
}
testing::StateFn StateOf(ReferenceDecoder* r) {
  return [r](SlotId slot, std::vector<float>* out) {
    const absl::Span<const float> s = r->SlotState(slot);
    out->assign(s.begin(), s.end());
    return absl::OkStatus();
  };
}
testing::StateFn StateOf(CudaModelRunner* r) {
  return [r](SlotId slot, std::vector<float>* out) {
    out->assign(r->state_bytes_per_slot() / sizeof(float), 0.0f);
    return r->ReadSlotState(slot, absl::MakeSpan(*out));
  };
}

// The CPU runner's decode with the reference decoder in lockstep: the results are the CPU
// runner's, and the reference must agree with them exactly (so its states are the CPU's).
testing::DecodeFn CpuWithReference(ModelRunner* cpu, ReferenceDecoder* ref) {
  return [cpu, ref](absl::Span<const DecodeRow> rows, DecodeResult* out) {
    absl::Status s = cpu->Decode(rows, out);
    DecodeResult mirror;
    ref->Decode(rows, &mirror);
    EXPECT_EQ(mirror.logits, out->logits) << "the reference decoder left the CPU runner";
    EXPECT_EQ(mirror.stats.iters, out->stats.iters);
    return s;
  };
}

class ModelCaseTest : public ::testing::TestWithParam<ModelCase> {};

// Device-free: the reference decoder is the CPU runner's decode, bit for bit.
TEST_P(ModelCaseTest, ReferenceMatchesCpuRunnerBitExactly) {
  const ModelCase& c = GetParam();
  for (const CgControl& cg : {kFixed, kAdaptive}) {
    auto cpu = MakeCpuRunner(c);
    auto ref = MakeReference(c, false);
    ASSERT_TRUE(cpu && ref);
    for (const auto* slots : {&kBatch5, &kBatch1}) {
      const ParityStats s = CompareDecode(cpu->config(), *slots, kSteps, cg, 7, DecodeOf(ref.get()),
                                          nullptr, DecodeOf(cpu.get()), nullptr);
      EXPECT_EQ(s.logits_ratio, 0.0) << s.Summary();
      EXPECT_EQ(s.iter_max_diff, 0) << s.Summary();
      EXPECT_TRUE(s.pad_rows_zero);
    }
  }
}

// Device-free: the tolerances admit, 4 times over, what a change of GEMM summation order
// alone does to this model (see Tolerance). The printed numbers are the calibration.
TEST_P(ModelCaseTest, GemmOrderSensitivity) {
  const ModelCase& c = GetParam();
  Tolerance t = ToleranceFor(c.dtype);
  Tolerance quarter{t.logits_ratio / 4, t.logits_max_frac / 4, t.h_ratio / 4, t.conv_ratio / 4,
                    t.iter_max_diff, t.iter_mismatch_frac / 4};
  for (const CgControl& cg : {kFixed, kAdaptive}) {
    auto ref = MakeReference(c, false);
    auto perturbed = MakeReference(c, true);
    ASSERT_TRUE(ref && perturbed);
    for (const auto* slots : {&kBatch5, &kBatch1}) {
      const ParityStats s =
          CompareDecode(ref->config(), *slots, kSteps, cg, 7, DecodeOf(perturbed.get()),
                        StateOf(perturbed.get()), DecodeOf(ref.get()), StateOf(ref.get()));
      const bool fixed = cg.mode == CgMode::kFixed;
      std::cout << "[ calibration ] " << c.name << (fixed ? " fixed" : " adaptive") << " batch "
                << slots->size() << ": " << s.Summary() << "\n";
      EXPECT_TRUE(WithinTolerance(s, quarter, fixed));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, ModelCaseTest, ::testing::ValuesIn(testing::ModelCases()),
                         [](const auto& info) { return info.param.name; });

// Device-free: the memory plan's error names what is needed, what is free and what would fit.
TEST(CudaMemoryPlan, TooLargeNamesBytesAndSlots) {
  CudaMemoryPlan plan;
  plan.weight_bytes = 1000;
  plan.workspace_bytes = 500;
  plan.state_bytes_per_slot = 100;
  plan.num_slots = 10;
  plan.reserve_bytes = 0;
  EXPECT_EQ(plan.total_bytes(), 2500u);
  EXPECT_TRUE(CheckCudaMemoryPlan(plan, 2500).ok());
  const absl::Status s = CheckCudaMemoryPlan(plan, 1800);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(absl::StrContains(s.message(), "10 slots need 2500 bytes")) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "1800 bytes")) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "3 slots would fit")) << s;
  // Not even the weights fit: zero slots.
  EXPECT_TRUE(absl::StrContains(CheckCudaMemoryPlan(plan, 900).message(), "0 slots would fit"));
}

// Device-free: --slots 0 on a GPU takes what fits next to weights, workspaces and reserve.
TEST(CudaMemoryPlan, SlotsThatFitFillTheFreeMemoryUpToTheCap) {
  CudaMemoryPlan plan;
  plan.weight_bytes = 1000;
  plan.workspace_bytes = 500;
  plan.reserve_bytes = 100;
  plan.state_bytes_per_slot = 100;
  plan.num_slots = 123;  // ignored
  auto fit = CudaSlotsThatFit(plan, 2450, 256);
  ASSERT_TRUE(fit.ok()) << fit.status();
  EXPECT_EQ(*fit, 8);  // (2450 - 1600) / 100
  fit = CudaSlotsThatFit(plan, 1000000, 256);
  ASSERT_TRUE(fit.ok()) << fit.status();
  EXPECT_EQ(*fit, 256);
  const absl::Status none = CudaSlotsThatFit(plan, 1650, 256).status();
  EXPECT_EQ(none.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(absl::StrContains(none.message(), "leave 50 of the 1650 bytes")) << none;
  EXPECT_TRUE(absl::StrContains(none.message(), "one slot needs 100")) << none;
  EXPECT_EQ(CudaSlotsThatFit(plan, 900, 256).status().code(), absl::StatusCode::kResourceExhausted);
}

TEST(CudaDecodeBucket, PadsToFewSizes) {
  EXPECT_EQ(CudaDecodeBucket(1, 256), 1);
  EXPECT_EQ(CudaDecodeBucket(3, 256), 4);
  EXPECT_EQ(CudaDecodeBucket(5, 256), 8);
  EXPECT_EQ(CudaDecodeBucket(64, 256), 64);
  EXPECT_EQ(CudaDecodeBucket(65, 256), 96);
  EXPECT_EQ(CudaDecodeBucket(250, 256), 256);
  EXPECT_EQ(CudaDecodeBucket(5, 6), 6);  // never past the largest step
  EXPECT_EQ(CudaDecodeBucket(3, 3), 3);
  std::set<int64_t> buckets;
  for (int64_t b = 1; b <= 256; ++b) {
    const int64_t bucket = CudaDecodeBucket(b, 256);
    EXPECT_GE(bucket, b);
    EXPECT_LE(bucket, 256);
    buckets.insert(bucket);
  }
  EXPECT_EQ(buckets.size(), 17u);  // the graphs a 256-row runner captures at creation
}

TEST(CudaMemoryPlan, SlotLayoutIsTheCpuRunners) {
  for (const ModelCase& c : testing::ModelCases()) {
    auto weights = testing::LoadCaseWeights(c);
    ASSERT_TRUE(weights.ok()) << weights.status();
    EXPECT_EQ(CudaStateBytesPerSlot(weights->config), CpuStateBytesPerSlot(weights->config));
  }
}

// Device-free: without a device, creation is a clear kUnavailable (never a crash).
TEST(CudaModelRunnerNoDevice, CreationIsUnavailable) {
  if (NoGpuReason().empty()) GTEST_SKIP() << "a CUDA device is present";
  auto weights = testing::LoadCaseWeights(testing::ModelCases()[0]);
  ASSERT_TRUE(weights.ok()) << weights.status();
  auto runner = CreateCudaModelRunner(std::move(*weights), {});
  EXPECT_EQ(runner.status().code(), absl::StatusCode::kUnavailable) << runner.status();
}

// ---- Device tests -------------------------------------------------------------------------

class CudaRunnerTest : public GpuTest, public ::testing::WithParamInterface<ModelCase> {
 protected:
  std::unique_ptr<CudaModelRunner> MakeGpuRunner(const ModelCase& c, int32_t max_batch = 0,
                                                 bool cuda_graphs = true,
                                                 int32_t max_prefill_tokens = 0,
                                                 int32_t dependent_launch_rows = kCudaDependentLaunchRows) {
    auto weights = testing::LoadCaseWeights(c);
    EXPECT_TRUE(weights.ok()) << weights.status();
    if (!weights.ok()) return nullptr;
    CudaRunnerOptions options;
    options.num_slots = kSlots;
    options.max_decode_batch = max_batch;
    options.cuda_graphs = cuda_graphs;
    options.dependent_launch_rows = dependent_launch_rows;
    if (max_prefill_tokens > 0) options.max_prefill_tokens = max_prefill_tokens;
    auto runner = CreateCudaModelRunner(std::move(*weights), options);
    EXPECT_TRUE(runner.ok()) << runner.status();
    return runner.ok() ? std::move(*runner) : nullptr;
  }

  // Both layouts and both CG modes from fresh slots; the GPU runner against the CPU runner.
  void CheckParity(CudaModelRunner* gpu) {
    const ModelCase& c = GetParam();
    for (const CgControl& cg : {kFixed, kAdaptive}) {
      auto cpu = MakeCpuRunner(c);
      auto ref = MakeReference(c, false);
      ASSERT_TRUE(cpu && ref);
      for (SlotId slot = 0; slot < kSlots; ++slot) ASSERT_TRUE(gpu->ResetSlot(slot).ok());
      for (const auto* slots : {&kBatch5, &kBatch1}) {
        const bool fixed = cg.mode == CgMode::kFixed;
        const ParityStats s =
            CompareDecode(gpu->config(), *slots, kSteps, cg, 7, DecodeOf(gpu), StateOf(gpu),
                          CpuWithReference(cpu.get(), ref.get()), StateOf(ref.get()));
        std::cout << "[ gpu parity ] " << c.name << (fixed ? " fixed" : " adaptive") << " batch "
                  << slots->size() << ": " << s.Summary() << "\n";
        RecordProperty(absl::StrCat(fixed ? "fixed_b" : "adaptive_b", slots->size(),
                                    "_logits_error_ratio"),
                       absl::StrCat(s.logits_ratio));
        EXPECT_TRUE(WithinTolerance(s, ToleranceFor(c.dtype), fixed))
            << (fixed ? "fixed" : "adaptive") << " CG, batch " << slots->size();
      }
      for (const auto* slots : {&kBatch5, &kBatch1}) {
        for (SlotId slot : *slots) {
          if (slot != kPadSlot) {
            EXPECT_EQ(gpu->SlotPosition(slot), kSteps);
          }
        }
      }
    }
  }
};

TEST_P(CudaRunnerTest, DecodeMatchesCpuRunner) {
  auto gpu = MakeGpuRunner(GetParam());
  ASSERT_TRUE(gpu);
  CheckParity(gpu.get());
  EXPECT_FALSE(gpu->poisoned());
}

// Workspaces for 2 rows: a batch of 5 runs in pieces, with the same results.
TEST_P(CudaRunnerTest, DecodeInPiecesMatchesCpuRunner) {
  auto gpu = MakeGpuRunner(GetParam(), 2);
  ASSERT_TRUE(gpu);
  CheckParity(gpu.get());
}

// Prefill on the GPU against the CPU runner: prompts of 150 tokens (three chunks, the last
// partial), 1 token, and 70 then 30 tokens (a continued prefill from a non-empty state), the
// logits (every row's, or the last row's for the 70) and the CG counts; then three decode steps
// of the three sequences together, which read the states the prefills left. Same tolerances as
// the decode comparison (the chunk kernel's parity with the CPU's is tested op by op in
// tests/kernels). With the default segment length and with segments of 64 tokens (150 tokens:
// three segments), each request in a call of its own and the first three in one call (one
// launch per layer for all three sequences, engine/prefill_packing.h).
TEST_P(CudaRunnerTest, PrefillThenDecodeMatchesCpuRunner) {
  const ModelCase& c = GetParam();
  const Tolerance tol = ToleranceFor(c.dtype);
  for (const bool together : {false, true})
  for (const int32_t segment : {0, 64})
  for (const CgControl& cg : {kFixed, kAdaptive}) {
    SCOPED_TRACE(::testing::Message() << "prefill segment " << segment << (together ? ", packed" : ""));
    auto gpu = MakeGpuRunner(c, 0, true, segment);
    auto cpu = MakeCpuRunner(c);
    ASSERT_TRUE(gpu && cpu);
    const int32_t vocab = gpu->config().vocab_size;
    auto tokens = [&](int n, int seed) {
      std::vector<int32_t> t(n);
      for (int i = 0; i < n; ++i) t[i] = (7 * i + 13 * seed + 3) % vocab;
      return t;
    };
    struct Call {
      SlotId slot;
      std::vector<int32_t> tokens;
      bool all_logits;
    };
    const std::vector<Call> calls = {{0, tokens(150, 1), true}, {1, tokens(1, 2), true},
                                     {2, tokens(70, 3), false}, {2, tokens(30, 4), true}};
    const std::vector<std::vector<size_t>> groups =
        together ? std::vector<std::vector<size_t>>{{0, 1, 2}, {3}}
                 : std::vector<std::vector<size_t>>{{0}, {1}, {2}, {3}};
    for (const std::vector<size_t>& group : groups) {
      std::vector<PrefillRequest> reqs;
      for (size_t i : group) {
        PrefillRequest req;
        req.slot = calls[i].slot;
        req.tokens = calls[i].tokens;
        req.cg = cg;
        req.all_logits = calls[i].all_logits;
        req.want_stats = true;
        reqs.push_back(req);
      }
      std::vector<PrefillResult> a(reqs.size()), b(reqs.size());
      ASSERT_TRUE(gpu->Prefill(reqs, absl::MakeSpan(a)).ok());
      ASSERT_TRUE(cpu->Prefill(reqs, absl::MakeSpan(b)).ok());
      for (size_t r = 0; r < reqs.size(); ++r) {
        const Call& call = calls[group[r]];
        ASSERT_EQ(a[r].logits.size(), b[r].logits.size());
        ASSERT_EQ(a[r].logits.size(),
                  (call.all_logits ? call.tokens.size() : 1) * static_cast<size_t>(vocab));
        const double ratio = ErrorRatio(a[r].logits, b[r].logits);
        std::cout << "[ gpu prefill ] " << c.name << (cg.mode == CgMode::kFixed ? " fixed" : " adaptive")
                  << (segment > 0 ? ", segments of 64" : "") << (together ? ", packed" : "")
                  << " slot " << call.slot << ", " << call.tokens.size()
                  << " tokens: logits error ratio " << ratio << "\n";
        EXPECT_LE(ratio, tol.logits_ratio) << "slot " << call.slot;
        ASSERT_EQ(a[r].stats.iters.size(), b[r].stats.iters.size());
        size_t differ = 0;
        int worst = 0;
        for (size_t i = 0; i < a[r].stats.iters.size(); ++i) {
          const int d = std::abs(a[r].stats.iters[i] - b[r].stats.iters[i]);
          differ += d != 0;
          worst = std::max(worst, d);
        }
        if (cg.mode == CgMode::kFixed) {
          EXPECT_EQ(differ, 0u);
        } else {
          EXPECT_LE(differ, static_cast<size_t>(tol.iter_mismatch_frac * a[r].stats.iters.size()));
          EXPECT_LE(worst, tol.iter_max_diff);
        }
        EXPECT_EQ(gpu->SlotPosition(call.slot), cpu->SlotPosition(call.slot));
      }
    }
    for (int step = 0; step < 3; ++step) {
      std::vector<DecodeRow> rows;
      for (SlotId slot : {0, 1, 2}) rows.push_back({slot, (11 * step + 5 * slot + 1) % vocab, cg});
      DecodeResult a, b;
      ASSERT_TRUE(gpu->Decode(rows, &a).ok());
      ASSERT_TRUE(cpu->Decode(rows, &b).ok());
      EXPECT_LE(ErrorRatio(a.logits, b.logits), tol.logits_ratio) << "decode step " << step;
    }
  }
}

// Two runners that differ only in how they launch the same kernels: the same decode steps
// (batches of 5 with a pad row, then 1) must give the same logits, CG statistics and states.
void ExpectSameDecodeBits(CudaModelRunner* first, CudaModelRunner* second) {
  const int32_t vocab = first->config().vocab_size;
  for (const CgControl& cg : {kFixed, kAdaptive}) {
    for (SlotId slot = 0; slot < kSlots; ++slot) {
      ASSERT_TRUE(first->ResetSlot(slot).ok());
      ASSERT_TRUE(second->ResetSlot(slot).ok());
    }
    for (const auto* slots : {&kBatch5, &kBatch1}) {
      for (int step = 0; step < 5; ++step) {
        std::vector<DecodeRow> rows;
        for (size_t i = 0; i < slots->size(); ++i) {
          rows.push_back({(*slots)[i], static_cast<int32_t>((7 * step + 3 * i + 1) % vocab), cg});
        }
        DecodeResult a, b;
        ASSERT_TRUE(first->Decode(rows, &a).ok());
        ASSERT_TRUE(second->Decode(rows, &b).ok());
        ASSERT_EQ(a.logits, b.logits) << "step " << step << ", batch " << rows.size();
        ASSERT_EQ(a.stats.iters, b.stats.iters) << "step " << step;
        ASSERT_EQ(a.stats.residual, b.stats.residual) << "step " << step;
      }
    }
    const size_t n = first->state_bytes_per_slot() / sizeof(float);
    for (SlotId slot = 0; slot < kSlots; ++slot) {
      std::vector<float> sa(n), sb(n);
      ASSERT_TRUE(first->ReadSlotState(slot, absl::MakeSpan(sa)).ok());
      ASSERT_TRUE(second->ReadSlotState(slot, absl::MakeSpan(sb)).ok());
      EXPECT_EQ(sa, sb) << "slot " << slot;
    }
  }
}

// Steps replayed from CUDA graphs (from each batch size's second step on) run the same kernels
// with the same cuBLASLt plans as eager launches: results must be identical, bit for bit.
TEST_P(CudaRunnerTest, GraphReplayMatchesEagerBitExactly) {
  auto graphs = MakeGpuRunner(GetParam(), 0, true);
  auto eager = MakeGpuRunner(GetParam(), 0, false);
  ASSERT_TRUE(graphs && eager);
  ExpectSameDecodeBits(graphs.get(), eager.get());
}

// Dependent launches (a kernel starts while the previous one finishes and waits for its
// results on the device) change when kernels run, not what they compute: a missing wait would
// read half-written inputs and show here. Eager and graph-replayed steps, against ordinary
// launches, at every batch size (by default only small steps launch dependently).
TEST_P(CudaRunnerTest, DependentLaunchMatchesOrdinaryLaunchBitExactly) {
  for (const bool cuda_graphs : {true, false}) {
    auto dependent = MakeGpuRunner(GetParam(), 0, cuda_graphs, 0, 65535);
    auto ordinary = MakeGpuRunner(GetParam(), 0, cuda_graphs, 0, 0);
    ASSERT_TRUE(dependent && ordinary);
    ExpectSameDecodeBits(dependent.get(), ordinary.get());
  }
}

// With batch_invariant_rows (serve --batch-invariant's value, more than the 72 rows of the
// largest step here, as in a server with fewer slots), a row's decode is the same bit for bit
// whatever else is in the step: one sequence prefilled with a 70-token prompt and decoded alone,
// then prefilled in one call with two other prompts (one packed launch) and decoded at different
// positions inside batches of 2 to 72 rows (buckets 2, 4, 8, 40, 64 and 72, each with its own
// GEMM shapes and CUDA graph) next to other sequences, gives the same prefill logits and CG
// counts, the same logits, CG counts and residuals at every decode step and the same state.
TEST_P(CudaRunnerTest, BatchInvariantDecodeGivesEveryRowTheSameBits) {
  const ModelCase& c = GetParam();
  auto weights = testing::LoadCaseWeights(c);
  ASSERT_TRUE(weights.ok()) << weights.status();
  CudaRunnerOptions options;
  options.num_slots = 72;
  options.batch_invariant_rows = kCudaBatchInvariantRows;  // what serve --batch-invariant uses
  auto made = CreateCudaModelRunner(std::move(*weights), options);
  ASSERT_TRUE(made.ok()) << made.status();
  CudaModelRunner& gpu = **made;
  const int32_t vocab = gpu.config().vocab_size;
  const size_t per_row = static_cast<size_t>(gpu.config().num_hidden_layers) * gpu.config().num_heads;
  constexpr int kInvariantSteps = 4;
  constexpr SlotId kWatched = 5;
  auto token = [&](int step, size_t row) {
    return static_cast<int32_t>((13 * step + 7 * row + 5) % vocab);
  };
  auto prompt = [&](int length, int salt) {
    std::vector<int32_t> p(length);
    for (int i = 0; i < length; ++i) p[i] = static_cast<int32_t>((31 * i + 17 * salt + 3) % vocab);
    return p;
  };
  const std::vector<int32_t> watched_prompt = prompt(70, 0), before = prompt(33, 1), after = prompt(150, 2);
  for (const CgControl& cg : {kFixed, kAdaptive}) {
    // Alone.
    for (SlotId slot = 0; slot < 72; ++slot) ASSERT_TRUE(gpu.ResetSlot(slot).ok());
    PrefillResult prefill_alone;
    {
      const PrefillRequest req{kWatched, watched_prompt, cg, false, true, std::nullopt};
      ASSERT_TRUE(gpu.Prefill({&req, 1}, {&prefill_alone, 1}).ok());
    }
    std::vector<std::vector<float>> logits;
    std::vector<std::vector<int32_t>> iters;
    std::vector<std::vector<float>> residuals;
    for (int step = 0; step < kInvariantSteps; ++step) {
      DecodeResult r;
      ASSERT_TRUE(gpu.Decode({{kWatched, token(step, 0), cg}}, &r).ok());
      logits.push_back(r.logits);
      iters.push_back(r.stats.iters);
      residuals.push_back(r.stats.residual);
    }
    const size_t n_state = gpu.state_bytes_per_slot() / sizeof(float);
    std::vector<float> alone_state(n_state);
    ASSERT_TRUE(gpu.ReadSlotState(kWatched, absl::MakeSpan(alone_state)).ok());
    // In company: the watched row at position `at` of `batch` rows.
    for (const int batch : {2, 3, 8, 37, 64, 72}) {
      const size_t at = static_cast<size_t>(batch) / 2;
      for (SlotId slot = 0; slot < 72; ++slot) ASSERT_TRUE(gpu.ResetSlot(slot).ok());
      const PrefillRequest reqs[3] = {{0, before, cg, false, true, std::nullopt},
                                      {kWatched, watched_prompt, cg, false, true, std::nullopt},
                                      {1, after, cg, false, true, std::nullopt}};
      PrefillResult packed[3];
      ASSERT_TRUE(gpu.Prefill(reqs, packed).ok());
      ASSERT_EQ(packed[1].logits, prefill_alone.logits) << c.name << ": prefill, batch " << batch;
      ASSERT_EQ(packed[1].stats.iters, prefill_alone.stats.iters) << c.name << ": prefill, batch " << batch;
      for (int step = 0; step < kInvariantSteps; ++step) {
        std::vector<DecodeRow> rows;
        for (int i = 0, other = 0; i < batch; ++i) {
          if (static_cast<size_t>(i) == at) {
            rows.push_back({kWatched, token(step, 0), cg});
          } else {
            const SlotId slot = other < kWatched ? other : other + 1;
            rows.push_back({slot, token(step, static_cast<size_t>(i) + 1), cg});
            ++other;
          }
        }
        DecodeResult r;
        ASSERT_TRUE(gpu.Decode(rows, &r).ok());
        const std::vector<float> row_logits(r.logits.begin() + at * vocab,
                                            r.logits.begin() + (at + 1) * vocab);
        const std::vector<int32_t> row_iters(r.stats.iters.begin() + at * per_row,
                                             r.stats.iters.begin() + (at + 1) * per_row);
        const std::vector<float> row_residuals(r.stats.residual.begin() + at * per_row,
                                               r.stats.residual.begin() + (at + 1) * per_row);
        ASSERT_EQ(row_logits, logits[step]) << c.name << ": batch " << batch << ", step " << step;
        ASSERT_EQ(row_iters, iters[step]) << c.name << ": batch " << batch << ", step " << step;
        ASSERT_EQ(row_residuals, residuals[step]) << c.name << ": batch " << batch << ", step " << step;
      }
      std::vector<float> state(n_state);
      ASSERT_TRUE(gpu.ReadSlotState(kWatched, absl::MakeSpan(state)).ok());
      EXPECT_EQ(state, alone_state) << c.name << ": batch " << batch;
    }
  }
  EXPECT_FALSE(gpu.poisoned());
}

TEST_P(CudaRunnerTest, ResetSlotZeroesOnTheDevice) {
  auto gpu = MakeGpuRunner(GetParam());
  ASSERT_TRUE(gpu);
  for (int step = 0; step < 3; ++step) {
    std::vector<DecodeRow> rows = {{0, 5 + step, kAdaptive}, {1, 9 + step, kAdaptive}};
    DecodeResult result;
    ASSERT_TRUE(gpu->Decode(rows, &result).ok());
  }
  const size_t n = gpu->state_bytes_per_slot() / sizeof(float);
  std::vector<float> s0(n), s1(n);
  ASSERT_TRUE(gpu->ReadSlotState(0, absl::MakeSpan(s0)).ok());
  auto nonzero = [](const std::vector<float>& v) {
    size_t count = 0;
    for (float x : v) count += x != 0.0f;
    return count;
  };
  EXPECT_GT(nonzero(s0), n / 4);
  ASSERT_TRUE(gpu->ResetSlot(0).ok());
  ASSERT_TRUE(gpu->ReadSlotState(0, absl::MakeSpan(s0)).ok());
  ASSERT_TRUE(gpu->ReadSlotState(1, absl::MakeSpan(s1)).ok());
  EXPECT_EQ(nonzero(s0), 0u);
  EXPECT_GT(nonzero(s1), n / 4) << "resetting slot 0 touched slot 1";
  EXPECT_EQ(gpu->SlotPosition(0), 0);
  EXPECT_EQ(gpu->SlotPosition(1), 3);
}

INSTANTIATE_TEST_SUITE_P(Cases, CudaRunnerTest, ::testing::ValuesIn(testing::ModelCases()),
                         [](const auto& info) { return info.param.name; });

class CudaRunnerErrors : public GpuTest {};

TEST_F(CudaRunnerErrors, PoolThatDoesNotFitIsResourceExhausted) {
  auto weights = testing::LoadCaseWeights(testing::ModelCases()[0]);
  ASSERT_TRUE(weights.ok()) << weights.status();
  CudaRunnerOptions options;
  options.num_slots = std::numeric_limits<int32_t>::max();  // ~40 TB of state for this model
  options.max_decode_batch = 4;
  auto runner = CreateCudaModelRunner(std::move(*weights), options);
  ASSERT_EQ(runner.status().code(), absl::StatusCode::kResourceExhausted) << runner.status();
  EXPECT_TRUE(absl::StrContains(runner.status().message(), "are free on the device"))
      << runner.status();
  EXPECT_TRUE(absl::StrContains(runner.status().message(), "slots would fit")) << runner.status();
}

// num_slots 0: the pool fills the free device memory, at most max_auto_slots; every slot works.
TEST_F(CudaRunnerErrors, AutoSlotsFillTheDeviceUpToTheCap) {
  auto weights = testing::LoadCaseWeights(testing::ModelCases()[0]);
  ASSERT_TRUE(weights.ok()) << weights.status();
  CudaRunnerOptions options;
  options.num_slots = 0;
  options.max_auto_slots = 40;  // these states are small: the cap decides
  auto created = CreateCudaModelRunner(std::move(*weights), options);
  ASSERT_TRUE(created.ok()) << created.status();
  CudaModelRunner& gpu = **created;
  EXPECT_EQ(gpu.num_slots(), 40);
  EXPECT_EQ(gpu.memory_plan().num_slots, 40);
  DecodeResult result;
  std::vector<DecodeRow> last = {{39, 5, kFixed}};
  ASSERT_TRUE(gpu.Decode(last, &result).ok());
  EXPECT_EQ(gpu.SlotPosition(39), 1);
  std::vector<DecodeRow> past = {{40, 5, kFixed}};
  EXPECT_EQ(gpu.Decode(past, &result).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(CudaRunnerErrors, BadRequestsAreRejectedBeforeDeviceWork) {
  auto weights = testing::LoadCaseWeights(testing::ModelCases()[0]);
  ASSERT_TRUE(weights.ok()) << weights.status();
  CudaRunnerOptions options;
  options.num_slots = 2;
  auto created = CreateCudaModelRunner(std::move(*weights), options);
  ASSERT_TRUE(created.ok()) << created.status();
  CudaModelRunner& gpu = **created;
  DecodeResult result;
  std::vector<DecodeRow> bad_slot = {{2, 5, kFixed}};
  EXPECT_EQ(gpu.Decode(bad_slot, &result).code(), absl::StatusCode::kInvalidArgument);
  std::vector<DecodeRow> bad_token = {{0, gpu.config().vocab_size, kFixed}};
  EXPECT_EQ(gpu.Decode(bad_token, &result).code(), absl::StatusCode::kInvalidArgument);
  std::vector<DecodeRow> twice = {{1, 5, kFixed}, {1, 6, kFixed}};
  EXPECT_EQ(gpu.Decode(twice, &result).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(gpu.SlotPosition(1), 0);
  const std::vector<int32_t> bad_prompt = {1, gpu.config().vocab_size, 7};
  const std::vector<int32_t> empty_prompt;
  const std::vector<int32_t> good_prompt = {1, 5, 7};
  PrefillRequest req;
  req.slot = 0;
  req.tokens = bad_prompt;
  PrefillResult res;
  EXPECT_EQ(gpu.Prefill({&req, 1}, {&res, 1}).code(), absl::StatusCode::kInvalidArgument);
  req.tokens = empty_prompt;
  EXPECT_EQ(gpu.Prefill({&req, 1}, {&res, 1}).code(), absl::StatusCode::kInvalidArgument);
  req.slot = 2;
  req.tokens = good_prompt;  // slot 2 does not exist
  EXPECT_EQ(gpu.Prefill({&req, 1}, {&res, 1}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(gpu.SlotPosition(0), 0);
  std::vector<DecodeRow> none;
  ASSERT_TRUE(gpu.Decode(none, &result).ok());
  EXPECT_TRUE(result.logits.empty());
  EXPECT_FALSE(gpu.poisoned());
  EXPECT_EQ(std::string(gpu.backend_name()), "cuda");
  EXPECT_EQ(gpu.weight_bytes(), gpu.memory_plan().weight_bytes);
  EXPECT_GT(gpu.weight_bytes(), 0u);
}

}  // namespace
}  // namespace mesa
