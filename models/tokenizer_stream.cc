#include "models/tokenizer_stream.h"

#include <algorithm>

#include "base/status_macros.h"

namespace mesa {
namespace {

constexpr size_t kContextTokens = 4;
// A character is at most 4 bytes; a pending tail longer than that is genuinely invalid
// output and is released as U+FFFD rather than held forever.
constexpr size_t kMaxPendingTokens = 4;

}  // namespace

bool EndsWithReplacementChar(const std::string& text) {
  return text.size() >= 3 && text.compare(text.size() - 3, 3, "\xEF\xBF\xBD") == 0;
}

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, const std::vector<int32_t>& context,
                             bool mid_text)
    : tokenizer_(tokenizer), mid_text_(mid_text) {
  const size_t keep = std::min(kContextTokens, context.size());
  ids_.assign(context.end() - static_cast<std::ptrdiff_t>(keep), context.end());
  prefix_ = 0;
  read_ = ids_.size();
}

bool StreamDecoder::WindowHasText() const {
  for (size_t i = prefix_; i < read_; ++i) {
    if (tokenizer_.MidTextOf(ids_[i]) != nullptr) return true;
  }
  return false;
}

absl::StatusOr<std::string> StreamDecoder::Push(int32_t token) {
  // Nothing held back and text before it: a normal piece adds its own text (what decoding the
  // window with and without it would give; about 3 us of sentencepiece per token saved).
  if (const std::string* mid = mid_text_ ? tokenizer_.MidTextOf(token) : nullptr;
      mid != nullptr && read_ == ids_.size() && WindowHasText()) {
    ids_.push_back(token);
    ReleaseAll();
    return *mid;
  }
  ids_.push_back(token);
  const std::vector<int32_t> before(ids_.begin() + prefix_, ids_.begin() + read_);
  const std::vector<int32_t> after(ids_.begin() + prefix_, ids_.end());
  MESA_ASSIGN_OR_RETURN(std::string before_text, tokenizer_.Decode(before));
  MESA_ASSIGN_OR_RETURN(std::string after_text, tokenizer_.Decode(after));
  const size_t pending = ids_.size() - read_;
  if (EndsWithReplacementChar(after_text) && pending < kMaxPendingTokens) return std::string();
  if (after_text.size() < before_text.size() ||
      after_text.compare(0, before_text.size(), before_text) != 0) {
    // The new token rewrote earlier text (rare with sentencepiece); wait for more context
    // unless we have waited long enough.
    if (pending < kMaxPendingTokens) return std::string();
    before_text.clear();
  }
  std::string delta = after_text.substr(before_text.size());
  ReleaseAll();
  return delta;
}

void StreamDecoder::ReleaseAll() {
  prefix_ = read_;
  read_ = ids_.size();
  // Keep the window small: only the last few released tokens are needed for context.
  if (prefix_ + kContextTokens < read_) prefix_ = read_ - kContextTokens;
}

absl::StatusOr<std::string> StreamDecoder::Flush() {
  if (read_ == ids_.size()) return std::string();
  const std::vector<int32_t> before(ids_.begin() + prefix_, ids_.begin() + read_);
  const std::vector<int32_t> after(ids_.begin() + prefix_, ids_.end());
  MESA_ASSIGN_OR_RETURN(std::string before_text, tokenizer_.Decode(before));
  MESA_ASSIGN_OR_RETURN(std::string after_text, tokenizer_.Decode(after));
  read_ = ids_.size();
  prefix_ = read_;
  if (after_text.compare(0, before_text.size(), before_text) == 0) {
    return after_text.substr(before_text.size());
  }
  return after_text;
}

}  // namespace mesa
