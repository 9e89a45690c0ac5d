#include "server/generation_calls.h"

#include "server/request_translation.h"
#include "server/status_mapping.h"

namespace mesa::server {

// ---------------------------------------------------------------------------------------------
// Unary

class UnaryGenerateCall::Sink : public GenerationSink {
 public:
  Sink(UnaryGenerateCall* call, v1::GenerateResponse* response, const Tokenizer* tokenizer,
       bool logprobs)
      : call_(call), response_(response), tokenizer_(tokenizer), logprobs_(logprobs) {}

  void Push(GenerationEvent event) override {
    UnaryGenerateCall* finish = nullptr;
    grpc::Status status;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (call_ == nullptr) return;
      response_->mutable_text()->append(event.text);
      AppendTokens(event.tokens, logprobs_, tokenizer_, response_->mutable_token_ids(),
                   response_->mutable_logprobs());
      if (!event.final) return;
      response_->set_finish_reason(ToProto(event.finish));
      FillSummary(event.summary, response_->mutable_usage(), response_->mutable_timings(),
                  response_->mutable_cg());
      status = ToGrpcStatus(event.status);
      finish = call_;
      call_ = nullptr;  // nothing touches the call after Finish
    }
    finish->Finish(status);
  }
  size_t Backlog() const override { return 0; }  // the response is built in place
  void Detach() {
    std::lock_guard<std::mutex> lock(mu_);
    call_ = nullptr;
  }

 private:
  std::mutex mu_;
  UnaryGenerateCall* call_;
  v1::GenerateResponse* response_;
  const Tokenizer* tokenizer_;
  bool logprobs_;
};

UnaryGenerateCall::UnaryGenerateCall(const CallContext& ctx, v1::GenerateResponse* response)
    : ctx_(ctx) {}

UnaryGenerateCall* UnaryGenerateCall::Start(const CallContext& ctx, GenerationRequest request,
                                            v1::GenerateResponse* response) {
  auto* call = new UnaryGenerateCall(ctx, response);
  response->set_request_id(request.client_id);
  call->sink_ = std::make_shared<Sink>(call, response, ctx.tokenizer, request.top_logprobs > 0);
  absl::StatusOr<RequestId> id = ctx.engine->Submit(std::move(request), call->sink_);
  if (!id.ok()) {
    if (ctx.metrics) ctx.metrics->RequestFinished(RequestOutcome::kRejected);
    call->sink_->Detach();
    call->Finish(ToGrpcStatus(id.status()));
    return call;
  }
  std::lock_guard<std::mutex> lock(call->mu_);
  call->id_ = *id;
  call->submitted_ = true;
  return call;
}

void UnaryGenerateCall::OnCancel() {
  std::lock_guard<std::mutex> lock(mu_);
  if (submitted_) ctx_.engine->Cancel(id_, absl::CancelledError("the client cancelled the call"));
}

void UnaryGenerateCall::OnDone() {
  sink_->Detach();
  delete this;
}

// ---------------------------------------------------------------------------------------------
// Streaming

class StreamGenerateCall::Sink : public GenerationSink {
 public:
  explicit Sink(StreamGenerateCall* call) : call_(call) {}
  // The call outlives every engine call into its sink: it finishes (and is deleted in OnDone)
  // only after the engine's final event, after which the engine never calls the sink again.
  void Push(GenerationEvent event) override {
    StreamGenerateCall* call;
    {
      std::lock_guard<std::mutex> lock(mu_);
      call = call_;
    }
    if (call != nullptr) call->Enqueue(std::move(event));
  }
  size_t Backlog() const override {
    StreamGenerateCall* call;
    {
      std::lock_guard<std::mutex> lock(mu_);
      call = call_;
    }
    return call != nullptr ? call->Backlog() : 0;
  }
  void Detach() {
    std::lock_guard<std::mutex> lock(mu_);
    call_ = nullptr;
  }

 private:
  mutable std::mutex mu_;
  StreamGenerateCall* call_;
};

StreamGenerateCall::StreamGenerateCall(const CallContext& ctx) : ctx_(ctx) {}

