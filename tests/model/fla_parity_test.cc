// Parity with flash-linear-attention itself (fla 0.6.0, run on an H200 by
// tools/fla/make_goldens.py and tools/train/train_mesanet.py): fla's logits for the prefill
// path, the prefill-then-decode path and a greedy continuation, against ours in fixed CG mode.
//
// Golden sets under tests/testdata/fla/:
//   fp16/     small random checkpoints (with/without output gate, tied, odd head_dim 50,
//             conv_size 3, vocab 509/397, lambda_lower_bound 0.5/0.1, sharded, fuse_norm off)
//             run by fla in float16, as fla's own model test runs: bound 5e-3.
//   trained/  the bundled model (bf16, trained weights) on held-out text. fla's damped
//             30-step CG stalls short of the solution at rounding-dependent points on this
//             checkpoint (fla's prefill and decode paths of the same tokens differ by 5.9e-2
//             relative RMS; docs/parity.md): the bound is fla's own prefill-vs-decode gap,
//             and the meaningful check is the next-token NLL, within 0.5 % of fla's.
//   bf16/     the same random configs with deliberately loud weights run in bf16. In such a
//             model one ulp anywhere moves the logits by 3e-3 to 5e-3 (bf16 rounding flips
//             cascade), so no implementation that is not bit-identical to fla's Triton kernels
//             can promise 5e-3; fla's own two paths differ by 0.9e-2 to 1.2e-2 there. The stress
//             bound is fla's own prefill-vs-decode gap on the same golden.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "base/npy.h"
#include "engine/cg_settings.h"
#include "engine/cpu_model_runner.h"
#include "gtest/gtest.h"
#include "models/checkpoint.h"
#include "nlohmann/json.hpp"
#include "tests/testing/exact_mesa.h"

namespace mesa {
namespace {

namespace fs = std::filesystem;

constexpr double kParityTolerance = 5e-3;
const fs::path kGoldenRoot = fs::path(MESA_TESTDATA_DIR) / "fla";

std::vector<std::string> GoldenNames() {
  std::vector<std::string> names;
  std::error_code ec;
  for (const char* set : {"fp16", "trained", "bf16"}) {
    const fs::path dir = kGoldenRoot / set;
    if (fs::exists(dir / "golden.json")) names.push_back(set);
    for (const auto& e : fs::directory_iterator(dir, ec)) {
      if (fs::exists(e.path() / "golden.json")) {
        names.push_back(std::string(set) + "/" + e.path().filename().string());
      }
    }
  }
  std::sort(names.begin(), names.end());
  return names;
}

TEST(FlaGoldensTest, AllGoldenSetsArePresent) {
  const std::vector<std::string> names = GoldenNames();
  int fp16 = 0, bf16 = 0, trained = 0;
  for (const std::string& n : names) {
    fp16 += n.rfind("fp16/", 0) == 0;
    bf16 += n.rfind("bf16/", 0) == 0;
    trained += n == "trained";
  }
  EXPECT_GE(fp16, 4);
  EXPECT_GE(bf16, 4);
  EXPECT_EQ(trained, 1);
}

class FlaParityTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    golden_ = kGoldenRoot / GetParam();
    std::ifstream in(golden_ / "golden.json");
    meta_ = nlohmann::json::parse(in);
    const fs::path model = meta_.contains("model_dir")
                               ? fs::path(MESA_SOURCE_DIR) / meta_["model_dir"].get<std::string>()
                               : golden_;
    auto weights = LoadMesaWeights(model);
    ASSERT_TRUE(weights.ok()) << weights.status();
    CpuRunnerOptions options;
    options.num_slots = 1;
    auto runner = CreateCpuModelRunner(std::move(*weights), options);
    ASSERT_TRUE(runner.ok()) << runner.status();
    runner_ = std::move(*runner);
    auto ids = ReadNpy(golden_ / "input_ids.npy");
    ASSERT_TRUE(ids.ok()) << ids.status();
    ids_.assign(ids->ints.begin(), ids->ints.end());
    CgSettings fixed;
    fixed.mode = CgMode::kFixed;
    prefill_cg_ = PrefillCgControl(fixed, runner_->config());
    decode_cg_ = DecodeCgControl(fixed, runner_->config());
    stress_ = GetParam().rfind("bf16/", 0) == 0;
  }

  // The bound for this golden (see the file comment).
  double Bound() const {
    if (stress_) return meta_.at("prefill_vs_decode_rel_rms_rows_N_to_T").get<double>();
    if (GetParam() == "trained") {
      return std::max(kParityTolerance, meta_.at("prefill_vs_decode").at("rel_rms").get<double>());
    }
    return kParityTolerance;
  }

