#include "server/serve.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <omp.h>
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <thread>

#include "absl/strings/str_cat.h"
#include "base/log.h"
#include "base/status_macros.h"
#include "engine/cpu_model_runner.h"
#include "engine/fault_injection.h"
#include "engine/runner_factory.h"
#include "models/checkpoint.h"
#include "server/generation_service.h"
#include "server/metrics_observer.h"

namespace mesa::server {
namespace {

constexpr char kVersion[] = "0.1.0";
constexpr int kMaxMessageBytes = 4 << 20;
constexpr char kServiceName[] = "mesa.v1.Generation";

// Everything a running server owns, torn down in reverse order.
struct Server {
  ServeConfig config;
  // Outlives the engine and the gRPC server: calls post their writes and finishes to it until
  // the last one is done.
  std::unique_ptr<TaskPool> delivery;
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<Metrics> metrics;
  std::unique_ptr<MetricsObserver> observer;
  std::unique_ptr<Engine> engine;
  std::unique_ptr<GenerationService> service;
  std::unique_ptr<grpc::Server> grpc_server;
  std::unique_ptr<grpc::Server> health_server;  // --health-listen

  void SetServing(bool serving) {
    for (grpc::Server* server : {grpc_server.get(), health_server.get()}) {
      if (server == nullptr) continue;
      server->GetHealthCheckService()->SetServingStatus(serving);
      server->GetHealthCheckService()->SetServingStatus(kServiceName, serving);
    }
  }
};

std::shared_ptr<grpc::ServerCredentials> Credentials(const SecurityConfig& s) {
  if (!s.tls()) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions options(
      s.tls_client_ca.empty() ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                              : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  options.pem_key_cert_pairs.push_back({s.tls_key, s.tls_cert});
  options.pem_root_certs = s.tls_client_ca;
  return grpc::SslServerCredentials(options);
}

absl::Status Start(Server& s) {
  const ServeConfig& c = s.config;
  const std::filesystem::path dir(c.model);
  MESA_ASSIGN_OR_RETURN(MesaWeights weights, LoadMesaWeights(dir));
  const MesaConfig model = weights.config;
  if (std::filesystem::exists(dir / "tokenizer.model")) {
    MESA_ASSIGN_OR_RETURN(s.tokenizer, Tokenizer::Load(dir / "tokenizer.model", model.vocab_size));
  } else {
    MESA_LOG(WARNING) << dir.string() << " has no tokenizer.model: only token-id prompts will work";
  }
  MESA_ASSIGN_OR_RETURN(const Device requested, ParseDevice(c.device));
  const Device device = ResolveDevice(requested);
  // Both backends keep the CPU runner's slot layout, so the state size is known before either
  // is created.
  const int64_t state_bytes = static_cast<int64_t>(CpuStateBytesPerSlot(model));
  int32_t slots = c.slots;
  if (slots == 0 && !(device == Device::kCuda && c.state_memory_mb == 0)) {
    // The budget is host memory for the CPU backend, or --state-memory-mb on either; a pool
    // that does not fit the GPU fails creation with the number of slots that would.
    const int64_t budget = c.state_memory_mb > 0 ? c.state_memory_mb << 20 : DefaultStateBudgetBytes();
    MESA_ASSIGN_OR_RETURN(slots, SlotsForMemory(budget, state_bytes));
    slots = std::min(slots, 256);
  }
  // On the GPU without --slots or --state-memory-mb, slots stays 0: the CUDA runner fills the
  // device memory left after its weights and workspaces (at most 256 slots).
  RunnerSpec spec;
  spec.device = device;
  spec.num_slots = slots;
  spec.batch_invariant = c.batch_invariant;
  MESA_ASSIGN_OR_RETURN(std::unique_ptr<ModelRunner> runner, CreateModelRunner(std::move(weights), spec));
  slots = runner->num_slots();
  MESA_LOG(INFO) << "backend " << runner->backend_name() << " (--device " << c.device << "), "
                 << slots << " state slots of " << state_bytes << " bytes"
                 << (c.batch_invariant ? ", batch-invariant decode" : "");
  // Test-only fault hook (fault tests start the real server with it).
  if (const char* faults = std::getenv("MESA_FAULT_INJECTION"); faults != nullptr && *faults != '\0') {
    MESA_LOG(WARNING) << "MESA_FAULT_INJECTION=" << faults << ": engine steps will fail on purpose";
    MESA_ASSIGN_OR_RETURN(runner, WrapWithFaultInjection(std::move(runner), faults));
  }

  if (!c.metrics_listen.empty()) {
    MetricsOptions mo;
    mo.listen = c.metrics_listen;
    mo.num_layers = model.num_hidden_layers;
    mo.version = kVersion;
    mo.backend = runner->backend_name();
    mo.model = dir.filename().string();
    mo.slots_capacity = slots;
    mo.state_bytes_per_slot = state_bytes;
    MESA_ASSIGN_OR_RETURN(s.metrics, Metrics::Create(mo));
    s.observer = std::make_unique<MetricsObserver>(s.metrics.get());
  }
  const size_t weight_bytes = runner->weight_bytes();
  // The waiting queue follows the pool: twice the slots by default, so that under overload a
  // request waits at most about two generations for its slot and the rest are refused at once
  // (docs/serving-benchmarks.md, overload ramp: 256 waiting for 8 slots let the accepted
  // requests' TTFT reach 18 s at twice the capacity, 16 held it at 1.25 s with the same goodput).
  if (s.config.engine.max_waiting == 0) s.config.engine.max_waiting = 2 * slots;
  EngineOptions eo = c.engine;
  ApplyPrefillDefaults(&eo, device == Device::kCuda);
  // By default the engine uses every core. Leaving one to gRPC was tried: on the 2-core
  // development machine it cost 38 % of single-stream throughput and 35 % at 64 streams, with
  // worse TTFT and inter-token latency, and streams still arrived token by token with all cores
  // (docs/serving-benchmarks.md, 2026-11-26).
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  eo.threads = c.threads > 0 ? c.threads : cores;
  MESA_ASSIGN_OR_RETURN(s.engine, Engine::Create(std::move(runner), s.tokenizer.get(),
                                                 s.observer.get(), eo));
  if (c.delivery_threads > 0) s.delivery = std::make_unique<TaskPool>(c.delivery_threads, "mesa-delivery");
  s.service = std::make_unique<GenerationService>(s.engine.get(), s.tokenizer.get(), &s.config,
                                                  s.metrics.get(), s.delivery.get(),
                                                  dir.filename().string());

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(c.listen, Credentials(c.security), &port);
  builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, c.max_streams_per_connection);
  builder.RegisterService(s.service.get());
  s.grpc_server = builder.BuildAndStart();
  if (s.grpc_server == nullptr || port == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen for gRPC on ", c.listen,
                                               " (address in use or invalid?)"));
  }
  int health_port = 0;
  if (!c.health_listen.empty()) {
    grpc::ServerBuilder health_builder;
    health_builder.AddListeningPort(c.health_listen, grpc::InsecureServerCredentials(), &health_port);
    s.health_server = health_builder.BuildAndStart();
    if (s.health_server == nullptr || health_port == 0) {
      return absl::UnavailableError(absl::StrCat("cannot listen for health checks on ", c.health_listen));
    }
  }
  s.SetServing(true);
  std::string metrics_where = "off";
  if (s.metrics) {
    const std::vector<int> ports = s.metrics->ListeningPorts();
    metrics_where = absl::StrCat(c.metrics_listen, ports.empty() ? "" : absl::StrCat(" (port ", ports[0], ")"));
    s.metrics->SetHealthy(true);
  }
  MESA_LOG(INFO) << "gRPC security: " << (c.security.tls() ? "TLS" : "plaintext")
                 << (c.security.tls_client_ca.empty() ? "" : " with client certificates")
                 << (c.security.auth_token.empty() ? ", no token" : ", bearer token required")
                 << (c.health_listen.empty() ? "" : absl::StrCat("; health also on ", c.health_listen,
                                                                 " (port ", health_port, ")"));
  MESA_LOG(INFO) << "serving " << dir.string() << " (" << ScalarTypeName(model.dtype) << ", "
                 << weight_bytes / 1e6 << " MB of weights) on gRPC port " << port << " ("
                 << c.listen << "), metrics " << metrics_where << "; " << slots << " state slots of "
                 << state_bytes / 1e6 << " MB, CG " << CgModeName(c.cg.mode) << " tol " << c.cg.tol
                 << ", " << eo.threads << " engine threads, up to " << eo.max_waiting
                 << " waiting requests, " << c.delivery_threads
                 << " delivery threads, prefill chunk " << eo.prefill_chunk << " every "
                 << eo.prefill_interval << " step(s) while decoding";
  // A line for scripts that start the server on port 0 and need the port.
  std::printf("mesaserve listening grpc=%d metrics=%d health=%d\n", port,
              s.metrics && !s.metrics->ListeningPorts().empty() ? s.metrics->ListeningPorts()[0] : 0,
              health_port);
  std::fflush(stdout);
  return absl::OkStatus();
}

