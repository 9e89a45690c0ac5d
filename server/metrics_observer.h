// Feeds the engine's events into the Prometheus metrics.
#pragma once

#include "engine/engine.h"
#include "server/metrics.h"

namespace mesa::server {

class MetricsObserver final : public EngineObserver {
 public:
  explicit MetricsObserver(Metrics* metrics) : m_(metrics) {}
  void OnQueued(double seconds) override { m_->ObserveQueueTime(seconds); }
  void OnPromptTokens(int64_t n) override { m_->PromptTokens(n); }
  void OnFirstToken(double seconds) override {
    m_->ObserveTimeToFirstToken(seconds);
    m_->GeneratedTokens(1);
  }
  void OnNextToken(double seconds) override {
    m_->ObserveInterTokenLatency(seconds);
    m_->GeneratedTokens(1);
  }
  void OnFinished(const absl::Status& status, const RequestSummary& summary) override;
  void OnStep(bool prefill, double seconds, int32_t rows) override;
  void OnCg(bool prefill, const CgStats& stats, const CgControl& control) override;
  void OnLoad(int32_t running, int32_t waiting, int32_t slots_used) override {
    m_->SetRunning(running);
    m_->SetWaiting(waiting);
    m_->SetSlotsUsed(slots_used);
  }

 private:
  Metrics* m_;
};

}  // namespace mesa::server
