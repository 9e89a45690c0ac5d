// UTF-8 well-formedness (lead byte and continuation bytes; overlong forms and surrogates are
// not rejected, which is enough for our uses: stream chunking and message sanitising).
#pragma once

#include <cstddef>
#include <string_view>

namespace mesa {

// Length in bytes of the UTF-8 sequence starting at s[i], or 0 if it is not well formed.
inline size_t Utf8SequenceLength(std::string_view s, size_t i) {
  const unsigned char c = static_cast<unsigned char>(s[i]);
  size_t n;
  if (c < 0x80) return 1;
  if ((c >> 5) == 0x6) n = 2;
  else if ((c >> 4) == 0xe) n = 3;
  else if ((c >> 3) == 0x1e) n = 4;
  else return 0;
  if (i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    if ((static_cast<unsigned char>(s[i + k]) >> 6) != 0x2) return 0;
  }
  return n;
}

inline bool IsValidUtf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const size_t n = Utf8SequenceLength(s, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

}  // namespace mesa
