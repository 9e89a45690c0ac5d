// The serving engine: one thread owns the model runner and its pool of state slots and runs
// continuous batching. New requests wait in a bounded priority queue, take a free slot, have
// their prompt prefilled in chunks interleaved with decode steps of the running requests, and
// leave (slot zeroed and freed) when they finish, are cancelled or pass their deadline.
//
// Thread-safety: Submit, Cancel, StartDrain, Health and the counters may be called from any
// thread; everything else happens on the engine thread. Sinks are called on the engine thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "absl/time/time.h"

#include "absl/status/statusor.h"
#include "engine/model_runner.h"
#include "engine/request.h"
#include "models/tokenizer.h"

namespace mesa {

struct EngineOptions {
  int32_t max_waiting = 256;     // requests waiting for a slot; beyond: RESOURCE_EXHAUSTED
  int32_t prefill_chunk = 256;   // prompt tokens per request per step (multiple of 64)
  int32_t prefill_budget = 512;  // prompt tokens per step over all requests
  // While other requests decode, new prompts are prefilled at most every this many engine
  // steps (one launch for the prompts that arrived meanwhile), unless they already fill
  // prefill_budget; with nothing decoding they start at once, and a long prompt's later
  // chunks never wait. On a GPU a prefill launch costs the host about the same whatever it
  // packs, so a launch per step for the one or two prompts that arrive between steps
  // (requests arriving independently, not in waves) takes the decode steps' place.
  // 1 = every step. A request's tokens do not depend on it.
  int32_t prefill_interval = 1;
  int32_t stream_buffer = 256;   // undelivered events before a request's generation pauses
  int32_t threads = 0;           // OpenMP threads of the engine thread; 0 = the default
  // Let the runner choose greedy and plain-softmax tokens itself (ModelRunner::DecodeAndChoose:
  // on a GPU the logits then stay on the device). Off: every token is sampled on the host.
  bool device_sampling = true;
  // With a runner that pipelines decode steps (ModelRunner::PipelinedDecodeRows), start each
  // step before handling the previous step's tokens when every row's token can be chosen on
  // the device, so the engine's host work (detokenizing, stop checks, events, metrics)
  // overlaps the device's next step. The tokens are the same either way; a request that ends
  // in a step has its row in the following step computed and dropped.
  bool pipeline_decode = true;
  // Wake-up period when idle, so deadlines and the heartbeat are checked.
  absl::Duration idle_tick = absl::Milliseconds(50);
};

// Hooks for metrics; called on the engine thread. All optional.
class EngineObserver {
 public:
  virtual ~EngineObserver() = default;
  virtual void OnQueued(double queue_seconds) {}
  virtual void OnPromptTokens(int64_t n) {}
  virtual void OnFirstToken(double seconds_since_arrival) {}
  virtual void OnNextToken(double seconds_since_previous) {}
  virtual void OnFinished(const absl::Status& status, const RequestSummary& summary) {}
  virtual void OnStep(bool prefill, double seconds, int32_t rows) {}
  // CG telemetry of a step for rows that share one CG control.
  virtual void OnCg(bool prefill, const CgStats& stats, const CgControl& control) {}
  virtual void OnLoad(int32_t running, int32_t waiting, int32_t slots_used) {}
};

struct EngineHealth {
  bool loop_alive = false;   // heartbeat within the last few seconds
  bool failed = false;       // the runner reported an unrecoverable error
  bool draining = false;
  int32_t running = 0;
  int32_t waiting = 0;
  int32_t slots_used = 0;
  int32_t slots = 0;
};

class Engine {
 public:
  // `tokenizer` may be null (token ids in and out, no text). `observer` may be null; both must
  // outlive the engine.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(std::unique_ptr<ModelRunner> runner,
                                                        const Tokenizer* tokenizer,
                                                        EngineObserver* observer,
                                                        const EngineOptions& options);
  ~Engine();  // cancels everything still in flight and joins the engine thread

  // Queues a request. Errors: RESOURCE_EXHAUSTED when the waiting queue is full, UNAVAILABLE
  // when draining or failed. The sink receives all events, ending with one final event.
  absl::StatusOr<RequestId> Submit(GenerationRequest request, std::shared_ptr<GenerationSink> sink);
  // Idempotent; unknown or finished ids are ignored. The request ends within one step with
  // `status` (e.g. CANCELLED or DEADLINE_EXCEEDED).
  void Cancel(RequestId id, absl::Status status);
  // Stop admitting new requests (Submit returns UNAVAILABLE); running ones continue.
  void StartDrain();
  // Ends every request still waiting or running with `status`.
  void CancelAll(absl::Status status);
  EngineHealth Health() const;
  bool Idle() const;  // nothing waiting or running

