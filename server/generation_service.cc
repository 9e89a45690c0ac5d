#include "server/generation_service.h"

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/status_mapping.h"

namespace mesa::server {
namespace {

// A streaming call that fails before it starts.
class FailedStream : public grpc::ServerWriteReactor<v1::GenerateStreamResponse> {
 public:
  explicit FailedStream(const grpc::Status& status) { Finish(status); }
  void OnDone() override { delete this; }
};

grpc::ServerUnaryReactor* FinishNow(grpc::CallbackServerContext* context, const grpc::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(status);
  return reactor;
}

}  // namespace

GenerationService::GenerationService(Engine* engine, const Tokenizer* tokenizer,
                                     const ServeConfig* config, Metrics* metrics,
                                     TaskPool* delivery, std::string model_name)
    : engine_(engine),
      tokenizer_(tokenizer),
      config_(config),
      metrics_(metrics),
      model_name_(std::move(model_name)) {
  translation_.model = &engine_->runner().config();
  translation_.tokenizer = tokenizer_;
  translation_.limits = &config_->limits;
  translation_.cg_defaults = &config_->cg;
  calls_.engine = engine_;
  calls_.tokenizer = tokenizer_;
  calls_.metrics = metrics_;
  calls_.delivery = delivery;
}

absl::Status GenerationService::Authorize(grpc::CallbackServerContext* context) {
  const std::string& token = config_->security.auth_token;
  if (token.empty()) return absl::OkStatus();
  const auto& metadata = context->client_metadata();
  auto it = metadata.find("authorization");
  if (it == metadata.end()) {
    return absl::UnauthenticatedError(
        "missing credentials: send the metadata 'authorization: Bearer <token>'");
  }
  const std::string presented(it->second.data(), it->second.size());
  const std::string expected = "Bearer " + token;
  // Compare in time independent of where the strings differ.
  unsigned char diff = presented.size() == expected.size() ? 0 : 1;
  for (size_t i = 0; i < presented.size(); ++i) {
    diff |= static_cast<unsigned char>(presented[i] ^ expected[i % expected.size()]);
  }
  if (diff != 0) return absl::UnauthenticatedError("invalid bearer token");
  return absl::OkStatus();
}

absl::StatusOr<GenerationRequest> GenerationService::Prepare(grpc::CallbackServerContext* context,
                                                             const v1::GenerateRequest& request) {
  if (absl::Status auth = Authorize(context); !auth.ok()) {
    if (metrics_) metrics_->RequestFinished(RequestOutcome::kRejected);
    return auth;
  }
  absl::StatusOr<GenerationRequest> r = ToGenerationRequest(request, translation_);
  if (!r.ok()) {
    if (metrics_) metrics_->RequestFinished(RequestOutcome::kRejected);
    return r.status();
  }
  r->arrival = absl::Now();
  const auto deadline = context->deadline();
  if (deadline != std::chrono::system_clock::time_point::max()) {
    r->deadline = absl::FromChrono(deadline);
  }
  return r;
}

grpc::ServerUnaryReactor* GenerationService::Generate(grpc::CallbackServerContext* context,
                                                      const v1::GenerateRequest* request,
                                                      v1::GenerateResponse* response) {
  absl::StatusOr<GenerationRequest> r = Prepare(context, *request);
  if (!r.ok()) return FinishNow(context, ToGrpcStatus(r.status()));
  return UnaryGenerateCall::Start(calls_, std::move(*r), response);
}

grpc::ServerWriteReactor<v1::GenerateStreamResponse>* GenerationService::GenerateStream(
    grpc::CallbackServerContext* context, const v1::GenerateRequest* request) {
  absl::StatusOr<GenerationRequest> r = Prepare(context, *request);
  if (!r.ok()) return new FailedStream(ToGrpcStatus(r.status()));
  return StreamGenerateCall::Start(calls_, std::move(*r));
}

grpc::ServerUnaryReactor* GenerationService::Tokenize(grpc::CallbackServerContext* context,
                                                      const v1::TokenizeRequest* request,
                                                      v1::TokenizeResponse* response) {
  if (absl::Status auth = Authorize(context); !auth.ok()) return FinishNow(context, ToGrpcStatus(auth));
  if (tokenizer_ == nullptr) {
    return FinishNow(context, grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                                           "the model has no tokenizer.model"));
  }
  if (static_cast<int64_t>(request->text().size()) > config_->limits.max_prompt_bytes) {
    return FinishNow(context, ToGrpcStatus(absl::InvalidArgumentError(absl::StrCat(
                                  "text has ", request->text().size(), " bytes; limit is ",
                                  config_->limits.max_prompt_bytes))));
  }
  absl::StatusOr<std::vector<int32_t>> ids = tokenizer_->Encode(request->text());
  if (!ids.ok()) return FinishNow(context, ToGrpcStatus(ids.status()));
  if (request->add_bos()) {
    response->add_token_ids(engine_->runner().config().bos_token_id);
    response->add_pieces(tokenizer_->IdToPiece(engine_->runner().config().bos_token_id));
  }
  for (int32_t id : *ids) {
    response->add_token_ids(id);
    response->add_pieces(tokenizer_->IdToPiece(id));
  }
  return FinishNow(context, grpc::Status::OK);
}

