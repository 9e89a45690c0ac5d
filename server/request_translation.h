// Translation between the mesa.v1 protobuf messages and the engine's native types, with the
// validation of every field against the server's limits. Errors name the field, the limit and
// the value.
#pragma once

#include <grpcpp/server_context.h>

#include "absl/status/statusor.h"
#include "engine/request.h"
#include "mesa/v1/mesa.pb.h"
#include "models/mesa_config.h"
#include "models/tokenizer.h"
#include "server/serve_config.h"

namespace mesa::server {

struct TranslationContext {
  const MesaConfig* model = nullptr;
  const Tokenizer* tokenizer = nullptr;
  const Limits* limits = nullptr;
  const CgSettings* cg_defaults = nullptr;
};

absl::StatusOr<GenerationRequest> ToGenerationRequest(const v1::GenerateRequest& in,
                                                      const TranslationContext& ctx);

v1::FinishReason ToProto(FinishReason reason);
void FillSummary(const RequestSummary& s, v1::Usage* usage, v1::Timings* timings, v1::CgStats* cg);
void AppendTokens(const std::vector<TokenChoice>& tokens, bool with_logprobs, const Tokenizer* tokenizer,
                  google::protobuf::RepeatedField<int32_t>* ids,
                  google::protobuf::RepeatedPtrField<v1::TokenLogprobs>* logprobs);

}  // namespace mesa::server