StreamGenerateCall* StreamGenerateCall::Start(const CallContext& ctx, GenerationRequest request) {
  auto* call = new StreamGenerateCall(ctx);
  call->client_id_ = request.client_id;
  call->top_logprobs_ = request.top_logprobs;
  call->sink_ = std::make_shared<Sink>(call);
  absl::StatusOr<RequestId> id = ctx.engine->Submit(std::move(request), call->sink_);
  if (!id.ok()) {
    if (ctx.metrics) ctx.metrics->RequestFinished(RequestOutcome::kRejected);
    call->sink_->Detach();
    {
      std::lock_guard<std::mutex> lock(call->mu_);
      call->finished_ = true;
    }
    call->Finish(ToGrpcStatus(id.status()));
    return call;
  }
  std::lock_guard<std::mutex> lock(call->mu_);
  call->id_ = *id;
  call->submitted_ = true;
  return call;
}

void StreamGenerateCall::Enqueue(GenerationEvent event) {
  std::unique_lock<std::mutex> lock(mu_);
  if (finished_ || have_final_) return;
  v1::GenerateStreamResponse msg;
  msg.set_request_id(client_id_);
  msg.set_text(std::move(event.text));
  AppendTokens(event.tokens, top_logprobs_ > 0, ctx_.tokenizer, msg.mutable_token_ids(),
               msg.mutable_logprobs());
  if (event.final) {
    have_final_ = true;
    final_status_ = ToGrpcStatus(event.status);
    if (event.status.ok()) {
      msg.set_finish_reason(ToProto(event.finish));
      FillSummary(event.summary, msg.mutable_usage(), msg.mutable_timings(), msg.mutable_cg());
      queue_.push_back(std::move(msg));
    } else if (!msg.text().empty() || msg.token_ids_size() > 0) {
      queue_.push_back(std::move(msg));
    }
  } else if (!queue_.empty()) {
    // A write is in flight and messages wait: merge into the last one, so a client that lags
    // gets fewer, larger messages instead of one write per token.
    v1::GenerateStreamResponse& last = queue_.back();
    last.mutable_text()->append(msg.text());
    last.mutable_token_ids()->MergeFrom(msg.token_ids());
    last.mutable_logprobs()->MergeFrom(msg.logprobs());
    queued_tokens_ += msg.token_ids_size();
  } else {
    queued_tokens_ += msg.token_ids_size();
    queue_.push_back(std::move(msg));
  }
  const Next next = writing_ ? Next::kNothing : PlanNextLocked();
  lock.unlock();
  Run(next);
}

StreamGenerateCall::Next StreamGenerateCall::PlanNextLocked() {
  if (!queue_.empty()) {
    current_ = std::move(queue_.front());
    queue_.pop_front();
    queued_tokens_ -= std::min<size_t>(queued_tokens_, current_.token_ids_size());
    writing_ = true;
    return Next::kWrite;
  }
  if (have_final_ && !finished_) {
    finished_ = true;
    return Next::kFinish;
  }
  return Next::kNothing;
}

void StreamGenerateCall::Run(Next next) {
  // current_ and final_status_ are not modified again until this write or finish completes.
  if (next == Next::kWrite) {
    std::lock_guard<std::recursive_mutex> order(write_order_);
    StartWrite(&current_);
  }
  if (next == Next::kFinish) Finish(final_status_);
}

size_t StreamGenerateCall::Backlog() const {
  std::lock_guard<std::mutex> lock(mu_);
  // In tokens (one per engine step), so the --stream-buffer bound keeps its meaning although
  // queued messages are merged.
  return queued_tokens_ + (writing_ ? 1 : 0);
}

void StreamGenerateCall::OnWriteDone(bool ok) {
  { std::lock_guard<std::recursive_mutex> order(write_order_); }  // see write_order_
  std::unique_lock<std::mutex> lock(mu_);
  writing_ = false;
  if (!ok) {
    // The stream is broken (client gone): drop what is queued and end the request.
    queue_.clear();
    queued_tokens_ = 0;
    if (submitted_ && !have_final_) {
      ctx_.engine->Cancel(id_, absl::CancelledError("the stream to the client broke"));
    }
  }
  const Next next = PlanNextLocked();
  lock.unlock();
  Run(next);
}

void StreamGenerateCall::OnCancel() {
  std::lock_guard<std::mutex> lock(mu_);
  if (submitted_ && !have_final_) {
    ctx_.engine->Cancel(id_, absl::CancelledError("the client cancelled the call"));
  }
}

void StreamGenerateCall::OnDone() {
  sink_->Detach();
  delete this;
}

}  // namespace mesa::server