grpc::ServerUnaryReactor* GenerationService::Detokenize(grpc::CallbackServerContext* context,
                                                        const v1::DetokenizeRequest* request,
                                                        v1::DetokenizeResponse* response) {
  if (absl::Status auth = Authorize(context); !auth.ok()) return FinishNow(context, ToGrpcStatus(auth));
  if (tokenizer_ == nullptr) {
    return FinishNow(context, grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                                           "the model has no tokenizer.model"));
  }
  if (request->token_ids_size() > config_->limits.max_prompt_tokens + config_->limits.max_new_tokens) {
    return FinishNow(context, ToGrpcStatus(absl::InvalidArgumentError(absl::StrCat(
                                  "token_ids has ", request->token_ids_size(), " ids; limit is ",
                                  config_->limits.max_prompt_tokens + config_->limits.max_new_tokens))));
  }
  std::vector<int32_t> ids(request->token_ids().begin(), request->token_ids().end());
  absl::StatusOr<std::string> text = tokenizer_->Decode(ids);
  if (!text.ok()) return FinishNow(context, ToGrpcStatus(text.status()));
  response->set_text(*text);
  return FinishNow(context, grpc::Status::OK);
}

grpc::ServerUnaryReactor* GenerationService::GetModelInfo(grpc::CallbackServerContext* context,
                                                          const v1::GetModelInfoRequest*,
                                                          v1::ModelInfo* info) {
  if (absl::Status auth = Authorize(context); !auth.ok()) return FinishNow(context, ToGrpcStatus(auth));
  const ModelRunner& runner = engine_->runner();
  const MesaConfig& c = runner.config();
  info->set_name(model_name_);
  info->set_architecture("mesa_net");
  info->set_dtype(ScalarTypeName(c.dtype));
  info->set_backend(runner.backend_name());
  info->set_vocab_size(c.vocab_size);
  info->set_num_layers(c.num_hidden_layers);
  info->set_hidden_size(c.hidden_size);
  info->set_num_heads(c.num_heads);
  info->set_head_dim(c.head_dim);
  info->set_bos_token_id(c.bos_token_id);
  info->set_eos_token_id(c.eos_token_id);
  info->set_state_bytes_per_sequence(runner.state_bytes_per_slot());
  info->set_state_slots(runner.num_slots());
  info->set_parameter_bytes(runner.weight_bytes());
  const Limits& l = config_->limits;
  v1::Limits* limits = info->mutable_limits();
  limits->set_max_prompt_tokens(l.max_prompt_tokens);
  limits->set_max_new_tokens(l.max_new_tokens);
  limits->set_default_max_new_tokens(l.default_max_new_tokens);
  limits->set_max_stop_strings(l.max_stop_strings);
  limits->set_max_stop_string_bytes(l.max_stop_string_bytes);
  limits->set_max_top_logprobs(l.max_top_logprobs);
  limits->set_max_waiting_requests(config_->engine.max_waiting);
  v1::CgDefaults* cg = info->mutable_cg();
  cg->set_mode(config_->cg.mode == CgMode::kFixed ? v1::CG_MODE_FIXED : v1::CG_MODE_ADAPTIVE);
  cg->set_tolerance(config_->cg.tol);
  cg->set_max_iterations(config_->cg.max_iters);
  cg->set_min_tolerance(l.min_cg_tol);
  cg->set_max_iterations_limit(l.max_cg_iters);
  return FinishNow(context, grpc::Status::OK);
}

}  // namespace mesa::server
