#include "engine/engine.h"

#include <omp.h>

#include <algorithm>
#include <map>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "base/log.h"
#include "base/status_macros.h"
#include "engine/stop_matcher.h"
#include "models/tokenizer_stream.h"

namespace mesa {

const char* FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kNone: return "none";
    case FinishReason::kLength: return "length";
    case FinishReason::kEos: return "eos";
    case FinishReason::kStopString: return "stop_string";
    case FinishReason::kStopToken: return "stop_token";
  }
  return "?";
}

struct Engine::Active {
  enum class Stage { kWaiting, kPrefilling, kDecoding };
  RequestId id = 0;
  GenerationRequest req;
  std::shared_ptr<GenerationSink> sink;
  Stage stage = Stage::kWaiting;
  SlotId slot = kPadSlot;
  size_t prefilled = 0;     // prompt tokens already in the state
  int32_t next_token = -1;  // token to feed in the next decode step
  std::unique_ptr<Sampler> sampler;
  std::unique_ptr<StreamDecoder> text;  // null without a tokenizer
  std::unique_ptr<StopMatcher> stops;
  std::vector<TokenChoice> pending;     // generated, not yet sent
  std::string pending_text;
  int32_t generated = 0;
  absl::Time admitted, first_token, last_token;
  RequestCgStats cg;
  CgControl prefill_cg, decode_cg;
  bool done = false;
  // Every token of this request can be chosen in a started (pipelined) step.
  bool choose_ahead = false;
  // The latest started step holding a row of this request, and that row.
  uint64_t started_step = 0;
  int32_t started_row = -1;
};

namespace {

double SecondsBetween(absl::Time a, absl::Time b) { return absl::ToDoubleSeconds(b - a); }

bool Contains(const std::vector<int32_t>& v, int32_t x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(std::unique_ptr<ModelRunner> runner,
                                                       const Tokenizer* tokenizer,
                                                       EngineObserver* observer,
                                                       const EngineOptions& options) {
  if (runner == nullptr) return absl::InvalidArgumentError("Engine needs a model runner");
  if (options.prefill_chunk < 64 || options.prefill_chunk % 64 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("prefill chunk ", options.prefill_chunk,
                                                   " must be a positive multiple of 64"));
  }
  if (options.prefill_budget < options.prefill_chunk) {
    return absl::InvalidArgumentError(absl::StrCat("prefill budget ", options.prefill_budget,
                                                   " is smaller than the prefill chunk ",
                                                   options.prefill_chunk));
  }
  if (options.prefill_interval < 1 || options.prefill_interval > 1000) {
    return absl::InvalidArgumentError(absl::StrCat("prefill interval ", options.prefill_interval,
                                                   " is outside [1, 1000] steps"));
  }
  if (options.max_waiting < 0 || options.stream_buffer < 1) {
    return absl::InvalidArgumentError("max_waiting must be >= 0 and stream_buffer >= 1");
  }
  std::unique_ptr<Engine> e(new Engine(std::move(runner), tokenizer, observer, options));
  e->thread_ = std::thread([p = e.get()] { p->Loop(); });
  return e;
}

Engine::Engine(std::unique_ptr<ModelRunner> runner, const Tokenizer* tokenizer,
               EngineObserver* observer, const EngineOptions& options)
    : runner_(std::move(runner)), tokenizer_(tokenizer), observer_(observer), options_(options) {
  for (SlotId s = runner_->num_slots() - 1; s >= 0; --s) free_slots_.push_back(s);
  pipelining_ = options_.pipeline_decode && options_.device_sampling &&
                runner_->PipelinedDecodeRows() > 0;
  heartbeat_ns_ = absl::ToUnixNanos(absl::Now());
}

Engine::~Engine() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

absl::StatusOr<RequestId> Engine::Submit(GenerationRequest request,
                                         std::shared_ptr<GenerationSink> sink) {
  if (failed_) return absl::UnavailableError("the engine has failed; the server must be restarted");
  if (draining_) return absl::UnavailableError("the server is draining and accepts no new requests");
  auto a = std::make_unique<Active>();
  a->req = std::move(request);
  a->sink = std::move(sink);
  RequestId id;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_) return absl::UnavailableError("the engine is shutting down");
    const int32_t waiting = waiting_count_.load();
    if (waiting >= options_.max_waiting) {
      return absl::ResourceExhaustedError(absl::StrCat("the waiting queue is full: ", waiting,
                                                       " requests wait for a state slot; limit is ",
                                                       options_.max_waiting));
    }
    id = next_id_++;
    a->id = id;
    waiting_count_.fetch_add(1);
    inbox_.push_back(std::move(a));
  }
  wake_.notify_one();
  return id;
}

