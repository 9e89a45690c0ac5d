#include "server/request_translation.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "base/utf8.h"

namespace mesa::server {
namespace {

absl::Status Invalid(const std::string& what) { return absl::InvalidArgumentError(what); }

absl::Status CheckTokenId(const char* field, int64_t id, int32_t vocab) {
  if (id < 0 || id >= vocab) {
    return Invalid(absl::StrCat(field, ": token id ", id, " is outside the vocabulary [0, ", vocab, ")"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<GenerationRequest> ToGenerationRequest(const v1::GenerateRequest& in,
                                                      const TranslationContext& ctx) {
  const Limits& lim = *ctx.limits;
  const MesaConfig& model = *ctx.model;
  GenerationRequest r;
  if (static_cast<int64_t>(in.request_id().size()) > lim.max_request_id_bytes) {
    return Invalid(absl::StrCat("request_id has ", in.request_id().size(), " bytes; limit is ",
                                lim.max_request_id_bytes));
  }
  r.client_id = in.request_id();

  // Prompt.
  switch (in.prompt_case()) {
    case v1::GenerateRequest::kText: {
      if (ctx.tokenizer == nullptr) {
        return absl::FailedPreconditionError("the model has no tokenizer; send token_ids");
      }
      if (static_cast<int64_t>(in.text().size()) > lim.max_prompt_bytes) {
        return Invalid(absl::StrCat("prompt text has ", in.text().size(), " bytes; limit is ",
                                    lim.max_prompt_bytes));
      }
      if (!IsValidUtf8(in.text())) return Invalid("prompt text is not valid UTF-8");
      if (!in.has_add_bos() || in.add_bos()) r.prompt.push_back(model.bos_token_id);
      MESA_ASSIGN_OR_RETURN(std::vector<int32_t> ids, ctx.tokenizer->Encode(in.text()));
      r.prompt.insert(r.prompt.end(), ids.begin(), ids.end());
      break;
    }
    case v1::GenerateRequest::kTokenIds:
      for (int32_t id : in.token_ids().ids()) {
        MESA_RETURN_IF_ERROR(CheckTokenId("token_ids", id, model.vocab_size));
        r.prompt.push_back(id);
      }
      break;
    case v1::GenerateRequest::PROMPT_NOT_SET:
      return Invalid("the request has no prompt: set text or token_ids");
  }
  if (r.prompt.empty()) return Invalid("the prompt is empty");
  if (static_cast<int64_t>(r.prompt.size()) > lim.max_prompt_tokens) {
    return Invalid(absl::StrCat("prompt has ", r.prompt.size(), " tokens; limit is ",
                                lim.max_prompt_tokens));
  }

  // Sampling.
  const v1::SamplingParams& sp = in.sampling();
  r.sampling.temperature = sp.has_temperature() ? sp.temperature() : 1.0f;
  r.sampling.top_k = sp.top_k();
  if (r.sampling.top_k > model.vocab_size) {
    return Invalid(absl::StrCat("top_k = ", sp.top_k(), " exceeds the vocabulary size ", model.vocab_size));
  }
  r.sampling.top_p = sp.has_top_p() ? sp.top_p() : 1.0f;
  r.sampling.min_p = sp.min_p();
  r.sampling.repetition_penalty = sp.has_repetition_penalty() ? sp.repetition_penalty() : 1.0f;
  r.sampling.presence_penalty = sp.presence_penalty();
  r.sampling.frequency_penalty = sp.frequency_penalty();
  r.sampling.seed = sp.has_seed() ? sp.seed() : std::random_device{}();
  MESA_RETURN_IF_ERROR(ValidateSamplingParams(r.sampling));

  // Stopping.
  const v1::StoppingCriteria& st = in.stopping();
  const int64_t max_new = st.has_max_new_tokens() ? st.max_new_tokens() : lim.default_max_new_tokens;
  if (max_new < 1 || max_new > lim.max_new_tokens) {
    return Invalid(absl::StrCat("max_new_tokens = ", max_new, " is outside the allowed range [1, ",
                                lim.max_new_tokens, "]"));
  }
  r.stopping.max_new_tokens = static_cast<int32_t>(max_new);
  if (st.stop_size() > lim.max_stop_strings) {
    return Invalid(absl::StrCat("stop has ", st.stop_size(), " strings; limit is ", lim.max_stop_strings));
  }
  for (const std::string& s : st.stop()) {
    if (s.empty()) return Invalid("stop strings must not be empty");
    if (static_cast<int64_t>(s.size()) > lim.max_stop_string_bytes) {
      return Invalid(absl::StrCat("a stop string has ", s.size(), " bytes; limit is ",
                                  lim.max_stop_string_bytes));
    }
    if (!IsValidUtf8(s)) return Invalid("a stop string is not valid UTF-8");
    r.stopping.stop_strings.push_back(s);
  }
  if (st.stop_token_ids_size() > lim.max_stop_token_ids) {
    return Invalid(absl::StrCat("stop_token_ids has ", st.stop_token_ids_size(), " ids; limit is ",
                                lim.max_stop_token_ids));
  }
  for (int32_t id : st.stop_token_ids()) {
    MESA_RETURN_IF_ERROR(CheckTokenId("stop_token_ids", id, model.vocab_size));
    r.stopping.stop_token_ids.push_back(id);
  }
  r.stopping.ignore_eos = st.ignore_eos();

  if (in.top_logprobs() < 0 || in.top_logprobs() > lim.max_top_logprobs) {
    return Invalid(absl::StrCat("top_logprobs = ", in.top_logprobs(), " is outside the allowed range [0, ",
                                lim.max_top_logprobs, "]"));
  }
  r.top_logprobs = in.top_logprobs();
  r.priority = in.priority();

  // CG, within the server's bounds.
  r.cg = *ctx.cg_defaults;
  const v1::CgOptions& cg = in.cg();
  switch (cg.mode()) {
    case v1::CG_MODE_UNSPECIFIED: break;
    case v1::CG_MODE_ADAPTIVE: r.cg.mode = CgMode::kAdaptive; break;
    case v1::CG_MODE_FIXED: r.cg.mode = CgMode::kFixed; break;
    default: return Invalid(absl::StrCat("cg.mode ", static_cast<int>(cg.mode()), " is not a known CgMode"));
  }
  if (cg.has_tolerance()) {
    if (!(cg.tolerance() >= lim.min_cg_tol && cg.tolerance() < 1.0f)) {
      return Invalid(absl::StrCat("cg.tolerance = ", cg.tolerance(), " is outside the allowed range [",
                                  lim.min_cg_tol, ", 1)"));
    }
    r.cg.tol = cg.tolerance();
  }
  if (cg.has_max_iterations()) {
    if (cg.max_iterations() < 1 || cg.max_iterations() > lim.max_cg_iters) {
      return Invalid(absl::StrCat("cg.max_iterations = ", cg.max_iterations(),
                                  " is outside the allowed range [1, ", lim.max_cg_iters, "]"));
    }
    r.cg.max_iters = cg.max_iterations();
  }
  return r;
}

v1::FinishReason ToProto(FinishReason reason) {
  switch (reason) {
    case FinishReason::kNone: return v1::FINISH_REASON_UNSPECIFIED;
    case FinishReason::kLength: return v1::FINISH_REASON_LENGTH;
    case FinishReason::kEos: return v1::FINISH_REASON_EOS;
    case FinishReason::kStopString: return v1::FINISH_REASON_STOP_STRING;
    case FinishReason::kStopToken: return v1::FINISH_REASON_STOP_TOKEN;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

void FillSummary(const RequestSummary& s, v1::Usage* usage, v1::Timings* timings, v1::CgStats* cg) {
  usage->set_prompt_tokens(s.prompt_tokens);
  usage->set_completion_tokens(s.completion_tokens);
  timings->set_queue_seconds(s.queue_seconds);
  timings->set_time_to_first_token_seconds(s.time_to_first_token_seconds);
  timings->set_total_seconds(s.total_seconds);
  cg->set_head_tokens(s.cg.solves);
  cg->set_total_iterations(s.cg.iterations);
  cg->set_mean_iterations(s.cg.solves ? static_cast<double>(s.cg.iterations) / s.cg.solves : 0.0);
  cg->set_cap_hits(s.cg.cap_hits);
}

void AppendTokens(const std::vector<TokenChoice>& tokens, bool with_logprobs, const Tokenizer* tokenizer,
                  google::protobuf::RepeatedField<int32_t>* ids,
                  google::protobuf::RepeatedPtrField<v1::TokenLogprobs>* logprobs) {
  for (const TokenChoice& c : tokens) {
    ids->Add(c.token);
    if (!with_logprobs) continue;
    v1::TokenLogprobs* lp = logprobs->Add();
    lp->mutable_chosen()->set_token_id(c.token);
    lp->mutable_chosen()->set_logprob(c.logprob);
    if (tokenizer) lp->mutable_chosen()->set_text(tokenizer->IdToPiece(c.token));
    for (const TokenLogprob& t : c.top) {
      v1::TokenLogprob* e = lp->add_top();
      e->set_token_id(t.token);
      e->set_logprob(t.logprob);
      if (tokenizer) e->set_text(tokenizer->IdToPiece(t.token));
    }
  }
}

}  // namespace mesa::server
