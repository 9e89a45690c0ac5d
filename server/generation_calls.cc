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
    // The call stays alive until this Finish runs: OnDone comes only after it.
    if (finish->ctx_.delivery != nullptr) {
      finish->ctx_.delivery->Post([finish, status] { finish->Finish(status); });
    } else {
      finish->Finish(status);
    }
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
    if (call != nullptr) call->Accept(std::move(event));
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

void StreamGenerateCall::Accept(GenerationEvent event) {
  bool take_ownership = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (have_final_) return;  // the engine sends nothing after its final event
    if (event.final) have_final_ = true;
    if (broken_) {
      if (!event.final) return;  // nobody reads any more; only the end matters
      event.text.clear();
      event.tokens.clear();
    }
    inbox_tokens_ += event.tokens.size();
    inbox_.push_back(std::move(event));
    if (!busy_) busy_ = take_ownership = true;
  }
  if (!take_ownership) return;  // the owner drains the inbox when its write completes
  // Safe to run later: while busy_ is set nobody else drains, so the call cannot finish (and
  // be deleted in OnDone) before this drain has run.
  if (ctx_.delivery != nullptr) {
    ctx_.delivery->Post([this] { Drain(); });
  } else {
    Drain();
  }
}

void StreamGenerateCall::Drain() {
  while (true) {
    std::vector<GenerationEvent>& events = drained_;
    events.clear();
    bool broken = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (inbox_.empty()) {
        if (!have_final_ || finished_) {
          busy_ = false;  // the next event hands the call to a delivery thread again
          return;
        }
        finished_ = true;  // the final event was written (or had nothing to write)
      } else {
        events.swap(inbox_);  // inbox_ keeps the capacity: no allocation per engine event
        inbox_tokens_ = 0;
        broken = broken_;
      }
    }
    if (events.empty()) {
      Finish(final_status_);  // the call's last operation; OnDone follows
      return;
    }
    // Everything that waited goes out as one message: a client that lags gets fewer, larger
    // messages instead of one write per token.
    current_.Clear();
    current_.set_request_id(client_id_);
    bool failed = false;
    for (GenerationEvent& e : events) {
      current_.mutable_text()->append(e.text);
      AppendTokens(e.tokens, top_logprobs_ > 0, ctx_.tokenizer, current_.mutable_token_ids(),
                   current_.mutable_logprobs());
      if (!e.final) continue;
      final_status_ = ToGrpcStatus(e.status);
      if (e.status.ok()) {
        current_.set_finish_reason(ToProto(e.finish));
        FillSummary(e.summary, current_.mutable_usage(), current_.mutable_timings(), current_.mutable_cg());
      } else {
        failed = true;
      }
    }
    const bool empty_failure = failed && current_.text().empty() && current_.token_ids_size() == 0;
    if (broken || empty_failure) continue;  // nothing to write: finish (or wait for the end)
    std::lock_guard<std::recursive_mutex> order(write_order_);
    StartWrite(&current_);
    return;  // OnWriteDone drains again
  }
}

size_t StreamGenerateCall::Backlog() const {
  std::lock_guard<std::mutex> lock(mu_);
  // In tokens (one per engine step), so the --stream-buffer bound keeps its meaning although
  // waiting events go out as one message; a write or drain in progress counts as one.
  return inbox_tokens_ + (busy_ ? 1 : 0);
}

void StreamGenerateCall::OnWriteDone(bool ok) {
  { std::lock_guard<std::recursive_mutex> order(write_order_); }  // see write_order_
  if (!ok) {
    // The stream is broken (client gone): drop what waits and end the request.
    bool cancel = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      broken_ = true;
      for (GenerationEvent& e : inbox_) {
        e.text.clear();
        e.tokens.clear();
      }
      inbox_tokens_ = 0;
      cancel = submitted_ && !have_final_;
    }
    if (cancel) ctx_.engine->Cancel(id_, absl::CancelledError("the stream to the client broke"));
  }
  Drain();
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
