// Configuration of `mesaserve serve`: flags, MESA_* environment variables, validation.
// docs/server-interface.md is the reference for names and defaults.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/cg_settings.h"
#include "engine/engine.h"

namespace mesa::server {

struct Limits {
  int32_t max_prompt_tokens = 8192;
  int32_t max_new_tokens = 4096;
  int32_t default_max_new_tokens = 256;
  int32_t max_stop_strings = 16;
  int32_t max_stop_string_bytes = 256;
  int32_t max_stop_token_ids = 64;
  int32_t max_top_logprobs = 20;
  int32_t max_request_id_bytes = 128;
  int32_t max_prompt_bytes = 1 << 20;  // text prompts
  float min_cg_tol = 1e-6f;
  int32_t max_cg_iters = 200;
};

struct SecurityConfig {
  std::string tls_cert;        // PEM server certificate chain; with tls_key enables TLS
  std::string tls_key;         // PEM private key
  std::string tls_client_ca;   // PEM CA bundle: clients must present a certificate it signed
  std::string auth_token;      // bearer token required by mesa.v1.Generation (from a file)
  bool tls() const { return !tls_cert.empty(); }
};

struct ServeConfig {
  std::string model;
  std::string device = "auto";   // auto | cpu | cuda (engine/runner_factory.h)
  std::string listen = "0.0.0.0:50051";
  std::string metrics_listen = "0.0.0.0:9090";
  std::string health_listen;     // extra plaintext listener with only grpc.health.v1; empty = none
  int32_t max_streams_per_connection = 128;
  SecurityConfig security;
  int32_t slots = 0;             // 0 = from state_memory_mb
  int64_t state_memory_mb = 0;   // 0 = 25% of available memory, at most 4096
  int32_t threads = 0;
  int32_t delivery_threads = 1;  // 0 = gRPC writes start on the engine thread
  bool batch_invariant = false;  // RunnerSpec::batch_invariant
  double drain_timeout_seconds = 30.0;
  // After a fatal engine failure (a poisoned backend, e.g. a sticky device fault) the server
  // exits with kExitEngineFailed this many seconds later, so that its supervisor restarts it;
  // in between it answers NOT_SERVING and refuses requests. 0 = stay up, not ready.
  double fatal_exit_after_seconds = 5.0;
  std::string log_level = "info";
  CgSettings cg;                 // server defaults
  Limits limits;
  // engine.max_waiting 0 = twice the state slots (serve sets it once the pool is sized);
  // engine.prefill_chunk 0 = by device (PrefillChunkFor once the backend is known);
  // engine.prefill_budget is set by serve from the chunk (two chunks per step).
  EngineOptions engine;
};

// The prefill chunk `serve` uses when --prefill-chunk is 0: 256 tokens on the CPU, 1024 on a
// GPU. On an H200 with a 1.3B model and 2048-token prompts at concurrency 4, 1024 against 256
// halved the time to first token (85 against 166 ms p50) and raised throughput 1.6x, with a
// longer worst inter-token gap (p99 45 against 22 ms); docs/benchmarks.md.
int32_t PrefillChunkFor(bool gpu);
// The server's prefill settings on `eo`: a chunk of 0 becomes PrefillChunkFor(gpu), and the
// budget per step two chunks. `mesaserve bench`'s engine load uses them too.
void ApplyPrefillDefaults(EngineOptions* eo, bool gpu);

// Threads that start gRPC writes when --delivery-threads is not given: one per four cores,
// at least 1 and at most 4.
int32_t DefaultDeliveryThreads();

// Parses the flags of `serve` (after the command name) and MESA_* variables; help_requested
// is set on --help (the usage text goes to *usage).
absl::StatusOr<ServeConfig> ParseServeConfig(const std::vector<std::string>& args,
                                             bool* help_requested, std::string* usage);

// Slots that fit `budget_bytes` of state, at least 1; a budget below one slot is an error that
// names both numbers.
absl::StatusOr<int32_t> SlotsForMemory(int64_t budget_bytes, int64_t bytes_per_slot);

// Memory the state pool may use when --state-memory-mb is 0: a quarter of the available
// memory (bounded by the container's cgroup limit), at most 4 GiB.
int64_t DefaultStateBudgetBytes();

}  // namespace mesa::server
