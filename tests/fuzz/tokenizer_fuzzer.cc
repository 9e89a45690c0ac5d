// Fuzz target: the sentencepiece wrapper (Tokenizer) and the streaming detokenizer
// (StreamDecoder) with the test tokenizer tests/testdata/tokenizer/tiny.model (BPE, 400
// pieces, byte fallback, identity normalization).
//
// Input: byte 0 holds flags, the rest is the payload.
//   flags & 0x0F   tokens of context given to the StreamDecoder
//   flags & 0x10   push an id outside the pieces at the end of the stream (must be an error)
//   flags == 0xFF  huge input: the payload repeated up to 64 KiB (tens of thousands of tokens,
//                  past any prompt limit) is encoded and decoded; the rest is skipped. The
//                  server's max_prompt_bytes is 1 MiB, but that takes 6-12 s per execution
//                  under ASan; docs/fuzzing.md has the 1 MiB timings.
// Invariants checked beyond "no crash, no sanitizer report":
//   * Encode succeeds on valid UTF-8 and yields ids inside the pieces;
//   * Decode of any valid ids succeeds and is valid UTF-8; ids outside the pieces are an error;
//   * text that is strict UTF-8 (without U+2581, sentencepiece's own space mark) survives
//     Encode + Decode unchanged;
//   * every chunk StreamDecoder releases (Push and Flush) is valid UTF-8 (base/utf8.h), for
//     arbitrary id sequences (byte-fallback pieces included, so split and invalid characters;
//     the first 512 generated ids of an input are streamed).
#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/utf8.h"
#include "models/tokenizer.h"
#include "models/tokenizer_stream.h"
#include "tests/fuzz/fuzz_util.h"

namespace mesa {
namespace {

constexpr size_t kHugeBytes = 64 << 10;
// The decoder's state is a few tokens wide, so long streams add time rather than coverage.
constexpr size_t kMaxStreamIds = 512;

const Tokenizer& GetTokenizer() {
  static const Tokenizer* const tokenizer = [] {
    auto tok = Tokenizer::Load(fuzz::TestdataDir() + "/tokenizer/tiny.model", 400);
    if (!tok.ok()) fuzz::Fail(__FILE__, __LINE__, "tokenizer", tok.status().ToString());
    return tok->release();
  }();
  return *tokenizer;
}

std::string Ids(const std::vector<int32_t>& ids) {
  return absl::StrCat("[", absl::StrJoin(ids, ", "), "]");
}

void CheckEncodeDecode(const Tokenizer& tok, std::string_view text) {
  const int32_t pieces = tok.piece_count();
  auto ids = tok.Encode(text);
  const bool strict = fuzz::IsStrictUtf8(text);
  if (!ids.ok()) {
    FUZZ_CHECK(!IsValidUtf8(text), "Encode failed on valid UTF-8 " + fuzz::Printable(text) +
                                       ": " + ids.status().ToString());
    return;
  }
  for (int32_t id : *ids) {
    FUZZ_CHECK(id >= 0 && id < pieces, absl::StrCat("Encode produced id ", id));
  }
  auto back = tok.Decode(*ids);
  FUZZ_CHECK(back.ok(), "Decode of encoded ids failed: " + back.status().ToString());
  FUZZ_CHECK(IsValidUtf8(*back), "Decode produced invalid UTF-8 " + fuzz::Printable(*back));
  if (strict && text.find("\xE2\x96\x81") == std::string_view::npos) {
    FUZZ_CHECK(*back == text, "round trip changed " + fuzz::Printable(text) + " into " +
                                  fuzz::Printable(*back) + " via " + Ids(*ids));
  }
}

}  // namespace
}  // namespace mesa

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  mesa::GetTokenizer();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace mesa;
  if (size == 0) return 0;
  const Tokenizer& tok = GetTokenizer();
  const int32_t pieces = tok.piece_count();
  const uint8_t flags = data[0];
  const std::string_view payload(reinterpret_cast<const char*>(data + 1), size - 1);

  if (flags == 0xFF) {
    if (payload.empty()) return 0;
    std::string huge;
    huge.reserve(kHugeBytes);
    while (huge.size() + payload.size() <= kHugeBytes) huge.append(payload);
    CheckEncodeDecode(tok, huge);
    return 0;
  }

  CheckEncodeDecode(tok, payload);

  // Ids from the payload's bytes, two per id; some fall outside the pieces.
  std::vector<int32_t> raw_ids, ids;
  bool any_invalid = false;
  for (size_t i = 0; i + 1 < payload.size(); i += 2) {
    const int32_t v = static_cast<uint8_t>(payload[i]) | (static_cast<uint8_t>(payload[i + 1]) << 8);
    raw_ids.push_back(v % (pieces + 16));
    any_invalid |= raw_ids.back() >= pieces;
    ids.push_back(v % pieces);
  }
  auto decoded = tok.Decode(raw_ids);
  if (any_invalid) {
    FUZZ_CHECK(!decoded.ok() && decoded.status().code() == absl::StatusCode::kInvalidArgument,
               "Decode accepted an id outside the pieces: " + Ids(raw_ids));
  } else {
    FUZZ_CHECK(decoded.ok(), "Decode failed on " + Ids(raw_ids) + ": " + decoded.status().ToString());
    FUZZ_CHECK(IsValidUtf8(*decoded),
               "Decode produced invalid UTF-8 " + fuzz::Printable(*decoded) + " from " + Ids(raw_ids));
  }

  // Streaming: the first few ids are the context (the prompt), the rest are generated.
  const size_t context_len = std::min<size_t>(flags & 0x0F, ids.size());
  const std::vector<int32_t> context(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(context_len));
  StreamDecoder stream(tok, context);
  // The same stream decoding every token (no Tokenizer::MidTextOf shortcut) releases the same.
  StreamDecoder decoding(tok, context, /*mid_text=*/false);
  const size_t stream_end = std::min(ids.size(), context_len + kMaxStreamIds);
  for (size_t i = context_len; i < stream_end; ++i) {
    auto chunk = stream.Push(ids[i]);
    FUZZ_CHECK(chunk.ok(), "Push failed: " + chunk.status().ToString());
    auto same = decoding.Push(ids[i]);
    FUZZ_CHECK(same.ok() && *same == *chunk,
               absl::StrCat("the mid-text shortcut released ", fuzz::Printable(*chunk),
                            " where decoding gives ", fuzz::Printable(same.ok() ? *same : ""),
                            " after ids ", Ids(ids), " up to index ", i));
    FUZZ_CHECK(IsValidUtf8(*chunk),
               absl::StrCat("StreamDecoder released invalid UTF-8 ", fuzz::Printable(*chunk),
                            " after pushing ids ", Ids(ids), " up to index ", i, " (context ",
                            context_len, ")"));
  }
  if (flags & 0x10) {
    auto bad = stream.Push(pieces + (flags & 0x0F));
    FUZZ_CHECK(!bad.ok(), "Push accepted an id outside the pieces");
    return 0;  // what a decoder does after an error is unspecified; it is not used again
  }
  auto rest = stream.Flush();
  FUZZ_CHECK(rest.ok(), "Flush failed: " + rest.status().ToString());
  FUZZ_CHECK(IsValidUtf8(*rest), absl::StrCat("StreamDecoder::Flush released invalid UTF-8 ",
                                              fuzz::Printable(*rest), " for ids ", Ids(ids)));
  return 0;
}