  std::vector<float> Prefill(absl::Span<const int32_t> tokens, bool all) {
    PrefillRequest req;
    req.slot = 0;
    req.tokens = tokens;
    req.cg = prefill_cg_;
    req.all_logits = all;
    PrefillResult res;
    EXPECT_TRUE(runner_->Prefill({&req, 1}, {&res, 1}).ok());
    return res.logits;
  }
  std::vector<float> Decode(int32_t token) {
    DecodeRow row{0, token, decode_cg_};
    DecodeResult res;
    EXPECT_TRUE(runner_->Decode({&row, 1}, &res).ok());
    return res.logits;
  }

  fs::path golden_;
  nlohmann::json meta_;
  std::unique_ptr<ModelRunner> runner_;
  std::vector<int32_t> ids_;
  CgControl prefill_cg_, decode_cg_;
  bool stress_ = false;
};

TEST_P(FlaParityTest, PrefillLogitsMatchFla) {
  auto golden = ReadNpy(golden_ / "logits_prefill.npy");
  ASSERT_TRUE(golden.ok()) << golden.status();
  ASSERT_TRUE(runner_->ResetSlot(0).ok());
  const std::vector<float> ours = Prefill(ids_, true);
  ASSERT_EQ(ours.size(), golden->f32.size());
  const double rel = testing::RelativeRms(ours.data(), golden->f32.data(), ours.size());
  std::printf("[%s] prefill: relative RMS vs fla %.3e (bound %.3e)\n", GetParam().c_str(), rel, Bound());
  EXPECT_LT(rel, Bound());
}

// Mean negative log-likelihood of ids[t + 1] under logits row t (rows of `vocab` floats).
double MeanNextTokenNll(const std::vector<float>& logits, const std::vector<int32_t>& ids,
                        int64_t vocab) {
  double total = 0.0;
  const int64_t rows = static_cast<int64_t>(ids.size()) - 1;
  for (int64_t t = 0; t < rows; ++t) {
    const float* row = logits.data() + t * vocab;
    const double max = *std::max_element(row, row + vocab);
    double sum = 0.0;
    for (int64_t v = 0; v < vocab; ++v) sum += std::exp(row[v] - max);
    total += max + std::log(sum) - row[ids[t + 1]];
  }
  return total / static_cast<double>(rows);
}

TEST_P(FlaParityTest, PrefillNextTokenNllMatchesFla) {
  auto golden = ReadNpy(golden_ / "logits_prefill.npy");
  ASSERT_TRUE(golden.ok()) << golden.status();
  ASSERT_TRUE(runner_->ResetSlot(0).ok());
  const std::vector<float> ours = Prefill(ids_, true);
  ASSERT_EQ(ours.size(), golden->f32.size());
  const int64_t vocab = runner_->config().vocab_size;
  const double nll_ours = MeanNextTokenNll(ours, ids_, vocab);
  const double nll_fla = MeanNextTokenNll(golden->f32, ids_, vocab);
  std::printf("[%s] prefill next-token NLL: ours %.5f, fla %.5f (%+.3f %%)\n", GetParam().c_str(),
              nll_ours, nll_fla, 100.0 * (nll_ours / nll_fla - 1.0));
  EXPECT_NEAR(nll_ours, nll_fla, 5e-3 * nll_fla);
}

TEST_P(FlaParityTest, PrefillThenDecodeLogitsMatchFla) {
  const int64_t n = meta_.at("N").get<int64_t>();
  const int64_t vocab = runner_->config().vocab_size;
  const int64_t total = static_cast<int64_t>(ids_.size());
  // Decode-path rows N..T-1 (fla's prefix rows 0..N-1 equal its prefill rows exactly).
  std::vector<float> golden_tail;
  if (fs::exists(golden_ / "logits_decode_tail.npy")) {
    auto g = ReadNpy(golden_ / "logits_decode_tail.npy");
    ASSERT_TRUE(g.ok()) << g.status();
    golden_tail = std::move(g->f32);
  } else {
    auto g = ReadNpy(golden_ / "logits_decode.npy");
    ASSERT_TRUE(g.ok()) << g.status();
    golden_tail.assign(g->f32.begin() + n * vocab, g->f32.end());
  }
  ASSERT_EQ(static_cast<int64_t>(golden_tail.size()), (total - n) * vocab);
  ASSERT_TRUE(runner_->ResetSlot(0).ok());
  Prefill(absl::MakeConstSpan(ids_).first(n), false);
  std::vector<float> ours;
  for (int64_t t = n; t < total; ++t) {
    const std::vector<float> row = Decode(ids_[t]);
    ours.insert(ours.end(), row.begin(), row.end());
  }
  const double rel = testing::RelativeRms(ours.data(), golden_tail.data(), ours.size());
  std::printf("[%s] decode rows %lld..%lld: relative RMS vs fla %.3e (bound %.3e)\n",
              GetParam().c_str(), static_cast<long long>(n), static_cast<long long>(total - 1),
              rel, Bound());
  EXPECT_LT(rel, Bound());
}

