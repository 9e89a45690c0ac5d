// Subcommands of the `mesaserve` binary. Each returns the process exit code.
#pragma once

#include <string>
#include <vector>

namespace mesa::cli {

int RunGenerate(const std::vector<std::string>& args);
int RunLogits(const std::vector<std::string>& args);
int RunPerplexity(const std::vector<std::string>& args);
int RunBench(const std::vector<std::string>& args);

// Prints "error: <message>" to stderr and returns the exit code for a failed command.
int Fail(const std::string& message);

}  // namespace mesa::cli
