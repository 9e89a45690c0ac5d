#include "server/metrics.h"

#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <exception>
#include <limits>
#include <thread>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "prometheus/counter.h"
#include "prometheus/exposer.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"

namespace mesa::server {
namespace {

using prometheus::Histogram;

// Latency buckets, roughly ×2–2.5 apart. Request duration goes further than TTFT and queue
// time because a long generation (--max-new-tokens 4096) legitimately takes minutes.
const Histogram::BucketBoundaries& LatencyBuckets() {
  static const auto* b = new Histogram::BucketBoundaries{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                                         1,     2.5,  5,     10,   20,  30,   60};
  return *b;
}
const Histogram::BucketBoundaries& DurationBuckets() {
  static const auto* b = new Histogram::BucketBoundaries{
      0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600};
  return *b;
}
const Histogram::BucketBoundaries& InterTokenBuckets() {
  static const auto* b = new Histogram::BucketBoundaries{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                         0.1,   0.25,   0.5,   1,    2};
  return *b;
}
const Histogram::BucketBoundaries& StepBuckets() {
  static const auto* b = new Histogram::BucketBoundaries{
      0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
  return *b;
}
const Histogram::BucketBoundaries& BatchBuckets() {
  static const auto* b =
      new Histogram::BucketBoundaries{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024};
  return *b;
}

constexpr const char* kOutcomeNames[] = {"ok", "cancelled", "deadline_exceeded", "rejected",
                                         "error"};
constexpr const char* kPhaseNames[] = {"prefill", "decode"};

// mesa_cg_relative_residual boundaries, 1e-7 .. 1 by decades, as ObserveCg compares them with
// the engine's float residuals (CgResidualBuckets() exports the same decades as doubles).
constexpr std::array<float, 8> kResidualBounds = {1e-7f, 1e-6f, 1e-5f, 1e-4f,
                                                  1e-3f, 1e-2f, 1e-1f, 1.0f};

int PhaseIndex(Phase phase) { return phase == Phase::kPrefill ? 0 : 1; }

// "host:port" with a decimal port; civetweb would otherwise accept its own option syntax
// ("8080s", "+8080") or fail later with a less helpful message.
absl::Status CheckListen(const std::string& listen) {
  const size_t colon = listen.rfind(':');
  uint32_t port = 0;
  if (colon == std::string::npos || colon == 0 ||
      !absl::SimpleAtoi(listen.substr(colon + 1), &port) || port > 65535 ||
      listen.find_first_not_of("0123456789", colon + 1) != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics listen address '", listen, "' is not host:port"));
  }
  return absl::OkStatus();
}

// The host to connect to for reaching a server listening on `listen` (already checked):
// brackets stripped and wildcard addresses replaced by loopback.
std::string LocalHost(const std::string& listen) {
  std::string host = listen.substr(0, listen.rfind(':'));
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (host == "0.0.0.0") return "127.0.0.1";
  if (host == "::") return "::1";
  return host;
}

// Bucket index (into boundaries + the +Inf bucket) of every iteration count that can fall
// below the last boundary, so the hot loop does one table load instead of a search.
const std::vector<uint8_t>& IterationBucketTable() {
  static const auto* table = [] {
    const auto& bounds = Metrics::CgIterationBuckets();
    auto* t = new std::vector<uint8_t>(static_cast<size_t>(bounds.back()) + 1);
    for (size_t v = 0; v < t->size(); ++v) {
      (*t)[v] = static_cast<uint8_t>(
          std::lower_bound(bounds.begin(), bounds.end(), static_cast<double>(v)) - bounds.begin());
    }
    return t;
  }();
  return *table;
}

}  // namespace

const std::vector<double>& Metrics::CgIterationBuckets() {
  static const auto* b =
      new std::vector<double>{0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128};
  return *b;
}

const std::vector<double>& Metrics::CgResidualBuckets() {
  static const auto* b = new std::vector<double>{1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1};
  return *b;
}

absl::StatusOr<std::unique_ptr<Metrics>> Metrics::Create(const MetricsOptions& options) {
  if (options.num_layers < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics: num_layers must be >= 0, got ", options.num_layers));
  }
  if (!options.listen.empty()) {
    absl::Status status = CheckListen(options.listen);
    if (!status.ok()) return status;
  }

  std::unique_ptr<Metrics> m(new Metrics());
  m->registry_ = std::make_shared<prometheus::Registry>();
  prometheus::Registry& r = *m->registry_;

  auto& requests = prometheus::BuildCounter()
                       .Name("mesa_requests_total")
                       .Help("Finished requests by outcome.")
                       .Register(r);
  for (int i = 0; i < kNumOutcomes; ++i) {
    m->requests_[i] = &requests.Add({{"outcome", kOutcomeNames[i]}});
  }

  m->prompt_tokens_ = &prometheus::BuildCounter()
                           .Name("mesa_prompt_tokens_total")
                           .Help("Prompt tokens prefilled.")
                           .Register(r)
                           .Add({});
  m->generated_tokens_ = &prometheus::BuildCounter()
                              .Name("mesa_generated_tokens_total")
                              .Help("Tokens generated.")
                              .Register(r)
                              .Add({});

  auto histogram = [&r](const char* name, const char* help,
                        const Histogram::BucketBoundaries& buckets) {
    return &prometheus::BuildHistogram().Name(name).Help(help).Register(r).Add({}, buckets);
  };
  m->ttft_ = histogram("mesa_time_to_first_token_seconds",
                       "Time from request arrival to its first generated token.", LatencyBuckets());
  m->inter_token_ =
      histogram("mesa_inter_token_latency_seconds",
                "Time between consecutive generated tokens of a request.", InterTokenBuckets());
  m->request_duration_ = histogram("mesa_request_duration_seconds",
                                   "Time from request arrival to its finish.", DurationBuckets());
  m->queue_time_ =
      histogram("mesa_queue_time_seconds", "Time from request arrival to state-slot assignment.",
                LatencyBuckets());

  auto gauge = [&r](const char* name, const char* help, const prometheus::Labels& labels = {}) {
    return &prometheus::BuildGauge().Name(name).Help(help).Register(r).Add(labels);
  };
  m->running_ = gauge("mesa_requests_running", "Requests holding a state slot.");
  m->waiting_ = gauge("mesa_requests_waiting", "Requests waiting for a state slot.");
  m->slots_used_ = gauge("mesa_state_slots_used", "State slots in use.");
  gauge("mesa_state_slots_capacity", "State slots in the pool.")
      ->Set(static_cast<double>(options.slots_capacity));
  gauge("mesa_state_bytes_per_slot", "Bytes of recurrent plus conv state of one sequence.")
      ->Set(static_cast<double>(options.state_bytes_per_slot));

  auto& step = prometheus::BuildHistogram()
                   .Name("mesa_engine_step_duration_seconds")
                   .Help("Duration of one engine step by phase.")
                   .Register(r);
  for (int p = 0; p < kNumPhases; ++p) {
    m->step_[p] = &step.Add({{"phase", kPhaseNames[p]}}, StepBuckets());
  }
  m->decode_batch_ =
      histogram("mesa_decode_batch_size", "Sequences per decode step.", BatchBuckets());

  auto& cg_iterations = prometheus::BuildHistogram()
                            .Name("mesa_cg_iterations")
                            .Help("CG iterations per (token, head) solve, by layer and phase.")
                            .Register(r);
  auto& cap_hits = prometheus::BuildCounter()
                       .Name("mesa_cg_cap_hits_total")
                       .Help(
                           "Adaptive CG solves that stopped at the iteration cap above "
                           "tolerance, by layer.")
                       .Register(r);
  for (int32_t layer = 0; layer < options.num_layers; ++layer) {
    const std::string layer_label = absl::StrCat(layer);
    for (int p = 0; p < kNumPhases; ++p) {
      m->cg_iterations_[p].push_back(&cg_iterations.Add(
          {{"layer", layer_label}, {"phase", kPhaseNames[p]}}, CgIterationBuckets()));
    }
    m->cg_cap_hits_.push_back(&cap_hits.Add({{"layer", layer_label}}));
  }
  auto& cg_residual = prometheus::BuildHistogram()
                          .Name("mesa_cg_relative_residual")
                          .Help("Final relative residual |r|/|q| per CG solve, by phase.")
                          .Register(r);
  for (int p = 0; p < kNumPhases; ++p) {
    m->cg_residual_[p] = &cg_residual.Add({{"phase", kPhaseNames[p]}}, CgResidualBuckets());
  }

  // Starts at 0: the engine loop declares itself healthy once it runs.
  m->healthy_ = gauge("mesa_engine_healthy", "1 when the engine loop is alive and not failed.");
  gauge("mesa_build_info", "Build and model information (always 1).",
        {{"version", options.version}, {"backend", options.backend}, {"model", options.model}})
      ->Set(1);

  if (!options.listen.empty()) {
    // prometheus-cpp reports a failed bind only by throwing (CivetException from civetweb).
    try {
      m->exposer_ = std::make_unique<prometheus::Exposer>(options.listen);
    } catch (const std::exception& e) {
      return absl::UnavailableError(absl::StrCat("cannot serve metrics on ", options.listen,
                                                 " (address in use or not local?): ", e.what()));
    }
    m->exposer_->RegisterCollectable(m->registry_);
    m->exposer_host_ = LocalHost(options.listen);
  }
  return m;
}

Metrics::~Metrics() {
  if (exposer_ == nullptr) return;
  // civetweb's accept loop polls with a 2 s quantum (SOCKET_TIMEOUT_QUANTUM) and only then
  // sees the stop flag, so ~Exposer would block for up to 2 s. Connecting to the listening
  // socket while it stops wakes the loop at once; a connection closed before sending a
  // request costs civetweb nothing.
  const std::vector<int> ports = exposer_->GetListeningPorts();
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* address = nullptr;
  if (ports.empty() ||
      getaddrinfo(exposer_host_.c_str(), std::to_string(ports[0]).c_str(), &hints, &address) != 0) {
    exposer_.reset();  // slow but correct
    return;
  }
  std::atomic<bool> stopped{false};
  std::thread waker([&] {
    while (!stopped.load()) {
      const int fd = socket(address->ai_family, address->ai_socktype, address->ai_protocol);
      if (fd >= 0) {
        (void)connect(fd, address->ai_addr, address->ai_addrlen);
        close(fd);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  });
  exposer_.reset();
  stopped.store(true);
  waker.join();
  freeaddrinfo(address);
}

void Metrics::RequestFinished(RequestOutcome outcome) {
  requests_[static_cast<int>(outcome)]->Increment();
}

void Metrics::PromptTokens(int64_t n) {
  if (n > 0) prompt_tokens_->Increment(static_cast<double>(n));
}

void Metrics::GeneratedTokens(int64_t n) {
  if (n > 0) generated_tokens_->Increment(static_cast<double>(n));
}

void Metrics::ObserveTimeToFirstToken(double seconds) { ttft_->Observe(seconds); }
void Metrics::ObserveInterTokenLatency(double seconds) { inter_token_->Observe(seconds); }
void Metrics::ObserveRequestDuration(double seconds) { request_duration_->Observe(seconds); }
void Metrics::ObserveQueueTime(double seconds) { queue_time_->Observe(seconds); }

void Metrics::SetRunning(int64_t n) { running_->Set(static_cast<double>(n)); }
void Metrics::SetWaiting(int64_t n) { waiting_->Set(static_cast<double>(n)); }
void Metrics::SetSlotsUsed(int64_t n) { slots_used_->Set(static_cast<double>(n)); }

void Metrics::ObserveStep(Phase phase, double seconds) {
  step_[PhaseIndex(phase)]->Observe(seconds);
}

void Metrics::ObserveDecodeBatch(int64_t batch) {
  decode_batch_->Observe(static_cast<double>(batch));
}

void Metrics::ObserveCg(Phase phase, int32_t rows, int32_t layers, int32_t heads,
                        const int32_t* iters, const float* residual, int32_t cap, bool adaptive,
                        float tol) {
  if (rows <= 0 || layers <= 0 || heads <= 0) return;
  const int p = PhaseIndex(phase);
  const int32_t num_layers = std::min<int32_t>(layers, static_cast<int32_t>(cg_cap_hits_.size()));

  const std::vector<uint8_t>& table = IterationBucketTable();
  const size_t num_iter_buckets = CgIterationBuckets().size() + 1;  // + the +Inf bucket
  const uint8_t inf_iter_bucket = static_cast<uint8_t>(num_iter_buckets - 1);
  // Per-layer counts in integers (exact), converted once at the end.
  std::vector<int64_t> iter_counts(static_cast<size_t>(num_layers) * num_iter_buckets, 0);
  std::vector<int64_t> iter_sums(num_layers, 0);
  std::vector<int64_t> cap_hits(num_layers, 0);
  std::array<int64_t, kResidualBounds.size() + 1> res_counts{};
  double res_sum = 0;
  // Fixed mode never stops early, so its solves cannot be cap hits.
  const int32_t hit_cap = adaptive ? cap : std::numeric_limits<int32_t>::max();

  for (int32_t row = 0; row < rows; ++row) {
    for (int32_t layer = 0; layer < num_layers; ++layer) {
      const int64_t base = (static_cast<int64_t>(row) * layers + layer) * heads;
      int64_t* counts = &iter_counts[static_cast<size_t>(layer) * num_iter_buckets];
      int64_t iter_sum = 0;
      int64_t hits = 0;
      for (int32_t h = 0; h < heads; ++h) {
        const int32_t it = std::max<int32_t>(iters[base + h], 0);
        const float res = residual[base + h];
        ++counts[static_cast<size_t>(it) < table.size() ? table[it] : inf_iter_bucket];
        iter_sum += it;
        // NaN is "above tolerance": a solve that blew up did not converge.
        hits += (it >= hit_cap && !(res <= tol)) ? 1 : 0;
        // Branch-free, because residuals are effectively random: the bucket is the number of
        // boundaries below the residual. Compared in float, the residual's own precision, so
        // one exactly at a tolerance of 1e-3f lands in le="0.001". NaN and infinities count in
        // +Inf but stay out of the sum, which would otherwise be NaN or Inf forever.
        size_t b = 0;
        for (float bound : kResidualBounds) b += res > bound;
        const bool finite = std::isfinite(res);
        ++res_counts[finite ? b : kResidualBounds.size()];
        res_sum += finite ? res : 0.0f;
      }
      iter_sums[layer] += iter_sum;
      cap_hits[layer] += hits;
    }
  }

  std::vector<double> increments(num_iter_buckets);
  for (int32_t layer = 0; layer < num_layers; ++layer) {
    const int64_t* counts = &iter_counts[static_cast<size_t>(layer) * num_iter_buckets];
    for (size_t b = 0; b < num_iter_buckets; ++b) increments[b] = static_cast<double>(counts[b]);
    cg_iterations_[p][layer]->ObserveMultiple(increments, static_cast<double>(iter_sums[layer]));
    if (cap_hits[layer] > 0) cg_cap_hits_[layer]->Increment(static_cast<double>(cap_hits[layer]));
  }
  if (num_layers > 0) {
    cg_residual_[p]->ObserveMultiple(std::vector<double>(res_counts.begin(), res_counts.end()),
                                     res_sum);
  }
}

void Metrics::SetHealthy(bool healthy) { healthy_->Set(healthy ? 1 : 0); }

std::string Metrics::Text() const {
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

std::vector<int> Metrics::ListeningPorts() const {
  if (exposer_ == nullptr) return {};
  return exposer_->GetListeningPorts();
}

}  // namespace mesa::server
