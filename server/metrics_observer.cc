#include "server/metrics_observer.h"

namespace mesa::server {

void MetricsObserver::OnFinished(const absl::Status& status, const RequestSummary& summary) {
  RequestOutcome outcome = RequestOutcome::kError;
  switch (status.code()) {
    case absl::StatusCode::kOk: outcome = RequestOutcome::kOk; break;
    case absl::StatusCode::kCancelled: outcome = RequestOutcome::kCancelled; break;
    case absl::StatusCode::kDeadlineExceeded: outcome = RequestOutcome::kDeadlineExceeded; break;
    default: break;
  }
  m_->RequestFinished(outcome);
  m_->ObserveRequestDuration(summary.total_seconds);
}

void MetricsObserver::OnStep(bool prefill, double seconds, int32_t rows) {
  m_->ObserveStep(prefill ? Phase::kPrefill : Phase::kDecode, seconds);
  if (!prefill) m_->ObserveDecodeBatch(rows);
}

void MetricsObserver::OnCg(bool prefill, const CgStats& stats, const CgControl& control) {
  m_->ObserveCg(prefill ? Phase::kPrefill : Phase::kDecode, stats.rows, stats.layers, stats.heads,
                stats.iters.data(), stats.residual.data(), control.max_iters,
                control.mode == CgMode::kAdaptive, control.tol);
}

}  // namespace mesa::server
