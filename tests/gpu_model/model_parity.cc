#include "tests/gpu_model/model_parity.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <random>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "base/status_macros.h"
#include "gtest/gtest.h"
#include "models/checkpoint.h"
#include "tests/testing/random_checkpoint.h"

namespace mesa::testing {
namespace {

// RMS(a - b) / RMS(b), fla's error ratio (spec section 9), over a sub-range.
double ErrorRatio(const float* a, const float* b, int64_t n) {
  double diff = 0.0, ref = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(a[i]) - b[i];
    diff += d * d;
    ref += static_cast<double>(b[i]) * b[i];
  }
  if (diff == 0.0) return 0.0;
  return std::sqrt(diff) / (std::sqrt(ref) + 1e-30);
}

}  // namespace

std::vector<ModelCase> ModelCases() {
  std::vector<ModelCase> cases;
  cases.push_back({"bf16_gated_fused", ScalarType::kBf16, true, true, false});
  cases.push_back({"fp16_gated_fused", ScalarType::kFp16, true, true, false});
  cases.push_back({"bf16_plain_unfused_tied", ScalarType::kBf16, false, false, true});
  ModelCase wide{"fp16_k64_unfused", ScalarType::kFp16, true, false, false};
  wide.num_heads = 2;
  wide.head_dim = 64;
  wide.hidden_size = 128;
  cases.push_back(wide);
  return cases;
}

absl::StatusOr<MesaWeights> LoadCaseWeights(const ModelCase& c) {
  static std::map<std::string, std::filesystem::path>* written =
      new std::map<std::string, std::filesystem::path>;
  auto it = written->find(c.name);
  if (it == written->end()) {
    MesaConfig config = TinyConfig();
    config.use_output_gate = c.output_gate;
    config.fuse_norm = c.fuse_norm;
    config.tie_word_embeddings = c.tied;
    config.num_heads = c.num_heads;
    config.head_dim = c.head_dim;
    config.hidden_size = c.hidden_size;
    const std::filesystem::path dir = MakeTempDir("gpu_model_" + c.name);
    MESA_RETURN_IF_ERROR(WriteRandomCheckpoint(dir, config));
    // The writer always declares bfloat16; the loader converts the (bf16) tensors to the
    // declared dtype, so an fp16 model is the same checkpoint declared float16.
    if (c.dtype != ScalarType::kBf16) {
      std::ifstream in(dir / "config.json");
      std::stringstream text;
      text << in.rdbuf();
      const std::string patched = absl::StrReplaceAll(
          text.str(), {{"\"bfloat16\"", absl::StrCat("\"", ScalarTypeName(c.dtype), "\"")}});
      std::ofstream out(dir / "config.json");
      out << patched;
      if (!out) return absl::InternalError("cannot rewrite config.json");
    }
    it = written->emplace(c.name, dir).first;
  }
  MESA_ASSIGN_OR_RETURN(MesaWeights w, LoadMesaWeights(it->second));
  if (w.config.dtype != c.dtype) return absl::InternalError("dtype patch did not take");
  return w;
}

std::string ParityStats::Summary() const {
  return absl::StrCat("logits error ratio ", logits_ratio, ", max |diff|/max|logit| ",
                      logits_max_frac, "; state error ratio H ", h_ratio, ", conv ", conv_ratio,
                      "; CG iterations: max |diff| ", iter_max_diff, ", differing ",
                      iter_mismatch_frac, "; pad rows zero: ", pad_rows_zero ? "yes" : "NO");
}

