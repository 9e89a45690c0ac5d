// The mesa.v1.Generation service (gRPC callback API). Parses and validates requests at the
// edge, hands native requests to the engine and never touches model state itself.
#pragma once

#include <string>

#include "engine/engine.h"
#include "mesa/v1/mesa.grpc.pb.h"
#include "server/generation_calls.h"
#include "server/metrics.h"
#include "server/request_translation.h"
#include "server/serve_config.h"

namespace mesa::server {

class GenerationService final : public v1::Generation::CallbackService {
 public:
  // All pointers must outlive the service and every call it started; metrics and delivery
  // may be null (CallContext::delivery).
  GenerationService(Engine* engine, const Tokenizer* tokenizer, const ServeConfig* config,
                    Metrics* metrics, TaskPool* delivery, std::string model_name);

  grpc::ServerUnaryReactor* Generate(grpc::CallbackServerContext* context,
                                     const v1::GenerateRequest* request,
                                     v1::GenerateResponse* response) override;
  grpc::ServerWriteReactor<v1::GenerateStreamResponse>* GenerateStream(
      grpc::CallbackServerContext* context, const v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* context,
                                     const v1::TokenizeRequest* request,
                                     v1::TokenizeResponse* response) override;
  grpc::ServerUnaryReactor* Detokenize(grpc::CallbackServerContext* context,
                                       const v1::DetokenizeRequest* request,
                                       v1::DetokenizeResponse* response) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context,
                                         const v1::GetModelInfoRequest* request,
                                         v1::ModelInfo* response) override;

 private:
  // UNAUTHENTICATED unless the call carries the configured bearer token (when one is set).
  absl::Status Authorize(grpc::CallbackServerContext* context);
  // Validates and converts a request; counts a rejection in the metrics on failure.
  absl::StatusOr<GenerationRequest> Prepare(grpc::CallbackServerContext* context,
                                            const v1::GenerateRequest& request);

  Engine* engine_;
  const Tokenizer* tokenizer_;
  const ServeConfig* config_;
  Metrics* metrics_;
  std::string model_name_;
  TranslationContext translation_;
  CallContext calls_;
};

}  // namespace mesa::server
