// gRPC callback reactors for Generate (unary) and GenerateStream, bridged to the engine.
//
// The engine holds a shared GenerationSink per request and calls it on its own thread; the
// reactor belongs to gRPC until OnDone. The sink keeps a pointer to its reactor under a mutex
// and drops it in OnDone, so a late engine event never touches a finished call. A client
// cancellation (or an expired deadline) is forwarded to the engine, which ends the request
// within one step and frees its slot.
#pragma once

#include <grpcpp/grpcpp.h>

#include <deque>
#include <memory>
#include <mutex>

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
  // What to start after releasing mu_: gRPC operations are never started under our lock.
  enum class Next { kNothing, kWrite, kFinish };
  // Queues a message (and, for the last event, the final status); starts a write if idle.
  void Enqueue(GenerationEvent event);
  Next PlanNextLocked();  // mu_ held; moves the next message to current_ or marks finished
  void Run(Next next);    // mu_ not held
  size_t Backlog() const;

  CallContext ctx_;
  std::shared_ptr<Sink> sink_;
  std::string client_id_;
  mutable std::mutex mu_;
  // gRPC runs a write (serialising current_), then its OnWriteDone, then lets the next write
  // start, but that order lives inside libgrpc, which ThreadSanitizer cannot see. Every
  // StartWrite holds write_order_ and OnWriteDone passes through it before taking mu_, so the
  // order is visible to it too. Recursive: gRPC may run OnWriteDone inline from StartWrite.
  std::recursive_mutex write_order_;
  std::deque<v1::GenerateStreamResponse> queue_;
  size_t queued_tokens_ = 0;  // tokens in queue_ (messages are merged while a write is out)
  v1::GenerateStreamResponse current_;
  bool writing_ = false;
  bool have_final_ = false;
  bool finished_ = false;
  grpc::Status final_status_;
  RequestId id_ = 0;
  bool submitted_ = false;
  int32_t top_logprobs_ = 0;
};

}  // namespace mesa::server