void Engine::Cancel(RequestId id, absl::Status status) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    cancels_.emplace_back(id, std::move(status));
  }
  wake_.notify_one();
}

void Engine::StartDrain() { draining_ = true; }

void Engine::CancelAll(absl::Status status) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    cancel_all_ = std::move(status);
  }
  wake_.notify_one();
}

EngineHealth Engine::Health() const {
  EngineHealth h;
  const absl::Time beat = absl::FromUnixNanos(heartbeat_ns_.load());
  h.loop_alive = absl::Now() - beat < absl::Seconds(5) + options_.idle_tick * 4;
  h.failed = failed_;
  h.draining = draining_;
  h.running = running_count_;
  h.waiting = waiting_count_;
  h.slots = runner_->num_slots();
  h.slots_used = h.running;
  return h;
}

bool Engine::Idle() const { return running_count_ == 0 && waiting_count_ == 0; }

void Engine::Loop() {
  // OpenMP's thread count is a per-thread setting: it must be made on this thread.
  if (options_.threads > 0) omp_set_num_threads(options_.threads);
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      const bool busy = !running_.empty() && !idle_step_;
      if (!busy && inbox_.empty() && cancels_.empty() && cancel_all_.ok() && !stop_) {
        // With running requests that are all paused by slow readers, poll their backlogs
        // often; with nothing running, wake for deadlines and the heartbeat.
        const absl::Duration wait = running_.empty() ? options_.idle_tick : absl::Milliseconds(2);
        wake_.wait_for(lock, absl::ToChronoNanoseconds(wait));
      }
      if (stop_) break;
    }
    heartbeat_ns_ = absl::ToUnixNanos(absl::Now());
    TakeInbox();
    // A request submitted while the engine was failing (it passed Submit's check) fails here.
    if (failed_) FailWaiting();
    ExpireAndCancel();
    Admit();
    idle_step_ = false;
    if (!running_.empty() && !failed_) {
      bool worked = false;
      if (absl::Status s = Step(&worked); !s.ok()) Fail(s);
      idle_step_ = !worked;
    }
    if (observer_) {
      observer_->OnLoad(static_cast<int32_t>(running_.size()), waiting_count_,
                        static_cast<int32_t>(running_.size()));
    }
  }
  // Shutting down: end whatever is left.
  if (started_) (void)CollectStarted();
  TakeInbox();
  const absl::Status bye = absl::UnavailableError("the engine is shutting down");
  for (auto& a : running_) Finish(*a, bye, FinishReason::kNone);
  for (auto& a : waiting_) Finish(*a, bye, FinishReason::kNone);
  running_.clear();
  waiting_.clear();
}

