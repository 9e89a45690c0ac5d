#include "server/serve_config.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "base/flags.h"
#include "engine/runner_factory.h"
#include "base/log.h"
#include "base/status_macros.h"

namespace mesa::server {
namespace {

absl::Status CheckRange(const char* flag, int64_t value, int64_t lo, int64_t hi) {
  if (value < lo || value > hi) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, " ", value, " is outside the allowed range [", lo, ", ", hi, "]"));
  }
  return absl::OkStatus();
}

// Reads a PEM or secret file named by a flag; errors name the flag and the path, never the
// content.
absl::StatusOr<std::string> ReadSecretFile(const char* flag, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(absl::StrCat("--", flag, ": cannot read '", path, "'"));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (text.str().size() > (1u << 20)) {
    return absl::InvalidArgumentError(absl::StrCat("--", flag, ": '", path, "' is larger than 1 MiB"));
  }
  return text.str();
}

absl::Status LoadSecurity(const std::string& auth_token_file, SecurityConfig* s) {
  if (s->tls_cert.empty() != s->tls_key.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key must be given together");
  }
  if (!s->tls_client_ca.empty() && s->tls_cert.empty()) {
    return absl::InvalidArgumentError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key");
  }
  // The flags name files; from here on the fields hold their contents.
  if (!s->tls_cert.empty()) {
    MESA_ASSIGN_OR_RETURN(s->tls_cert, ReadSecretFile("tls-cert", s->tls_cert));
    MESA_ASSIGN_OR_RETURN(s->tls_key, ReadSecretFile("tls-key", s->tls_key));
  }
  if (!s->tls_client_ca.empty()) {
    MESA_ASSIGN_OR_RETURN(s->tls_client_ca, ReadSecretFile("tls-client-ca", s->tls_client_ca));
  }
  if (!auth_token_file.empty()) {
    MESA_ASSIGN_OR_RETURN(std::string token, ReadSecretFile("auth-token-file", auth_token_file));
    while (!token.empty() && std::isspace(static_cast<unsigned char>(token.back()))) token.pop_back();
    while (!token.empty() && std::isspace(static_cast<unsigned char>(token.front()))) token.erase(0, 1);
    if (token.size() < 16) {
      return absl::InvalidArgumentError(absl::StrCat("--auth-token-file: the token in '", auth_token_file,
                                                     "' has ", token.size(),
                                                     " characters; at least 16 are required"));
    }
    s->auth_token = token;
  }
  return absl::OkStatus();
}

}  // namespace

int64_t DefaultStateBudgetBytes() {
  // MemAvailable from /proc/meminfo; fall back to physical pages.
  int64_t available = 0;
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  int64_t kb = 0;
  std::string unit;
  while (meminfo >> key >> kb >> unit) {
    if (key == "MemAvailable:") {
      available = kb * 1024;
      break;
    }
  }
  if (available <= 0) available = static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGESIZE);
  // In a container /proc/meminfo shows the host: the cgroup's limit (v2, then v1) caps it.
  for (const char* path : {"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}) {
    std::ifstream f(path);
    std::string limit;
    if (f >> limit && !limit.empty() && limit != "max") {
      const int64_t bytes = std::strtoll(limit.c_str(), nullptr, 10);
      if (bytes > 0) available = std::min(available, bytes);
      break;
    }
  }
  return std::min<int64_t>(available / 4, int64_t{4096} << 20);
}

absl::StatusOr<int32_t> SlotsForMemory(int64_t budget_bytes, int64_t bytes_per_slot) {
  if (bytes_per_slot <= 0) return absl::InternalError("state size per slot is not positive");
  const int64_t slots = budget_bytes / bytes_per_slot;
  if (slots < 1) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the state pool does not fit: one sequence needs ", bytes_per_slot, " bytes of state but ",
        budget_bytes, " bytes are available for states; raise --state-memory-mb or free memory"));
  }
  return static_cast<int32_t>(std::min<int64_t>(slots, 4096));
}

int32_t PrefillChunkFor(bool gpu) { return gpu ? 1024 : 256; }

void ApplyPrefillDefaults(EngineOptions* eo, bool gpu) {
  if (eo->prefill_chunk == 0) eo->prefill_chunk = PrefillChunkFor(gpu);
  eo->prefill_budget = 2 * eo->prefill_chunk;  // prompt tokens per step over all requests
}

int32_t DefaultDeliveryThreads() {
  const int32_t cores = static_cast<int32_t>(std::max(1u, std::thread::hardware_concurrency()));
  return std::clamp(cores / 4, 1, 4);
}

