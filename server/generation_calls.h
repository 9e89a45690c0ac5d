// gRPC callback reactors for Generate (unary) and GenerateStream, bridged to the engine.
//
// The engine holds a shared GenerationSink per request and calls it on its own thread; the
// reactor belongs to gRPC until OnDone. The sink keeps a pointer to its reactor under a mutex
// and drops it in OnDone, so a late engine event never touches a finished call. A client
// cancellation (or an expired deadline) is forwarded to the engine, which ends the request
// within one step and frees its slot. The engine thread only files each event with its call;
// building messages and starting gRPC operations (a stream's writes and finish, a unary
// call's finish) happen on CallContext::delivery's threads, so the engine goes on to its next
// step at once.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <mutex>
#include <vector>

#include "base/task_pool.h"
#include "engine/engine.h"
#include "mesa/v1/mesa.grpc.pb.h"
#include "server/metrics.h"

namespace mesa::server {

class UnaryGenerateCall;
class StreamGenerateCall;

// Shared state a call needs to talk to the engine.
struct CallContext {
  Engine* engine = nullptr;
  const Tokenizer* tokenizer = nullptr;
  Metrics* metrics = nullptr;  // counts requests the engine refuses; may be null
  // Builds and starts the writes and finishes that engine events cause, off the engine
  // thread; null = the engine thread does it itself.
  TaskPool* delivery = nullptr;
};

class UnaryGenerateCall : public grpc::ServerUnaryReactor {
 public:
  // Submits `request` to the engine; on refusal the call finishes at once with that error.
  static UnaryGenerateCall* Start(const CallContext& ctx, GenerationRequest request,
                                  v1::GenerateResponse* response);
  void OnCancel() override;
  void OnDone() override;

 private:
  class Sink;
  UnaryGenerateCall(const CallContext& ctx, v1::GenerateResponse* response);
  CallContext ctx_;
  std::shared_ptr<Sink> sink_;
  std::mutex mu_;
  RequestId id_ = 0;
  bool submitted_ = false;
};

class StreamGenerateCall : public grpc::ServerWriteReactor<v1::GenerateStreamResponse> {
 public:
  static StreamGenerateCall* Start(const CallContext& ctx, GenerationRequest request);
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

 private:
  class Sink;
  friend class Sink;
  explicit StreamGenerateCall(const CallContext& ctx);
  // Engine thread: files the event in inbox_ and, unless a drain or write already owns the
  // call, hands the call to a delivery thread. Nothing else: messages are built there.
  void Accept(GenerationEvent event);
  // Owner of the call's output (a delivery thread, or gRPC's thread after a write): turns the
  // waiting events into one message and starts its write, or finishes the call after the
  // final event, or gives up ownership when nothing waits.
  void Drain();
  size_t Backlog() const;

  CallContext ctx_;
  std::shared_ptr<Sink> sink_;
  std::string client_id_;
  int32_t top_logprobs_ = 0;

  mutable std::mutex mu_;  // guards the fields below up to current_
  std::vector<GenerationEvent> inbox_;
  size_t inbox_tokens_ = 0;
  // True while one thread owns the output: a drain is posted or running, or a write is out.
  // Only the owner touches drained_, current_ and final_status_, and only it starts gRPC
  // operations.
  bool busy_ = false;
  bool have_final_ = false;  // the engine's last event has arrived (nothing follows it)
  bool finished_ = false;    // Finish was started
  bool broken_ = false;      // a write failed: the client is gone, drop what is left
  RequestId id_ = 0;
  bool submitted_ = false;

  std::vector<GenerationEvent> drained_;  // the owner's events being turned into current_
  v1::GenerateStreamResponse current_;
  grpc::Status final_status_;
  // gRPC runs a write (serialising current_), then its OnWriteDone, then lets the next write
  // start, but that order lives inside libgrpc, which ThreadSanitizer cannot see. Every
  // StartWrite holds write_order_ and OnWriteDone passes through it before taking mu_, so the
  // order is visible to it too. Recursive: gRPC may run OnWriteDone inline from StartWrite.
  std::recursive_mutex write_order_;
};

}  // namespace mesa::server
