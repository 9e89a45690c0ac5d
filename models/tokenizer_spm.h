// Thin wrapper over sentencepiece with a std-only interface. sentencepiece_processor.h 0.1.97
// declares its own absl::string_view, which clashes with Abseil's headers, so only
// tokenizer_spm.cc includes it and nothing here includes Abseil.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace mesa::spm {

class Processor {
 public:
  virtual ~Processor() = default;
  virtual bool Encode(std::string_view text, std::vector<int>* ids, std::string* error) const = 0;
  virtual bool Decode(const std::vector<int>& ids, std::string* text, std::string* error) const = 0;
  virtual int PieceSize() const = 0;
  virtual std::string IdToPiece(int id) const = 0;
  // A normal piece: not a byte, control, unknown or unused piece.
  virtual bool IsNormal(int id) const = 0;
  virtual int bos_id() const = 0;
  virtual int eos_id() const = 0;
  virtual int unk_id() const = 0;
};

// Loads a serialized model from memory; returns null and sets *error on failure.
std::unique_ptr<Processor> LoadFromSerialized(std::string_view model_bytes, std::string* error);

}  // namespace mesa::spm