void Engine::TakeInbox() {
  std::vector<std::unique_ptr<Active>> inbox;
  std::vector<std::pair<RequestId, absl::Status>> cancels;
  absl::Status cancel_all;
  {
    std::lock_guard<std::mutex> lock(mu_);
    inbox.swap(inbox_);
    cancels.swap(cancels_);
    std::swap(cancel_all, cancel_all_);
  }
  for (auto& a : inbox) {
    // Priority first, then arrival order (stable insert after equal priorities).
    auto it = std::find_if(waiting_.begin(), waiting_.end(), [&](const auto& w) {
      return w->req.priority < a->req.priority;
    });
    waiting_.insert(it, std::move(a));
  }
  // gRPC reports an expired deadline as a cancellation; report it as what it is.
  const absl::Time now = absl::Now();
  auto cancel = [&](Active& a, const absl::Status& status) {
    if (a.done) return;
    if (now >= a.req.deadline) {
      Finish(a, absl::DeadlineExceededError(absl::StrCat("deadline passed after ", a.generated,
                                                         " generated tokens")),
             FinishReason::kNone);
    } else {
      Finish(a, status, FinishReason::kNone);
    }
  };
  for (auto& [id, status] : cancels) {
    for (auto& a : running_) {
      if (a->id == id) cancel(*a, status);
    }
    for (auto& a : waiting_) {
      if (a->id == id) cancel(*a, status);
    }
  }
  if (!cancel_all.ok()) {
    for (auto& a : running_) {
      if (!a->done) Finish(*a, cancel_all, FinishReason::kNone);
    }
    for (auto& a : waiting_) {
      if (!a->done) Finish(*a, cancel_all, FinishReason::kNone);
    }
  }
}

void Engine::ExpireAndCancel() {
  const absl::Time now = absl::Now();
  for (auto& a : running_) {
    if (!a->done && now >= a->req.deadline) {
      Finish(*a, absl::DeadlineExceededError(absl::StrCat(
                     "deadline passed after ", a->generated, " generated tokens")),
             FinishReason::kNone);
    }
  }
  for (auto& a : waiting_) {
    if (!a->done && now >= a->req.deadline) {
      Finish(*a, absl::DeadlineExceededError("deadline passed while waiting for a state slot"),
             FinishReason::kNone);
    }
  }
  EraseFinished();
  waiting_.erase(std::remove_if(waiting_.begin(), waiting_.end(), [](const auto& a) { return a->done; }),
                 waiting_.end());
}

void Engine::EraseFinished() {
  running_.erase(std::remove_if(running_.begin(), running_.end(),
                                [&](const auto& a) { return a->done && !InStartedStep(*a); }),
                 running_.end());
  running_count_ = static_cast<int32_t>(running_.size());
}

bool Engine::InStartedStep(const Active& a) const {
  return started_.has_value() && a.started_step == started_->serial;
}

void Engine::Admit() {
  while (!free_slots_.empty() && !waiting_.empty() && !failed_) {
    std::unique_ptr<Active> a = std::move(waiting_.front());
    waiting_.pop_front();
    waiting_count_.fetch_sub(1);
    a->slot = free_slots_.back();
    free_slots_.pop_back();
    a->stage = Active::Stage::kPrefilling;
    a->admitted = absl::Now();
    const MesaConfig& config = runner_->config();
    a->prefill_cg = PrefillCgControl(a->req.cg, config);
    a->decode_cg = DecodeCgControl(a->req.cg, config);
    const int32_t valid_vocab =
        tokenizer_ ? std::min(config.vocab_size, tokenizer_->piece_count()) : config.vocab_size;
    a->sampler = std::make_unique<Sampler>(a->req.sampling, valid_vocab);
    for (int32_t t : a->req.prompt) a->sampler->Observe(t);
    // After the prompt: penalties show in a choice only once there is context to penalise.
    a->choose_ahead = pipelining_ && runner_->ChoosesAhead(a->sampler->ChoiceRule(a->req.top_logprobs));
    if (tokenizer_) a->text = std::make_unique<StreamDecoder>(*tokenizer_, a->req.prompt);
    a->stops = std::make_unique<StopMatcher>(a->req.stopping.stop_strings);
    if (observer_) observer_->OnQueued(SecondsBetween(a->req.arrival, a->admitted));
    running_.push_back(std::move(a));
  }
  running_count_ = static_cast<int32_t>(running_.size());
}

absl::Status Engine::Step(bool* worked) {
  absl::Status s = PrefillStep(worked);
  if (!s.ok()) return s;
  ++steps_since_prefill_;
  s = DecodeStep(worked);
  EraseFinished();
  Admit();  // slots freed this step go to waiting requests at once
  return s;
}