// Serving status follows the engine: alive, not failed, not draining.
void WatchHealth(Server& s, const std::atomic<bool>& stop) {
  bool last = true;
  while (!stop) {
    const EngineHealth h = s.engine->Health();
    const bool ready = h.loop_alive && !h.failed && !h.draining;
    if (ready != last) {
      s.SetServing(ready);
      MESA_LOG(WARNING) << "readiness " << (ready ? "SERVING" : "NOT_SERVING") << " (loop alive "
                        << h.loop_alive << ", failed " << h.failed << ", draining " << h.draining
                        << ")";
      last = ready;
    }
    if (s.metrics) s.metrics->SetHealthy(h.loop_alive && !h.failed);
    absl::SleepFor(absl::Milliseconds(100));
  }
}

// Waits for SIGTERM/SIGINT (true, *sig set) or, when fatal_exit_after_seconds > 0, until the
// engine has been failed that long (false). A failed engine never recovers: every request is
// refused, and only a restart brings the model back.
bool WaitForSignalOrFailure(Server& s, const sigset_t& signals, int* sig) {
  const double fatal_after = s.config.fatal_exit_after_seconds;
  absl::Time failed_at = absl::InfiniteFuture();
  while (true) {
    timespec poll{0, 100 * 1000 * 1000};
    *sig = sigtimedwait(&signals, nullptr, &poll);
    if (*sig > 0) return true;
    if (fatal_after <= 0 || !s.engine->Health().failed) continue;
    const absl::Time now = absl::Now();
    if (failed_at == absl::InfiniteFuture()) failed_at = now;
    if (now - failed_at >= absl::Seconds(fatal_after)) return false;
  }
}

}  // namespace