  const ModelRunner& runner() const { return *runner_; }

 private:
  struct Active;
  Engine(std::unique_ptr<ModelRunner> runner, const Tokenizer* tokenizer, EngineObserver* observer,
         const EngineOptions& options);
  void Loop();
  void TakeInbox();
  void ExpireAndCancel();
  void Admit();
  // Each sets *worked when it ran the model.
  absl::Status Step(bool* worked);
  absl::Status PrefillStep(bool* worked);
  absl::Status DecodeStep(bool* worked);
  // A started (pipelined) decode step whose result has not been collected yet.
  struct StartedStep {
    uint64_t serial = 0;
    std::vector<Active*> owners;  // per row; kept alive (not erased) until collected
    std::vector<PlainChoice> choices;
    absl::Time started;
  };
  bool InStartedStep(const Active& a) const;
  // Collects started_ and handles its tokens.
  absl::Status CollectStarted();
  // Waits for the runner's oldest started step, which is `step`, and handles its tokens.
  absl::Status CollectStep(const StartedStep& step);
  // Handles a decode step's result: CG statistics, then each live row's token.
  void TakeDecodeResult(const std::vector<Active*>& owners, const std::vector<PlainChoice>& choices,
                        DecodeResult& result, absl::Time started);
  // Requests that ended and are no longer referenced by a started step leave running_.
  void EraseFinished();
  // Records a generated token (the sampler observes it); finishes the request when a stop
  // condition holds.
  void Emit(Active& a, const TokenChoice& choice);
  void Finish(Active& a, absl::Status status, FinishReason reason);
  // Chooses the next token on the host (with the draw of `plain` when the runner was given a
  // choice it did not make) and emits it.
  void Sample(Active& a, absl::Span<const float> logits, const PlainChoice* plain = nullptr);
  // Emits the token the runner chose for row `row` of `result` by `plain` (with its logprobs).
  void Accept(Active& a, const DecodeResult& result, size_t row, const PlainChoice& plain);
  void ReportCg(bool prefill, const CgStats& stats, const std::vector<int32_t>& row_request,
                const std::vector<Active*>& requests);
  void Fail(const absl::Status& status);
  // After a failure: ends every waiting request with the failure (none is ever admitted).
  void FailWaiting();
  // A step of the runner failed: fatal (everything fails, readiness drops) if the runner is
  // poisoned; otherwise only the requests of that step fail and serving goes on.
  absl::Status StepFailed(const absl::Status& status, const std::vector<Active*>& owners);

  std::unique_ptr<ModelRunner> runner_;
  const Tokenizer* tokenizer_;
  EngineObserver* observer_;
  EngineOptions options_;
  std::vector<SlotId> free_slots_;

  // Shared with other threads.
  mutable std::mutex mu_;
  std::condition_variable wake_;
  std::vector<std::unique_ptr<Active>> inbox_;
  std::vector<std::pair<RequestId, absl::Status>> cancels_;
  absl::Status cancel_all_;  // set by CancelAll
  bool stop_ = false;
  bool idle_step_ = false;  // the last step ran nothing (every running request paused)
  RequestId next_id_ = 1;
  std::atomic<bool> draining_{false};
  std::atomic<bool> failed_{false};
  std::atomic<int64_t> heartbeat_ns_{0};
  std::atomic<int32_t> waiting_count_{0};  // inbox + waiting
  std::atomic<int32_t> running_count_{0};

  // Engine thread only.
  absl::Status failure_;  // why the engine failed (UNAVAILABLE), once failed_
  // Steps since the last prefill launch, and rows the last decode step ran
  // (EngineOptions::prefill_interval).
  int64_t steps_since_prefill_ = 1 << 30;
  size_t last_decode_rows_ = 0;
  // Reused by every decode step: its logits buffer ([B, vocab] floats, 33 MB at B = 256 for a
  // 32,000-token vocab) keeps its pages instead of being allocated and zeroed per step.
  DecodeResult decode_result_;
  bool pipelining_ = false;  // options_.pipeline_decode and the runner can
  std::optional<StartedStep> started_;
  uint64_t next_step_serial_ = 1;
  std::deque<std::unique_ptr<Active>> waiting_;  // priority desc, then arrival
  std::vector<std::unique_ptr<Active>> running_; // admission order
  std::thread thread_;
};

}  // namespace mesa