absl::Status Engine::PrefillStep(bool* worked) {
  std::vector<PrefillRequest> batch;
  std::vector<Active*> owners;
  int32_t budget = options_.prefill_budget;
  bool full = false;         // the launch holds all the tokens a step may prefill
  bool continuing = false;   // a prompt already under way (later chunks never wait)
  for (auto& a : running_) {
    if (a->done || a->stage != Active::Stage::kPrefilling || budget <= 0) continue;
    // Each request advances by whole prefill chunks from its own start, whatever else is in
    // the step, so its state (and tokens) never depend on the batch.
    const size_t remaining = a->req.prompt.size() - a->prefilled;
    const size_t len = std::min<size_t>(remaining, options_.prefill_chunk);
    if (static_cast<int32_t>(len) > budget && !batch.empty()) {
      full = true;
      break;
    }
    PrefillRequest p;
    p.slot = a->slot;
    p.tokens = absl::MakeConstSpan(a->req.prompt).subspan(a->prefilled, len);
    p.cg = a->prefill_cg;
    p.want_stats = true;
    continuing = continuing || a->prefilled > 0;
    batch.push_back(p);
    owners.push_back(a.get());
    budget -= static_cast<int32_t>(len);
  }
  if (batch.empty()) return absl::OkStatus();
  *worked = true;  // launched or deferred, the loop goes straight on to the next step
  full = full || budget <= 0;
  if (!full && !continuing && last_decode_rows_ > 0 &&
      steps_since_prefill_ < options_.prefill_interval) {
    return absl::OkStatus();  // the next launch takes these prompts with later arrivals
  }
  steps_since_prefill_ = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    Active& a = *owners[i];
    if (a.prefilled + batch[i].tokens.size() < a.req.prompt.size()) continue;
    // The first generated token: the runner may choose it. This takes the draw Sample would,
    // so only once the launch is certain (a deferred launch must not use up draws).
    batch[i].choice = a.sampler->NextChoice(a.req.top_logprobs);
    if (!options_.device_sampling) batch[i].choice->kind = PlainChoice::Kind::kHost;
  }
  std::vector<PrefillResult> results(batch.size());
  const absl::Time t0 = absl::Now();
  if (absl::Status s = runner_->Prefill(batch, absl::MakeSpan(results)); !s.ok()) {
    return StepFailed(s, owners);
  }
  int32_t tokens = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    Active& a = *owners[i];
    tokens += static_cast<int32_t>(batch[i].tokens.size());
    a.prefilled += batch[i].tokens.size();
    const CgStats& st = results[i].stats;
    if (observer_) observer_->OnCg(true, st, a.prefill_cg);
    for (size_t j = 0; j < st.iters.size(); ++j) {
      a.cg.solves += 1;
      a.cg.iterations += st.iters[j];
      if (a.prefill_cg.mode == CgMode::kAdaptive && st.iters[j] >= a.prefill_cg.max_iters &&
          st.residual[j] > a.prefill_cg.tol) {
        a.cg.cap_hits += 1;
      }
    }
    if (a.prefilled == a.req.prompt.size()) {
      a.stage = Active::Stage::kDecoding;
      const PrefillResult& r = results[i];
      if (r.token >= 0) {
        TokenChoice choice;
        choice.token = r.token;
        if (batch[i].choice->top_logprobs > 0) {
          choice.logprob = r.logprob;
          choice.top = r.top;
        }
        Emit(a, choice);
      } else {
        Sample(a, r.logits, &*batch[i].choice);
      }
    }
  }
  if (observer_) {
    observer_->OnPromptTokens(tokens);
    observer_->OnStep(true, SecondsBetween(t0, absl::Now()), static_cast<int32_t>(batch.size()));
  }
  return absl::OkStatus();
}

