#include "models/tokenizer_spm.h"

#include <sentencepiece_processor.h>

// sentencepiece's logger prints INFO lines (e.g. about identity normalisation) on every load;
// its setter is not in the public header of 0.1.97.
namespace sentencepiece::logging {
void SetMinLogLevel(int v);
}  // namespace sentencepiece::logging

namespace mesa::spm {
namespace {

class SpmProcessor final : public Processor {
 public:
  bool Load(std::string_view bytes, std::string* error) {
    const auto status = sp_.LoadFromSerializedProto({bytes.data(), bytes.size()});
    if (!status.ok()) {
      *error = status.ToString();
      return false;
    }
    return true;
  }

  bool Encode(std::string_view text, std::vector<int>* ids, std::string* error) const override {
    const auto status = sp_.Encode({text.data(), text.size()}, ids);
    if (!status.ok()) {
      *error = status.ToString();
      return false;
    }
    return true;
  }

  bool Decode(const std::vector<int>& ids, std::string* text, std::string* error) const override {
    const auto status = sp_.Decode(ids, text);
    if (!status.ok()) {
      *error = status.ToString();
      return false;
    }
    return true;
  }

  int PieceSize() const override { return sp_.GetPieceSize(); }
  std::string IdToPiece(int id) const override { return sp_.IdToPiece(id); }
  bool IsNormal(int id) const override {
    return !sp_.IsByte(id) && !sp_.IsControl(id) && !sp_.IsUnknown(id) && !sp_.IsUnused(id);
  }
  int bos_id() const override { return sp_.bos_id(); }
  int eos_id() const override { return sp_.eos_id(); }
  int unk_id() const override { return sp_.unk_id(); }

 private:
  sentencepiece::SentencePieceProcessor sp_;
};

}  // namespace

std::unique_ptr<Processor> LoadFromSerialized(std::string_view model_bytes, std::string* error) {
  sentencepiece::logging::SetMinLogLevel(1);  // warnings and above
  auto p = std::make_unique<SpmProcessor>();
  if (!p->Load(model_bytes, error)) return nullptr;
  return p;
}

}  // namespace mesa::spm
