// A minimal leveled logger (Debian's Abseil 20220623 has no absl/log).
// Usage: MESA_LOG(INFO) << "loaded " << n << " tensors";
// Thread-safe: each message is formatted privately and written with one call.
// Prompt and completion text must never be logged at INFO or above.
#pragma once

#include <sstream>
#include <string_view>

namespace mesa {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

void SetMinLogLevel(LogLevel level);
LogLevel MinLogLevel();
// Parses "debug", "info", "warning", "error"; returns false on anything else.
bool ParseLogLevel(std::string_view text, LogLevel* level);

// Turns the stream expression into void so both branches of MESA_LOG's ?: agree; `&` binds
// more loosely than `<<`, so the whole message is formatted first.
struct LogVoidify {
  void operator&(std::ostream&) {}
};

class LogMessage {
 public:
  LogMessage(LogLevel level, const char* file, int line);
  ~LogMessage();
  std::ostream& stream() { return stream_; }

 private:
  LogLevel level_;
  std::ostringstream stream_;
};

}  // namespace mesa

#define MESA_LOG_LEVEL_DEBUG ::mesa::LogLevel::kDebug
#define MESA_LOG_LEVEL_INFO ::mesa::LogLevel::kInfo
#define MESA_LOG_LEVEL_WARNING ::mesa::LogLevel::kWarning
#define MESA_LOG_LEVEL_ERROR ::mesa::LogLevel::kError

// A conditional expression rather than an if/else, so that `if (x) MESA_LOG(INFO) << ...;
// else ...` parses as written (no dangling else); the stream expression is only evaluated
// when the level is enabled.
#define MESA_LOG(severity)                                                     \
  (MESA_LOG_LEVEL_##severity < ::mesa::MinLogLevel())                          \
      ? (void)0                                                                \
      : ::mesa::LogVoidify() &                                                 \
            ::mesa::LogMessage(MESA_LOG_LEVEL_##severity, __FILE__, __LINE__).stream()