absl::Status Engine::DecodeStep(bool* worked) {
  std::vector<DecodeRow> rows;
  std::vector<PlainChoice> choices;
  std::vector<Active*> owners;
  bool ahead = pipelining_;  // every row can go into a started step
  for (auto& a : running_) {
    if (a->done || a->stage != Active::Stage::kDecoding) continue;
    // A request in the started step takes its next token from there, on the device.
    const bool fed = InStartedStep(*a);
    if (!fed && a->next_token < 0) continue;
    if (fed && a->generated + 1 >= a->req.stopping.max_new_tokens) continue;  // that was its last
    // A slow reader pauses only its own request.
    if (a->sink->Backlog() >= static_cast<size_t>(options_.stream_buffer)) continue;
    DecodeRow row{a->slot, fed ? 0 : a->next_token, a->decode_cg};
    if (fed) row.feed_row = a->started_row;
    rows.push_back(row);
    PlainChoice choice = a->sampler->NextChoice(a->req.top_logprobs);
    if (!options_.device_sampling) choice.kind = PlainChoice::Kind::kHost;  // same draw
    choices.push_back(choice);
    owners.push_back(a.get());
    ahead = ahead && a->choose_ahead;
  }
  last_decode_rows_ = rows.size();
  if (rows.empty()) {
    if (!started_) return absl::OkStatus();
    *worked = true;
    return CollectStarted();
  }
  *worked = true;
  ahead = ahead && static_cast<int64_t>(rows.size()) <= runner_->PipelinedDecodeRows();
  const absl::Time t0 = absl::Now();
  if (ahead) {
    if (absl::Status s = runner_->StartDecode(rows, choices); !s.ok()) {
      if (started_) {
        MESA_RETURN_IF_ERROR(CollectStarted());  // still the runner's
      }
      return StepFailed(s, owners);
    }
    std::optional<StartedStep> previous = std::move(started_);
    started_ = StartedStep{next_step_serial_++, owners, std::move(choices), t0};
    for (size_t i = 0; i < owners.size(); ++i) {
      owners[i]->started_step = started_->serial;
      owners[i]->started_row = static_cast<int32_t>(i);
    }
    // The runner now works on the new step while the previous one's tokens are handled.
    return previous ? CollectStep(*previous) : absl::OkStatus();
  }
  if (started_) {
    // This step needs tokens on the host: collect the started step first. Rows it feeds take
    // their tokens from the host now, unless their request ended in it.
    MESA_RETURN_IF_ERROR(CollectStarted());
    size_t kept = 0;
    for (size_t i = 0; i < rows.size(); ++i) {
      if (owners[i]->done) continue;
      if (rows[i].feed_row >= 0) {
        rows[i].feed_row = -1;
        rows[i].token = owners[i]->next_token;
      }
      rows[kept] = rows[i];
      choices[kept] = choices[i];
      owners[kept] = owners[i];
      ++kept;
    }
    rows.resize(kept);
    choices.resize(kept);
    owners.resize(kept);
    if (rows.empty()) return absl::OkStatus();
  }
  DecodeResult& result = decode_result_;
  if (absl::Status s = runner_->DecodeAndChoose(rows, choices, &result); !s.ok()) {
    return StepFailed(s, owners);
  }
  TakeDecodeResult(owners, choices, result, t0);
  return absl::OkStatus();
}

absl::Status Engine::CollectStarted() {
  const StartedStep step = std::move(*started_);
  started_.reset();
  return CollectStep(step);
}

absl::Status Engine::CollectStep(const StartedStep& step) {
  DecodeResult& result = decode_result_;
  if (absl::Status s = runner_->FinishDecode(&result); !s.ok()) return StepFailed(s, step.owners);
  TakeDecodeResult(step.owners, step.choices, result, step.started);
  return absl::OkStatus();
}

