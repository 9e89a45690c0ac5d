// sentencepiece wrapper and the streaming detokenizer, on a small byte-fallback tokenizer.
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "base/utf8.h"
#include "gtest/gtest.h"
#include "models/tokenizer.h"
#include "models/tokenizer_stream.h"

namespace mesa {
namespace {

using ::testing::HasSubstr;

const char kModel[] = MESA_TESTDATA_DIR "/tokenizer/tiny.model";

// True if `s` is well-formed UTF-8.

TEST(TokenizerTest, RoundTripsTextIncludingNewlinesAndByteFallback) {
  auto tok = Tokenizer::Load(kModel, 400);
  ASSERT_TRUE(tok.ok()) << tok.status();
  for (const std::string text :
       {"Hello world", "Two\n\nparagraphs\nhere", "日本語 🙂 Café naïve", "  leading spaces"}) {
    auto ids = (*tok)->Encode(text);
    ASSERT_TRUE(ids.ok());
    auto back = (*tok)->Decode(*ids);
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(*back, text);
  }
  EXPECT_EQ((*tok)->piece_count(), 400);
}

TEST(TokenizerTest, ErrorsAreClear) {
  auto small_vocab = Tokenizer::Load(kModel, 300);
  EXPECT_THAT(std::string(small_vocab.status().message()),
              ::testing::AllOf(HasSubstr("400 pieces"), HasSubstr("vocab_size is 300")));
  auto missing = Tokenizer::Load("/nonexistent/tokenizer.model", 400);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("/nonexistent/tokenizer.model"));
  auto garbage = Tokenizer::FromSerialized("definitely not a model", 400, "x.model");
  EXPECT_THAT(std::string(garbage.status().message()), HasSubstr("not a valid sentencepiece model"));
  auto tok = Tokenizer::Load(kModel, 400);
  ASSERT_TRUE(tok.ok());
  auto bad = (*tok)->Decode({5, 400});
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("token id 400"));
}

TEST(StreamDecoderTest, StreamedTextEqualsWholeDecodeAndIsNeverBrokenUtf8) {
  auto tok = Tokenizer::Load(kModel, 400);
  ASSERT_TRUE(tok.ok());
  const std::string prompt = "Say:";
  const std::string text = " 日本語 is Japanese; 🙂 is a smile.\nCafé, naïve — done.";
  auto prompt_ids = (*tok)->Encode(prompt);
  auto ids = (*tok)->Encode(prompt + text);
  ASSERT_TRUE(prompt_ids.ok() && ids.ok());
  // Continue from the prompt's tokens (sentencepiece may tokenize the join differently, so
  // take the continuation as whatever follows the prompt's tokens in the joint encoding).
  ASSERT_TRUE(std::equal(prompt_ids->begin(), prompt_ids->end(), ids->begin()));
  const std::vector<int32_t> rest(ids->begin() + prompt_ids->size(), ids->end());
  StreamDecoder stream(**tok, *prompt_ids);
  std::string streamed;
  int held = 0;
  for (int32_t id : rest) {
    auto delta = stream.Push(id);
    ASSERT_TRUE(delta.ok());
    EXPECT_TRUE(IsValidUtf8(*delta)) << "chunk '" << *delta << "'";
    EXPECT_EQ(delta->find("\xEF\xBF\xBD"), std::string::npos);
    if (delta->empty()) ++held;
    streamed += *delta;
  }
  auto tail = stream.Flush();
  ASSERT_TRUE(tail.ok());
  streamed += *tail;
  EXPECT_EQ(streamed, text);
  EXPECT_GT(held, 0) << "byte-fallback characters should have been held back at least once";
}

TEST(StreamDecoderTest, InvalidBytesAreReleasedAfterAFewTokens) {
  auto tok = Tokenizer::Load(kModel, 400);
  ASSERT_TRUE(tok.ok());
  // Byte pieces <0xE6> repeated never form a character.
  auto e6 = (*tok)->Encode("日");
  ASSERT_TRUE(e6.ok());
  const int32_t lead = (*e6)[e6->size() - 3];  // the <0xE6> byte piece
  StreamDecoder stream(**tok, {});
  std::string out;
  for (int i = 0; i < 8; ++i) {
    auto d = stream.Push(lead);
    ASSERT_TRUE(d.ok());
    out += *d;
  }
  EXPECT_FALSE(out.empty());
}

TEST(StreamDecoderTest, KeepsWordInitialSpaces) {
  auto tok = Tokenizer::Load(kModel, 400);
  ASSERT_TRUE(tok.ok());
  auto ids = (*tok)->Encode("the license of the work");
  ASSERT_TRUE(ids.ok());
  StreamDecoder stream(**tok, {1});
  std::string out;
  for (int32_t id : *ids) out += *stream.Push(id);
  out += *stream.Flush();
  EXPECT_EQ(out, "the license of the work");
}

// Releasing a normal piece's own text (Tokenizer::MidTextOf) instead of decoding its context
// must change nothing: random ids of every kind (normal, byte, control, unknown) and random
// contexts, token by token, against a stream that always decodes; on the small test tokenizer
// and the bundled model's.
TEST(StreamDecoderTest, MidTextReleasesExactlyWhatDecodingDoes) {
  for (const std::string& path : {std::string(kModel),
                                 std::string(MESA_SOURCE_DIR) + "/models/mesanet-tiny-en/tokenizer.model"}) {
    auto tok = Tokenizer::Load(path, 1 << 20);
    ASSERT_TRUE(tok.ok()) << tok.status();
    const int32_t n = (*tok)->piece_count();
    int32_t with_mid_text = 0;
    for (int32_t id = 0; id < n; ++id) with_mid_text += (*tok)->MidTextOf(id) != nullptr;
    EXPECT_GE(with_mid_text, 100) << path << ": normal pieces should take the fast path";
    EXPECT_EQ((*tok)->MidTextOf(-1), nullptr);
    EXPECT_EQ((*tok)->MidTextOf(n), nullptr);
    std::mt19937 rng(11);
    std::uniform_int_distribution<int32_t> any(0, n - 1);
    int64_t tokens = 0;
    for (int seq = 0; seq < 300; ++seq) {
      std::vector<int32_t> context(static_cast<size_t>(seq % 4));
      for (int32_t& id : context) id = any(rng);
      StreamDecoder fast(**tok, context);
      StreamDecoder slow(**tok, context, /*mid_text=*/false);
      for (int i = 0; i < 40; ++i, ++tokens) {
        const int32_t id = any(rng);
        auto a = fast.Push(id);
        auto b = slow.Push(id);
        ASSERT_TRUE(a.ok() && b.ok());
        ASSERT_EQ(*a, *b) << path << ": sequence " << seq << ", token " << i << " (id " << id << ")";
      }
      auto a = fast.Flush();
      auto b = slow.Flush();
      ASSERT_TRUE(a.ok() && b.ok());
      ASSERT_EQ(*a, *b) << path << ": sequence " << seq << " flush";
    }
    EXPECT_EQ(tokens, 300 * 40);
  }
}

}  // namespace
}  // namespace mesa
