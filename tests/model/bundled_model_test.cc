// The model that ships in models/ loads, and generates deterministic, non-degenerate text.
#include <set>

#include "engine/cg_settings.h"
#include "engine/cpu_model_runner.h"
#include "engine/sampler.h"
#include "base/utf8.h"
#include "gtest/gtest.h"
#include "models/checkpoint.h"
#include "models/tokenizer.h"

namespace mesa {
namespace {

const std::filesystem::path kBundled = std::filesystem::path(MESA_SOURCE_DIR) / "models/mesanet-tiny-en";


struct Generation {
  std::vector<int32_t> tokens;
  std::string text;
};

Generation Generate(ModelRunner& runner, const Tokenizer& tok, const std::string& prompt,
                    uint64_t seed, int32_t n) {
  const MesaConfig& c = runner.config();
  std::vector<int32_t> ids = {c.bos_token_id};
  auto enc = tok.Encode(prompt);
  EXPECT_TRUE(enc.ok());
  ids.insert(ids.end(), enc->begin(), enc->end());
  SamplingParams sp;
  sp.temperature = 0.8f;
  sp.top_p = 0.95f;
  sp.seed = seed;
  Sampler sampler(sp, std::min(c.vocab_size, tok.piece_count()));
  EXPECT_TRUE(runner.ResetSlot(0).ok());
  CgSettings cg;  // the defaults users get
  PrefillRequest req;
  req.slot = 0;
  req.tokens = ids;
  req.cg = PrefillCgControl(cg, c);
  PrefillResult pre;
  EXPECT_TRUE(runner.Prefill({&req, 1}, {&pre, 1}).ok());
  std::vector<float> logits = pre.logits;
  Generation g;
  for (int32_t i = 0; i < n; ++i) {
    const int32_t t = sampler.Sample(logits);
    g.tokens.push_back(t);
    if (t == c.eos_token_id) break;
    DecodeRow row{0, t, DecodeCgControl(cg, c)};
    DecodeResult dec;
    EXPECT_TRUE(runner.Decode({&row, 1}, &dec).ok());
    logits = dec.logits;
  }
  auto text = tok.Decode(g.tokens);
  EXPECT_TRUE(text.ok());
  g.text = *text;
  return g;
}

TEST(BundledModelTest, GeneratesDeterministicNonDegenerateText) {
  auto weights = LoadMesaWeights(kBundled);
  ASSERT_TRUE(weights.ok()) << weights.status();
  const int32_t vocab = weights->config.vocab_size;
  auto tok = Tokenizer::Load(kBundled / "tokenizer.model", vocab);
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto runner = CreateCpuModelRunner(std::move(*weights), {});
  ASSERT_TRUE(runner.ok()) << runner.status();
  const Generation a = Generate(**runner, **tok, "The history of the", 7, 64);
  const Generation b = Generate(**runner, **tok, "The history of the", 7, 64);
  const Generation c = Generate(**runner, **tok, "The history of the", 8, 64);
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_NE(a.tokens, c.tokens);
  EXPECT_GE(a.tokens.size(), 16u) << a.text;
  const std::set<int32_t> distinct(a.tokens.begin(), a.tokens.end());
  EXPECT_GE(distinct.size(), a.tokens.size() / 3) << a.text;
  int run = 1, longest = 1;
  for (size_t i = 1; i < a.tokens.size(); ++i) {
    run = a.tokens[i] == a.tokens[i - 1] ? run + 1 : 1;
    longest = std::max(longest, run);
  }
  EXPECT_LT(longest, 4) << a.text;
  EXPECT_TRUE(IsValidUtf8(a.text)) << a.text;
  std::printf("sample: %s\n", a.text.c_str());
}

}  // namespace
}  // namespace mesa
