// Text <-> token ids for a model directory's sentencepiece tokenizer.model.
// Thread-safe for concurrent Encode/Decode (sentencepiece processors are const after load).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
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

 private:
  Tokenizer() = default;
  std::unique_ptr<spm::Processor> sp_;
  std::string source_;
};

}  // namespace mesa