int RunServe(const std::vector<std::string>& args) {
  // Signals go to one waiting thread: block them before any other thread exists.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  Server s;
  bool help = false;
  std::string usage;
  absl::StatusOr<ServeConfig> config = ParseServeConfig(args, &help, &usage);
  if (!config.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(config.status().message()).c_str());
    return 1;
  }
  if (help) {
    std::fputs(usage.c_str(), stdout);
    return 0;
  }
  s.config = std::move(*config);
  LogLevel level;
  if (ParseLogLevel(s.config.log_level, &level)) SetMinLogLevel(level);
  if (s.config.threads > 0) omp_set_num_threads(s.config.threads);  // this thread's kernels (loading)
  if (absl::Status st = Start(s); !st.ok()) {
    MESA_LOG(ERROR) << "cannot start: " << st;
    std::fprintf(stderr, "error: %s\n", std::string(st.message()).c_str());
    return 1;
  }

  std::atomic<bool> stop_watch{false};
  std::thread watcher([&] { WatchHealth(s, stop_watch); });
  // Stops the listeners (calls still open get `grace` to finish), the watcher and the engine.
  auto stop = [&](std::chrono::seconds grace) {
    s.grpc_server->Shutdown(std::chrono::system_clock::now() + grace);
    if (s.health_server) s.health_server->Shutdown(std::chrono::system_clock::now());
    stop_watch = true;
    watcher.join();
    s.grpc_server.reset();
    s.engine.reset();
  };

  int sig = 0;
  if (!WaitForSignalOrFailure(s, signals, &sig)) {
    MESA_LOG(ERROR) << "the engine failed " << s.config.fatal_exit_after_seconds
                    << " s ago and cannot serve again; exiting with status " << kExitEngineFailed
                    << " for the supervisor to restart the server";
    stop(std::chrono::seconds(1));  // every request has already ended
    return kExitEngineFailed;
  }
  MESA_LOG(INFO) << "signal " << sig << ": draining (up to " << s.config.drain_timeout_seconds
                 << " s for running requests)";
  s.engine->StartDrain();
  s.SetServing(false);
  const absl::Time deadline = absl::Now() + absl::Seconds(s.config.drain_timeout_seconds);
  while (!s.engine->Idle() && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(20));
  if (!s.engine->Idle()) {
    const EngineHealth h = s.engine->Health();
    MESA_LOG(WARNING) << "drain timeout: cancelling " << h.running << " running and " << h.waiting
                      << " waiting requests";
    s.engine->CancelAll(absl::UnavailableError("the server is shutting down"));
    const absl::Time grace = absl::Now() + absl::Seconds(5);
    while (!s.engine->Idle() && absl::Now() < grace) absl::SleepFor(absl::Milliseconds(10));
  }
  stop(std::chrono::seconds(5));  // lets the last responses go out
  MESA_LOG(INFO) << "drained; exiting";
  return 0;
}

}  // namespace mesa::server
