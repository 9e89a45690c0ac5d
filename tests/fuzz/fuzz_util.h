// Helpers shared by the libFuzzer targets in tests/fuzz (docs/fuzzing.md).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>

namespace mesa::fuzz {

// An invariant of the code under test does not hold: print what and abort, which libFuzzer
// reports as a crash and saves the input for.
[[noreturn]] inline void Fail(const char* file, int line, const char* condition,
                              const std::string& detail) {
  std::fprintf(stderr, "\n==== FUZZ INVARIANT VIOLATED at %s:%d: %s\n==== %s\n", file, line,
               condition, detail.c_str());
  std::fflush(stderr);
  std::abort();
}

// `detail` (a std::string expression) is evaluated only when the check fails.
#define FUZZ_CHECK(condition, detail)                                           \
  do {                                                                          \
    if (!(condition)) ::mesa::fuzz::Fail(__FILE__, __LINE__, #condition, (detail)); \
  } while (0)

// Offset of the first byte that does not begin a well-formed UTF-8 sequence in the strict
// sense of Unicode 15, table 3-7 (no overlong forms, no surrogates, nothing above U+10FFFF),
// or nullopt. base/utf8.h's IsValidUtf8 is deliberately laxer; this one is the reference the
// targets compare against.
inline std::optional<size_t> FindInvalidUtf8Strict(std::string_view s) {
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    const auto c = static_cast<uint8_t>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c == 0xE0) {
      len = 3, lo = 0xA0;
    } else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) {
      len = 3;
    } else if (c == 0xED) {
      len = 3, hi = 0x9F;
    } else if (c == 0xF0) {
      len = 4, lo = 0x90;
    } else if (c >= 0xF1 && c <= 0xF3) {
      len = 4;
    } else if (c == 0xF4) {
      len = 4, hi = 0x8F;
    } else {
      return i;
    }
    if (n - i < len) return i;
    const auto c1 = static_cast<uint8_t>(s[i + 1]);
    if (c1 < lo || c1 > hi) return i;
    for (size_t k = 2; k < len; ++k) {
      const auto ck = static_cast<uint8_t>(s[i + k]);
      if (ck < 0x80 || ck > 0xBF) return i;
    }
    i += len;
  }
  return std::nullopt;
}

inline bool IsStrictUtf8(std::string_view s) { return !FindInvalidUtf8Strict(s).has_value(); }

// `s` with non-printable bytes escaped and cut to `max` bytes, for failure messages.
inline std::string Printable(std::string_view s, size_t max = 200) {
  std::string out;
  for (size_t i = 0; i < s.size() && i < max; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out.push_back(static_cast<char>(c));
    } else {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02X", c);
      out += buf;
    }
  }
  if (s.size() > max) out += "... (" + std::to_string(s.size()) + " bytes)";
  return out;
}

// The directory of tests/testdata, compiled in by tests/CMakeLists.txt; MESA_TESTDATA_DIR in
// the environment overrides it (for a fuzzer binary copied elsewhere).
inline std::string TestdataDir() {
  if (const char* env = std::getenv("MESA_TESTDATA_DIR"); env != nullptr && *env != '\0') {
    return env;
  }
  return MESA_TESTDATA_DIR;
}

}  // namespace mesa::fuzz
