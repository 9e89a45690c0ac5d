#include "models/tokenizer.h"

#include "absl/strings/str_cat.h"
#include "base/file_util.h"
#include "base/status_macros.h"
#include "models/tokenizer_spm.h"

namespace mesa {

Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::filesystem::path& path,
                                                           int32_t vocab_size) {
  MESA_ASSIGN_OR_RETURN(std::string bytes, ReadFileToString(path, 256u << 20));
  return FromSerialized(bytes, vocab_size, path.string());
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromSerialized(std::string_view bytes,
                                                                     int32_t vocab_size,
                                                                     const std::string& source) {
  std::string error;
  std::unique_ptr<spm::Processor> sp = spm::LoadFromSerialized(bytes, &error);
  if (sp == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": not a valid sentencepiece model: ", error));
  }
  if (sp->PieceSize() > vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": tokenizer has ", sp->PieceSize(),
                                                   " pieces but the model's vocab_size is ",
                                                   vocab_size));
  }
  std::unique_ptr<Tokenizer> t(new Tokenizer());
  t->sp_ = std::move(sp);
  t->source_ = source;
  t->FindMidTexts();
  return t;
}

void Tokenizer::FindMidTexts() {
  const int n = sp_->PieceSize();
  mid_text_.assign(n, std::nullopt);
  std::string error;
  // An anchor: a normal piece with text of its own, so that the piece after it is not the
  // first of the text (whose word marker decoding drops).
  int anchor = -1;
  std::string anchor_text;
  for (int id = 0; id < n && anchor < 0; ++id) {
    if (sp_->IsNormal(id) && sp_->Decode({id}, &anchor_text, &error) && !anchor_text.empty()) {
      anchor = id;
    }
  }
  if (anchor < 0) return;
  const std::string marker = "\xE2\x96\x81";  // U+2581, sentencepiece's word marker
  std::string both;
  for (int id = 0; id < n; ++id) {
    if (!sp_->IsNormal(id)) continue;
    std::string text = sp_->IdToPiece(id);
    for (size_t at = text.find(marker); at != std::string::npos; at = text.find(marker, at + 1)) {
      text.replace(at, marker.size(), " ");
    }
    // Kept only where sentencepiece itself decodes the pair to exactly that.
    if (sp_->Decode({anchor, id}, &both, &error) && both.size() == anchor_text.size() + text.size() &&
        both.compare(0, anchor_text.size(), anchor_text) == 0 &&
        both.compare(anchor_text.size(), std::string::npos, text) == 0) {
      mid_text_[id] = std::move(text);
    }
  }
}

absl::StatusOr<std::vector<int32_t>> Tokenizer::Encode(std::string_view text) const {
  std::vector<int> ids;
  std::string error;
  if (!sp_->Encode(text, &ids, &error)) {
    return absl::InvalidArgumentError(absl::StrCat("cannot tokenize text: ", error));
  }
  return std::vector<int32_t>(ids.begin(), ids.end());
}

absl::StatusOr<std::string> Tokenizer::Decode(const std::vector<int32_t>& ids) const {
  const int32_t n = sp_->PieceSize();
  for (int32_t id : ids) {
    if (id < 0 || id >= n) {
      return absl::InvalidArgumentError(
          absl::StrCat("token id ", id, " is outside the tokenizer's pieces [0, ", n, ")"));
    }
  }
  std::string text, error;
  if (!sp_->Decode(std::vector<int>(ids.begin(), ids.end()), &text, &error)) {
    return absl::InternalError(absl::StrCat("cannot detokenize: ", error));
  }
  return text;
}

std::string Tokenizer::IdToPiece(int32_t id) const {
  if (id < 0 || id >= sp_->PieceSize()) return "";
  return sp_->IdToPiece(id);
}

int32_t Tokenizer::piece_count() const { return sp_->PieceSize(); }

}  // namespace mesa