TEST_P(FlaParityTest, GreedyContinuationMatchesFla) {
  auto greedy = ReadNpy(golden_ / "greedy.npy");
  auto margins = ReadNpy(golden_ / "greedy_margins.npy");
  ASSERT_TRUE(greedy.ok() && margins.ok());
  const int64_t steps = static_cast<int64_t>(margins->f32.size());
  const int64_t prompt_len = static_cast<int64_t>(greedy->ints.size()) - steps;
  ASSERT_GT(prompt_len, 0);
  std::vector<int32_t> prompt(greedy->ints.begin(), greedy->ints.begin() + prompt_len);
  ASSERT_TRUE(runner_->ResetSlot(0).ok());
  std::vector<float> logits = Prefill(prompt, false);
  int ties = 0;
  for (int64_t s = 0; s < steps; ++s) {
    const int32_t ours = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    const int32_t theirs = static_cast<int32_t>(greedy->ints[prompt_len + s]);
    // An exact tie in fla's logits (margin 0) has two right answers; fla picks the lower id.
    if (margins->f32[s] == 0.0f) {
      ++ties;
    } else {
      EXPECT_EQ(ours, theirs) << "greedy step " << s << " (fla's top-2 margin there: "
                              << margins->f32[s] << ")";
    }
    logits = Decode(theirs);  // continue from fla's token so both see the same context
  }
  EXPECT_LE(ties, steps / 8) << "too many exact ties for the greedy golden to mean much";
}

// fla 0.6.0 runs a multi-token call on a non-empty cache through the chunked kernel from the
// cached fp32 state (a second user turn). Ours must match that too.
class FlaContinuationTest : public FlaParityTest {};

TEST_P(FlaContinuationTest, ContinuedPrefillMatchesFla) {
  auto golden = ReadNpy(golden_ / "logits_continue.npy");
  ASSERT_TRUE(golden.ok()) << golden.status();
  const auto seg = meta_.at("continuation_segments");
  const int64_t a = seg[0].get<int64_t>(), b = seg[1].get<int64_t>();
  const int64_t vocab = runner_->config().vocab_size;
  ASSERT_TRUE(runner_->ResetSlot(0).ok());
  std::vector<float> ours = Prefill(absl::MakeConstSpan(ids_).first(a), true);
  const std::vector<float> turn2 = Prefill(absl::MakeConstSpan(ids_).subspan(a, b - a), true);
  ours.insert(ours.end(), turn2.begin(), turn2.end());
  for (size_t t = b; t < ids_.size(); ++t) {
    const std::vector<float> row = Decode(ids_[t]);
    ours.insert(ours.end(), row.begin(), row.end());
  }
  ASSERT_EQ(ours.size(), golden->f32.size());
  const double rel_turn2 = testing::RelativeRms(ours.data() + a * vocab, golden->f32.data() + a * vocab,
                                                (b - a) * vocab);
  const double rel_all = testing::RelativeRms(ours.data(), golden->f32.data(), ours.size());
  std::printf("[%s] continued prefill rows %lld..%lld: relative RMS vs fla %.3e (all rows %.3e)\n",
              GetParam().c_str(), static_cast<long long>(a), static_cast<long long>(b - 1), rel_turn2,
              rel_all);
  EXPECT_LT(rel_turn2, Bound());
  EXPECT_LT(rel_all, Bound());
}

std::string ParamName(const ::testing::TestParamInfo<std::string>& info) {
  std::string name = info.param;
  std::replace(name.begin(), name.end(), '/', '_');
  return name;
}

std::vector<std::string> ContinuationNames() {
  std::vector<std::string> names;
  for (const std::string& n : GoldenNames()) {
    if (fs::exists(kGoldenRoot / n / "logits_continue.npy")) names.push_back(n);
  }
  return names;
}

INSTANTIATE_TEST_SUITE_P(Goldens, FlaParityTest, ::testing::ValuesIn(GoldenNames()), ParamName);
INSTANTIATE_TEST_SUITE_P(Goldens, FlaContinuationTest, ::testing::ValuesIn(ContinuationNames()),
                         ParamName);

}  // namespace
}  // namespace mesa
