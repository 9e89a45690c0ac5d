// Finds stop strings in streamed text and decides how much text is safe to release: text that
// could be the beginning of a stop string is held back until the next token decides it.
// Not thread-safe: one per request.
#pragma once

#include <string>
#include <vector>

namespace mesa {

class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops);

  // Appends newly decoded text. Returns the text that can be released now. Sets *stopped when a
  // stop string appeared; the returned text then ends right before it and nothing after the
  // match is ever released.
  std::string Append(const std::string& text, bool* stopped);
  // At the end of generation: whatever was held back (no stop string matched it).
  std::string Flush();

 private:
  std::vector<std::string> stops_;
  std::string pending_;  // text not yet released
};

}  // namespace mesa
