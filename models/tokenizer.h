// Text <-> token ids for a model directory's sentencepiece tokenizer.model.
// Thread-safe for concurrent Encode/Decode (sentencepiece processors are const after load).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace mesa {
namespace spm {
class Processor;
}

class Tokenizer {
 public:
  ~Tokenizer();
  // `vocab_size` is the model's; a tokenizer with more pieces than that is rejected, since
  // it could produce ids the model has no embedding for.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::filesystem::path& path,
                                                         int32_t vocab_size);
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromSerialized(std::string_view bytes,
                                                                   int32_t vocab_size,
                                                                   const std::string& source);

  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text) const;
  // Ids outside [0, piece count) are an error; byte pieces that do not form complete UTF-8
  // decode to U+FFFD (see StreamDecoder for streaming).
  absl::StatusOr<std::string> Decode(const std::vector<int32_t>& ids) const;
  std::string IdToPiece(int32_t id) const;
  int32_t piece_count() const;
  // The text token `id` adds after text that already holds a piece (the piece with its word
  // marker as a space), for normal pieces whose decoding was checked to be exactly that at
  // load; null for byte, control, unknown and unused pieces (and ids out of range). Lets a
  // stream release a token's text without decoding its context again (StreamDecoder).
  const std::string* MidTextOf(int32_t id) const {
    return id >= 0 && id < static_cast<int32_t>(mid_text_.size()) && mid_text_[id].has_value()
               ? &*mid_text_[id]
               : nullptr;
  }

 private:
  Tokenizer() = default;
  // Fills mid_text_ (one decode of two pieces per normal piece).
  void FindMidTexts();

  std::unique_ptr<spm::Processor> sp_;
  std::string source_;
  std::vector<std::optional<std::string>> mid_text_;  // [piece]: MidTextOf, where it applies
};

}  // namespace mesa