absl::StatusOr<ServeConfig> ParseServeConfig(const std::vector<std::string>& args,
                                             bool* help_requested, std::string* usage) {
  ServeConfig c;
  c.model = MESA_DEFAULT_MODEL_DIR;
  std::string cg_mode = CgModeName(kDefaultCgMode);
  double cg_tol = kDefaultCgTol, cg_min_tol = c.limits.min_cg_tol, drain = c.drain_timeout_seconds,
         fatal_exit = c.fatal_exit_after_seconds;
  int64_t slots = 0, state_mb = 0, max_waiting = 0,
          max_prompt = c.limits.max_prompt_tokens, max_new = c.limits.max_new_tokens,
          default_new = c.limits.default_max_new_tokens, chunk = 0,
          stream_buffer = c.engine.stream_buffer, cg_iters = 0, cg_iters_limit = c.limits.max_cg_iters,
          prefill_interval = c.engine.prefill_interval,
          threads = 0, delivery_threads = DefaultDeliveryThreads();
  FlagSet f("serve", "Serves the model over gRPC (mesa.v1.Generation, health, reflection) with\n"
                     "Prometheus metrics. Every flag can also be set as MESA_<FLAG> in the\n"
                     "environment (e.g. MESA_LISTEN); the command line wins.");
  f.String("model", &c.model, "model directory");
  f.String("device", &c.device, "model backend: auto (CUDA when this build has it and a GPU is present), cpu or cuda");
  f.String("listen", &c.listen, "gRPC address");
  f.String("metrics-listen", &c.metrics_listen, "Prometheus /metrics address; empty = off");
  f.Int("slots", &slots, "state slots (concurrent sequences); 0 = from --state-memory-mb, or on a GPU without it as many as fit the device (at most 256)");
  f.Int("state-memory-mb", &state_mb, "memory for states; 0 = 25% of available memory, at most 4096");
  f.Int("max-waiting", &max_waiting,
        "requests that may wait for a state slot (RESOURCE_EXHAUSTED beyond it); 0 = twice the slots");
  f.Int("max-prompt-tokens", &max_prompt, "longest prompt accepted");
  f.Int("max-new-tokens", &max_new, "largest max_new_tokens a request may ask for");
  f.Int("default-max-new-tokens", &default_new, "max_new_tokens when a request does not say");
  f.Int("prefill-chunk", &chunk, "prompt tokens prefilled per request per engine step (multiple of 64); 0 = 256 on the CPU, 1024 on a GPU");
  f.Int("prefill-interval", &prefill_interval,
        "while requests decode, new prompts are prefilled at most every this many engine steps "
        "(one launch for those that arrived meanwhile); 1 = every step");
  f.Int("stream-buffer", &stream_buffer, "undelivered messages per stream before its generation pauses");
  f.String("cg-mode", &cg_mode, "default CG mode: adaptive or fixed");
  f.Float("cg-tol", &cg_tol, "default adaptive tolerance (relative residual)");
  f.Int("cg-max-iters", &cg_iters, "default CG cap; 0 = the model's own max_cg_step_*");
  f.Float("cg-min-tol", &cg_min_tol, "smallest tolerance a request may ask for");
  f.Int("cg-max-iters-limit", &cg_iters_limit, "largest CG cap a request may ask for");
  f.Float("drain-timeout", &drain, "seconds SIGTERM waits for running requests");
  f.Float("fatal-exit-after", &fatal_exit,
          "seconds after a fatal engine failure (e.g. a sticky GPU fault) before the server exits "
          "with status 3 for its supervisor to restart it; 0 = stay up, NOT_SERVING");
  f.Int("threads", &threads, "engine CPU threads; 0 = all cores");
  f.Int("delivery-threads", &delivery_threads,
        "threads that start the gRPC writes of generated tokens, so the engine thread goes on to its "
        "next step; default one per four cores (1 to 4); 0 = the engine thread writes itself");
  f.Bool("batch-invariant", &c.batch_invariant,
         "a request's tokens and logprobs do not depend on what else runs in its batch, bit for bit "
         "(the CPU backend always; on a GPU it pins one GEMM algorithm per weight shape: batch-1 "
         "decode of a 1.3B model 28 % slower)");
  f.Bool("device-sampling", &c.engine.device_sampling,
         "greedy and plain temperature sampling on the model's device (a GPU returns token ids, not logits); "
         "off: every token is sampled on the host");
  f.Bool("pipeline-decode", &c.engine.pipeline_decode,
         "on a GPU, start each decode step before the host handles the previous step's tokens "
         "(same tokens; the host work overlaps the GPU's); off: one step at a time");
  f.String("log-level", &c.log_level, "debug, info, warning or error");
  std::string auth_token_file;
  int64_t max_streams = c.max_streams_per_connection;
  f.String("health-listen", &c.health_listen,
           "extra plaintext address serving only grpc.health.v1 (for probes when TLS or auth is on)");
  f.Int("max-streams-per-connection", &max_streams, "concurrent calls one client connection may open");
  f.String("tls-cert", &c.security.tls_cert, "PEM certificate chain: serve gRPC over TLS");
  f.String("tls-key", &c.security.tls_key, "PEM private key of --tls-cert");
  f.String("tls-client-ca", &c.security.tls_client_ca,
           "PEM CA bundle: require client certificates signed by it (mutual TLS)");
  f.String("auth-token-file", &auth_token_file,
           "file holding the bearer token that mesa.v1.Generation calls must send");
  MESA_RETURN_IF_ERROR(f.Parse(args));
  *help_requested = f.help_requested();
  *usage = f.Usage();
  if (*help_requested) return c;
  MESA_RETURN_IF_ERROR(f.ApplyEnvironment("MESA_"));

  MESA_RETURN_IF_ERROR(ParseDevice(c.device).status());
  LogLevel level;
  if (!ParseLogLevel(c.log_level, &level)) {
    return absl::InvalidArgumentError(absl::StrCat("--log-level '", c.log_level,
                                                   "' is not one of debug, info, warning, error"));
  }
  MESA_RETURN_IF_ERROR(CheckRange("slots", slots, 0, 4096));
  MESA_RETURN_IF_ERROR(CheckRange("state-memory-mb", state_mb, 0, int64_t{1} << 30));
  MESA_RETURN_IF_ERROR(CheckRange("max-waiting", max_waiting, 0, 1 << 20));
  MESA_RETURN_IF_ERROR(CheckRange("max-prompt-tokens", max_prompt, 1, 1 << 24));
  MESA_RETURN_IF_ERROR(CheckRange("max-new-tokens", max_new, 1, 1 << 24));
  MESA_RETURN_IF_ERROR(CheckRange("default-max-new-tokens", default_new, 1, max_new));
  MESA_RETURN_IF_ERROR(CheckRange("prefill-chunk", chunk, 0, 1 << 16));
  if (chunk % 64 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("--prefill-chunk ", chunk, " is not a multiple of 64"));
  }
  MESA_RETURN_IF_ERROR(CheckRange("stream-buffer", stream_buffer, 1, 1 << 20));
  MESA_RETURN_IF_ERROR(CheckRange("prefill-interval", prefill_interval, 1, 1000));
  MESA_RETURN_IF_ERROR(CheckRange("cg-max-iters-limit", cg_iters_limit, 1, kMaxCgIters));
  MESA_RETURN_IF_ERROR(CheckRange("cg-max-iters", cg_iters, 0, cg_iters_limit));
  MESA_RETURN_IF_ERROR(CheckRange("threads", threads, 0, 1024));
  MESA_RETURN_IF_ERROR(CheckRange("delivery-threads", delivery_threads, 0, 64));
  MESA_RETURN_IF_ERROR(CheckRange("max-streams-per-connection", max_streams, 1, 1 << 16));
  c.max_streams_per_connection = static_cast<int32_t>(max_streams);
  MESA_RETURN_IF_ERROR(LoadSecurity(auth_token_file, &c.security));
  if (!(drain >= 0.0 && drain <= 86400.0)) {
    return absl::InvalidArgumentError(absl::StrCat("--drain-timeout ", drain, " is outside [0, 86400]"));
  }
  if (!(fatal_exit >= 0.0 && fatal_exit <= 86400.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--fatal-exit-after ", fatal_exit, " is outside [0, 86400]"));
  }
  if (!(cg_min_tol > 0.0 && cg_min_tol < 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat("--cg-min-tol ", cg_min_tol, " is outside (0, 1)"));
  }
  if (cg_tol < cg_min_tol) {
    return absl::InvalidArgumentError(
        absl::StrCat("--cg-tol ", cg_tol, " is below --cg-min-tol ", cg_min_tol));
  }
  MESA_ASSIGN_OR_RETURN(c.cg.mode, ParseCgMode(cg_mode));
  c.cg.tol = static_cast<float>(cg_tol);
  c.cg.max_iters = static_cast<int32_t>(cg_iters);
  MESA_RETURN_IF_ERROR(ValidateCgSettings(c.cg));
  c.slots = static_cast<int32_t>(slots);
  c.state_memory_mb = state_mb;
  c.threads = static_cast<int32_t>(threads);
  c.delivery_threads = static_cast<int32_t>(delivery_threads);
  c.drain_timeout_seconds = drain;
  c.fatal_exit_after_seconds = fatal_exit;
  c.engine.max_waiting = static_cast<int32_t>(max_waiting);
  c.engine.prefill_chunk = static_cast<int32_t>(chunk);  // 0: by device; serve.cc sets the budget
  c.engine.prefill_interval = static_cast<int32_t>(prefill_interval);
  c.engine.stream_buffer = static_cast<int32_t>(stream_buffer);
  c.limits.max_prompt_tokens = static_cast<int32_t>(max_prompt);
  c.limits.max_new_tokens = static_cast<int32_t>(max_new);
  c.limits.default_max_new_tokens = static_cast<int32_t>(default_new);
  c.limits.min_cg_tol = static_cast<float>(cg_min_tol);
  c.limits.max_cg_iters = static_cast<int32_t>(cg_iters_limit);
  return c;
}

}  // namespace mesa::server