void Engine::TakeDecodeResult(const std::vector<Active*>& owners,
                              const std::vector<PlainChoice>& choices, DecodeResult& result,
                              absl::Time started) {
  const size_t rows = owners.size();
  const int64_t vocab = runner_->config().vocab_size;
  std::vector<int32_t> row_request(rows);
  for (size_t i = 0; i < rows; ++i) row_request[i] = static_cast<int32_t>(i);
  ReportCg(false, result.stats, row_request, owners);
  for (size_t i = 0; i < rows; ++i) {
    // A request that ended after its step was started (a stop in the step before, a
    // cancellation) has its row computed and dropped.
    if (owners[i]->done) continue;
    if (!result.tokens.empty() && result.tokens[i] >= 0) {
      Accept(*owners[i], result, i, choices[i]);  // the runner chose it by choices[i]
    } else {
      Sample(*owners[i], absl::MakeConstSpan(result.logits.data() + i * vocab, vocab),
             &choices[i]);
    }
  }
  if (observer_) observer_->OnStep(false, SecondsBetween(started, absl::Now()), static_cast<int32_t>(rows));
}

void Engine::ReportCg(bool prefill, const CgStats& stats, const std::vector<int32_t>& row_request,
                      const std::vector<Active*>& requests) {
  const int64_t per_row = static_cast<int64_t>(stats.layers) * stats.heads;
  // Per-request totals.
  for (int32_t r = 0; r < stats.rows; ++r) {
    Active& a = *requests[row_request[r]];
    const CgControl& c = a.decode_cg;
    for (int64_t j = 0; j < per_row; ++j) {
      const int32_t it = stats.iters[r * per_row + j];
      a.cg.solves += 1;
      a.cg.iterations += it;
      if (c.mode == CgMode::kAdaptive && it >= c.max_iters && stats.residual[r * per_row + j] > c.tol) {
        a.cg.cap_hits += 1;
      }
    }
  }
  if (observer_ == nullptr) return;
  // Metrics: group rows that share a CG control (usually all of them).
  std::map<std::tuple<int32_t, int32_t, float>, std::vector<int32_t>> groups;
  for (int32_t r = 0; r < stats.rows; ++r) {
    const CgControl& c = requests[row_request[r]]->decode_cg;
    groups[{static_cast<int32_t>(c.mode), c.max_iters, c.tol}].push_back(r);
  }
  for (const auto& [key, rows] : groups) {
    CgStats sub;
    sub.Resize(static_cast<int32_t>(rows.size()), stats.layers, stats.heads);
    for (size_t i = 0; i < rows.size(); ++i) {
      std::copy_n(stats.iters.begin() + rows[i] * per_row, per_row, sub.iters.begin() + i * per_row);
      std::copy_n(stats.residual.begin() + rows[i] * per_row, per_row, sub.residual.begin() + i * per_row);
    }
    observer_->OnCg(prefill, sub, requests[row_request[rows.front()]]->decode_cg);
  }
}

void Engine::Sample(Active& a, absl::Span<const float> logits, const PlainChoice* plain) {
  TokenChoice choice;
  const bool logprobs = a.req.top_logprobs > 0;
  choice.token = a.sampler->Sample(logits, a.req.top_logprobs, logprobs ? &choice.top : nullptr,
                                   logprobs ? &choice.logprob : nullptr, plain);
  Emit(a, choice);
}

void Engine::Accept(Active& a, const DecodeResult& result, size_t row, const PlainChoice& plain) {
  TokenChoice choice;
  choice.token = result.tokens[row];
  if (plain.top_logprobs > 0 && !result.logprobs.empty()) {
    choice.logprob = result.logprobs[row];
    const auto* top = result.top_logprobs.data() + row * kMaxDeviceTopLogprobs;
    choice.top.assign(top, top + plain.top_logprobs);
  }
  Emit(a, choice);
}