ParityStats CompareDecode(const MesaConfig& config, absl::Span<const SlotId> slots, int steps,
                          const CgControl& cg, uint64_t seed, const DecodeFn& test,
                          const StateFn& test_state, const DecodeFn& expected,
                          const StateFn& expected_state) {
  ParityStats s;
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> token(3, config.vocab_size - 1);
  const int64_t vocab = config.vocab_size;
  int64_t iter_total = 0, iter_diff = 0;
  for (int step = 0; step < steps; ++step) {
    std::vector<DecodeRow> rows;
    for (SlotId slot : slots) rows.push_back(DecodeRow{slot, token(rng), cg});
    DecodeResult got, want;
    const absl::Status gs = test(rows, &got);
    const absl::Status ws = expected(rows, &want);
    EXPECT_TRUE(gs.ok()) << gs;
    EXPECT_TRUE(ws.ok()) << ws;
    if (!gs.ok() || !ws.ok() || got.logits.size() != want.logits.size() ||
        got.stats.iters.size() != want.stats.iters.size()) {
      ADD_FAILURE() << "step " << step << ": results differ in shape or failed";
      return s;
    }
    std::vector<float> live_got, live_want;
    for (size_t i = 0; i < rows.size(); ++i) {
      const float* g = &got.logits[i * vocab];
      const float* w = &want.logits[i * vocab];
      const bool pad = rows[i].slot == kPadSlot;
      for (int32_t l = 0; l < config.num_hidden_layers; ++l) {
        for (int32_t h = 0; h < config.num_heads; ++h) {
          const int64_t idx = got.stats.index(static_cast<int32_t>(i), l, h);
          if (pad) {
            if (got.stats.iters[idx] != 0 || got.stats.residual[idx] != 0.0f) s.pad_rows_zero = false;
            continue;
          }
          const int32_t d = std::abs(got.stats.iters[idx] - want.stats.iters[idx]);
          s.iter_max_diff = std::max(s.iter_max_diff, d);
          iter_diff += d != 0;
          ++iter_total;
        }
      }
      if (pad) {
        for (int64_t j = 0; j < vocab; ++j) {
          if (g[j] != 0.0f) s.pad_rows_zero = false;
        }
        continue;
      }
      live_got.insert(live_got.end(), g, g + vocab);
      live_want.insert(live_want.end(), w, w + vocab);
    }
    double max_diff = 0.0, max_ref = 0.0;
    for (size_t j = 0; j < live_got.size(); ++j) {
      const double d = std::fabs(static_cast<double>(live_got[j]) - live_want[j]);
      max_diff = std::isnan(d) ? 1e300 : std::max(max_diff, d);
      max_ref = std::max(max_ref, std::fabs(static_cast<double>(live_want[j])));
    }
    s.logits_ratio = std::max(
        s.logits_ratio,
        ErrorRatio(live_got.data(), live_want.data(), static_cast<int64_t>(live_got.size())));
    s.logits_max_frac = std::max(s.logits_max_frac, max_diff / (max_ref + 1e-30));
  }
  s.iter_mismatch_frac = iter_total > 0 ? static_cast<double>(iter_diff) / iter_total : 0.0;

  // States of the live slots, per layer: H_kk and H_kv together, then both conv states.
  const int64_t kk = static_cast<int64_t>(config.num_heads) * config.head_dim * config.head_dim;
  const int64_t conv = static_cast<int64_t>(config.conv_size - 1) * config.key_dim();
  const int64_t stride = 2 * kk + 2 * conv;
  if (!test_state || !expected_state) return s;
  for (SlotId slot : slots) {
    if (slot == kPadSlot) continue;
    std::vector<float> got, want;
    const absl::Status gs = test_state(slot, &got);
    const absl::Status ws = expected_state(slot, &want);
    EXPECT_TRUE(gs.ok()) << gs;
    EXPECT_TRUE(ws.ok()) << ws;
    if (!gs.ok() || !ws.ok() || got.size() != want.size() ||
        static_cast<int64_t>(got.size()) != stride * config.num_hidden_layers) {
      ADD_FAILURE() << "slot " << slot << ": states differ in size or failed";
      return s;
    }
    for (int32_t l = 0; l < config.num_hidden_layers; ++l) {
      const float* g = got.data() + l * stride;
      const float* w = want.data() + l * stride;
      s.h_ratio = std::max(s.h_ratio, ErrorRatio(g, w, 2 * kk));
      s.conv_ratio = std::max(s.conv_ratio, ErrorRatio(g + 2 * kk, w + 2 * kk, 2 * conv));
    }
  }
  return s;
}

std::unique_ptr<CudaModelRunner> MakeFirstCaseRunner(int32_t slots) {
  auto weights = LoadCaseWeights(ModelCases()[0]);
  EXPECT_TRUE(weights.ok()) << weights.status();
  if (!weights.ok()) return nullptr;
  CudaRunnerOptions options;
  options.num_slots = slots;
  auto runner = CreateCudaModelRunner(std::move(*weights), options);
  EXPECT_TRUE(runner.ok()) << runner.status();
  return runner.ok() ? std::move(*runner) : nullptr;
}

}  // namespace mesa::testing
