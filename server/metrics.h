// The server's Prometheus metrics (names, labels and buckets fixed by
// docs/server-interface.md) and the optional HTTP exposer that serves them at /metrics.
// Thread-safe: every method may be called from any thread at any time.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace prometheus {
class Counter;
class Exposer;
class Gauge;
class Histogram;
class Registry;
}  // namespace prometheus

namespace mesa::server {

struct MetricsOptions {
  std::string listen;      // "host:port" for the HTTP exposer (/metrics); empty = no exposer
  int32_t num_layers = 0;  // the per-layer CG series are created up front for layers [0, n)
  std::string version;     // mesa_build_info labels
  std::string backend;
  std::string model;
  int64_t slots_capacity = 0;
  int64_t state_bytes_per_slot = 0;
};

enum class RequestOutcome { kOk, kCancelled, kDeadlineExceeded, kRejected, kError };
enum class Phase { kPrefill, kDecode };

class Metrics {
 public:
  // Registers every metric (all label values pre-created, so rates start from zero) and
  // starts the exposer when options.listen is set. A malformed address is InvalidArgument,
  // a failed bind (e.g. the port is in use) Unavailable; both messages name the address.
  static absl::StatusOr<std::unique_ptr<Metrics>> Create(const MetricsOptions& options);
  ~Metrics();

  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  void RequestFinished(RequestOutcome outcome);
  void PromptTokens(int64_t n);
  void GeneratedTokens(int64_t n);
  void ObserveTimeToFirstToken(double seconds);
  void ObserveInterTokenLatency(double seconds);
  void ObserveRequestDuration(double seconds);
  void ObserveQueueTime(double seconds);
  void SetRunning(int64_t n);
  void SetWaiting(int64_t n);
  void SetSlotsUsed(int64_t n);
  void ObserveStep(Phase phase, double seconds);
  void ObserveDecodeBatch(int64_t batch);

  // CG telemetry of one engine step. `iters` and `residual` are [rows, layers, heads]
  // row-major, as in engine/model_runner.h CgStats; every row counts, so leave out padding
  // rows before calling. Layers at or beyond options.num_layers are ignored. A solve is a
  // cap hit when `adaptive` && iters >= cap && residual > tol (a NaN residual counts as above
  // tol). Non-finite residuals go to the +Inf bucket but not into the _sum. Aggregates locally
  // and touches each Prometheus histogram once, so a 100k-solve decode step stays cheap.
  void ObserveCg(Phase phase, int32_t rows, int32_t layers, int32_t heads, const int32_t* iters,
                 const float* residual, int32_t cap, bool adaptive, float tol);

  void SetHealthy(bool healthy);

  // The Prometheus text exposition of this object's metrics. /metrics serves the same plus
  // prometheus-cpp's own exposer_* series.
  std::string Text() const;
  // The exposer's bound ports (the real one when listen asked for port 0); empty without one.
  std::vector<int> ListeningPorts() const;

  // Fixed bucket boundaries (public for tests and dashboards).
  static const std::vector<double>& CgIterationBuckets();
  static const std::vector<double>& CgResidualBuckets();

 private:
  static constexpr int kNumOutcomes = 5;
  static constexpr int kNumPhases = 2;

  Metrics() = default;

  std::shared_ptr<prometheus::Registry> registry_;
  std::array<prometheus::Counter*, kNumOutcomes> requests_{};
  prometheus::Counter* prompt_tokens_ = nullptr;
  prometheus::Counter* generated_tokens_ = nullptr;
  prometheus::Histogram* ttft_ = nullptr;
  prometheus::Histogram* inter_token_ = nullptr;
  prometheus::Histogram* request_duration_ = nullptr;
  prometheus::Histogram* queue_time_ = nullptr;
  prometheus::Gauge* running_ = nullptr;
  prometheus::Gauge* waiting_ = nullptr;
  prometheus::Gauge* slots_used_ = nullptr;
  prometheus::Gauge* healthy_ = nullptr;
  std::array<prometheus::Histogram*, kNumPhases> step_{};
  prometheus::Histogram* decode_batch_ = nullptr;
  // cg_iterations_[phase][layer]
  std::array<std::vector<prometheus::Histogram*>, kNumPhases> cg_iterations_;
  std::vector<prometheus::Counter*> cg_cap_hits_;  // [layer]
  std::array<prometheus::Histogram*, kNumPhases> cg_residual_{};
  std::string exposer_host_;  // where ~Metrics connects to stop the exposer quickly
  // Declared last so it is destroyed first: it scrapes registry_ from its own threads.
  std::unique_ptr<prometheus::Exposer> exposer_;
};

}  // namespace mesa::server
