// mesaserve: one binary, several subcommands.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "base/log.h"
#include "cli/commands.h"
#ifdef MESA_WITH_SERVER
#include "server/health_client.h"
#include "server/loadtest.h"
#include "server/serve.h"
#endif

namespace mesa::cli {

int Fail(const std::string& message) {
  std::fprintf(stderr, "error: %s\n", message.c_str());
  return 1;
}

}  // namespace mesa::cli

namespace {

constexpr char kUsage[] =
    "usage: mesaserve <command> [flags]\n"
    "\n"
    "commands:\n"
    "  serve        run the gRPC server (mesa.v1.Generation, health, reflection, metrics)\n"
    "  health       ask a running server whether it is SERVING (exit code 0/1)\n"
    "  loadtest     load-test a running server (throughput, TTFT/ITL percentiles; exit 0/1)\n"
    "  generate     generate text from a prompt (streams to stdout)\n"
    "  logits       write a model's logits for given token ids to a .npy file\n"
    "  perplexity   perplexity and CG statistics of a model on a text file\n"
    "  bench        engine speed against the memory-bandwidth floor\n"
    "\n"
    "Run 'mesaserve <command> --help' for the flags of a command.\n"
    "Environment: MESA_MODEL_DIR overrides the default model directory;\n"
    "MESA_LOG_LEVEL = debug|info|warning|error.\n";

}  // namespace

int main(int argc, char** argv) {
  if (const char* level = std::getenv("MESA_LOG_LEVEL"); level != nullptr) {
    mesa::LogLevel parsed;
    if (mesa::ParseLogLevel(level, &parsed)) mesa::SetMinLogLevel(parsed);
  }
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0 ||
      std::strcmp(argv[1], "help") == 0) {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string command = argv[1];
  const std::vector<std::string> args(argv + 2, argv + argc);
#ifdef MESA_WITH_SERVER
  if (command == "serve") return mesa::server::RunServe(args);
  if (command == "health") return mesa::server::RunHealthCheck(args);
  if (command == "loadtest") return mesa::server::RunLoadTest(args);
#endif
  if (command == "generate") return mesa::cli::RunGenerate(args);
  if (command == "logits") return mesa::cli::RunLogits(args);
  if (command == "perplexity") return mesa::cli::RunPerplexity(args);
  if (command == "bench") return mesa::cli::RunBench(args);
  std::fprintf(stderr, "error: unknown command '%s'\n\n%s", command.c_str(), kUsage);
  return 2;
}
