// Incremental detokenization that is safe to stream: text is released only once it can no
// longer change, so a character split over several byte-fallback tokens is never emitted
// half-written, and word-initial spaces are kept (sentencepiece drops the leading space of
// the first piece it decodes, so each step decodes with a few tokens of left context).
// Not thread-safe: one per stream.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "models/tokenizer.h"

namespace mesa {

class StreamDecoder {
 public:
  // `context` is the text's preceding tokens (the prompt); its last few are used for context.
  // With `mid_text` (the default) a normal piece after released text is released as
  // Tokenizer::MidTextOf without decoding (the same text; false: always decode, for tests).
  StreamDecoder(const Tokenizer& tokenizer, const std::vector<int32_t>& context,
                bool mid_text = true);

  // Appends one token and returns the newly final text (often empty while bytes are pending).
  absl::StatusOr<std::string> Push(int32_t token);
  // Returns whatever is still held back (an incomplete character decodes to U+FFFD).
  absl::StatusOr<std::string> Flush();

 private:
  // Whether the context window [prefix_, read_) holds a normal piece (so decoding it gives
  // text, and the next piece is not the first of the text).
  bool WindowHasText() const;
  // Marks every pushed token released; the context window becomes the last few of them.
  void ReleaseAll();

  const Tokenizer& tokenizer_;
  bool mid_text_;
  std::vector<int32_t> ids_;
  size_t prefix_ = 0;  // start of the context window
  size_t read_ = 0;    // tokens whose text has been released
};

// True if `text` ends with U+FFFD, which is what sentencepiece yields for a byte sequence that
// is not (yet) complete UTF-8.
bool EndsWithReplacementChar(const std::string& text);

}  // namespace mesa
