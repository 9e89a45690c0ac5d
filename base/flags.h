// A small typed flag parser for subcommands ("mesaserve generate --prompt ... --top-k 40").
// Accepts --name=value and --name value; bool flags also as bare --name / --no-name.
// Unknown flags and malformed values are errors that name the flag and the value.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace mesa {

class FlagSet {
 public:
  FlagSet(std::string command, std::string summary);

  void String(const std::string& name, std::string* value, const std::string& help);
  void Int(const std::string& name, int64_t* value, const std::string& help);
  void Float(const std::string& name, double* value, const std::string& help);
  void Bool(const std::string& name, bool* value, const std::string& help);

  // Parses args (without the program and command names). Sets help_requested() on --help.
  absl::Status Parse(const std::vector<std::string>& args);
  // For every flag not given on the command line, takes the value of the environment variable
  // `prefix` + NAME (upper case, dashes as underscores), e.g. MESA_MAX_WAITING for
  // --max-waiting. Call after Parse so the command line wins.
  absl::Status ApplyEnvironment(const std::string& prefix);
  bool help_requested() const { return help_requested_; }
  bool WasSet(const std::string& name) const;
  std::string Usage() const;

 private:
  enum class Kind { kString, kInt, kFloat, kBool };
  struct Flag {
    std::string name;
    Kind kind;
    void* target;
    std::string help;
    std::string default_text;
    bool set = false;
  };
  Flag* Find(const std::string& name);
  absl::Status Assign(Flag& flag, const std::string& text);

  std::string command_, summary_;
  std::vector<Flag> flags_;
  bool help_requested_ = false;
};

}  // namespace mesa