void Engine::Emit(Active& a, const TokenChoice& choice) {
  a.sampler->Observe(choice.token);  // context for the penalties of the next choices
  const absl::Time now = absl::Now();
  a.generated += 1;
  if (a.generated == 1) {
    a.first_token = now;
    if (observer_) observer_->OnFirstToken(SecondsBetween(a.req.arrival, now));
  } else if (observer_) {
    observer_->OnNextToken(SecondsBetween(a.last_token, now));
  }
  a.last_token = now;
  const StoppingParams& stop = a.req.stopping;
  const MesaConfig& config = runner_->config();
  if (choice.token == config.eos_token_id && !stop.ignore_eos) {
    Finish(a, absl::OkStatus(), FinishReason::kEos);
    return;
  }
  a.pending.push_back(choice);
  if (a.text) {
    absl::StatusOr<std::string> delta = a.text->Push(choice.token);
    if (!delta.ok()) {
      Finish(a, absl::InternalError(absl::StrCat("detokenizing: ", delta.status().message())),
             FinishReason::kNone);
      return;
    }
    bool stopped = false;
    a.pending_text += a.stops->Append(*delta, &stopped);
    if (stopped) {
      Finish(a, absl::OkStatus(), FinishReason::kStopString);
      return;
    }
  }
  if (Contains(stop.stop_token_ids, choice.token)) {
    Finish(a, absl::OkStatus(), FinishReason::kStopToken);
    return;
  }
  if (a.generated >= stop.max_new_tokens) {
    Finish(a, absl::OkStatus(), FinishReason::kLength);
    return;
  }
  a.next_token = choice.token;
  GenerationEvent event;
  event.text.swap(a.pending_text);
  event.tokens.swap(a.pending);
  a.sink->Push(std::move(event));
}

void Engine::Finish(Active& a, absl::Status status, FinishReason reason) {
  if (a.done) return;
  a.done = true;
  const absl::Time now = absl::Now();
  GenerationEvent event;
  event.final = true;
  event.status = status;
  event.finish = reason;
  if (status.ok()) {
    if (a.text && reason != FinishReason::kStopString) {
      absl::StatusOr<std::string> tail = a.text->Flush();
      if (tail.ok()) {
        bool stopped = false;
        a.pending_text += a.stops->Append(*tail, &stopped);
        if (stopped) {
          event.finish = FinishReason::kStopString;
        } else {
          a.pending_text += a.stops->Flush();
        }
      }
    }
    event.text.swap(a.pending_text);
    event.tokens.swap(a.pending);
  }
  RequestSummary& s = event.summary;
  s.prompt_tokens = static_cast<int32_t>(a.req.prompt.size());
  s.completion_tokens = a.generated;
  if (a.stage != Active::Stage::kWaiting) s.queue_seconds = SecondsBetween(a.req.arrival, a.admitted);
  if (a.generated > 0) s.time_to_first_token_seconds = SecondsBetween(a.req.arrival, a.first_token);
  s.total_seconds = SecondsBetween(a.req.arrival, now);
  s.cg = a.cg;
  if (a.slot != kPadSlot) {
    // Zero the state now so nothing of this sequence survives in the pool.
    absl::Status reset = runner_->ResetSlot(a.slot);
    if (!reset.ok()) MESA_LOG(ERROR) << "resetting slot " << a.slot << ": " << reset;
    free_slots_.push_back(a.slot);
    a.slot = kPadSlot;
  } else {
    waiting_count_.fetch_sub(1);
  }
  if (observer_) observer_->OnFinished(status, s);
  a.sink->Push(std::move(event));
}

absl::Status Engine::StepFailed(const absl::Status& status, const std::vector<Active*>& owners) {
  if (runner_->poisoned()) return status;
  MESA_LOG(ERROR) << "engine step failed for " << owners.size() << " request(s): " << status;
  const absl::Status failed = absl::InternalError(absl::StrCat("engine step failed: ", status.message()));
  for (Active* a : owners) Finish(*a, failed, FinishReason::kNone);
  return absl::OkStatus();
}

void Engine::Fail(const absl::Status& status) {
  MESA_LOG(ERROR) << "engine step failed: " << status << "; failing all requests";
  failed_ = true;
  started_.reset();  // the runner failed: its started step's tokens are not coming
  failure_ = absl::UnavailableError(absl::StrCat("the engine failed: ", status.message()));
  for (auto& a : running_) Finish(*a, failure_, FinishReason::kNone);
  running_.clear();
  running_count_ = 0;
  FailWaiting();  // and the loop fails what is still in the inbox when it takes it
}

void Engine::FailWaiting() {
  for (auto& a : waiting_) Finish(*a, failure_, FinishReason::kNone);
  waiting_.clear();
}

}  // namespace mesa
