// Fuzz target: a gRPC GenerateRequest as it arrives off the wire (arbitrary bytes parsed with
// ParseFromArray, as gRPC does) and its validation and translation by ToGenerationRequest,
// with the test tokenizer (tests/testdata/tokenizer/tiny.model, 400 pieces), a small model
// config with the same vocabulary size (MESA_FUZZ_MODEL_VOCAB in the environment sets another,
// e.g. 512 for a vocabulary padded past the tokenizer's), and the server's default Limits and
// CG settings.
//
// Invariants checked beyond "no crash, no sanitizer report":
//   * a rejected request gets InvalidArgument with a message;
//   * an accepted request respects every limit: request_id, prompt (non-empty, at most
//     max_prompt_tokens, ids inside the model vocabulary, and for a text prompt: BOS as
//     add_bos says, the rest inside the tokenizer's pieces, text valid UTF-8 and within
//     max_prompt_bytes), sampling (ValidateSamplingParams, top_k <= vocab), stopping
//     (max_new_tokens, stop strings and ids), top_logprobs, and CG settings that the engine's
//     own ValidateCgSettings accepts; the engine's StreamDecoder, started with the prompt as
//     its context as the engine does, can detokenize a generated token;
//   * the same request with its text and first stop string cut by one byte (often invalid
//     UTF-8 then) is handled too.
#include <google/protobuf/stubs/logging.h>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "base/utf8.h"
#include "engine/cg_settings.h"
#include "engine/sampler.h"
#include "mesa/v1/mesa.pb.h"
#include "models/mesa_config.h"
#include "models/tokenizer.h"
#include "models/tokenizer_stream.h"
#include "server/request_translation.h"
#include "server/serve_config.h"
#include "tests/fuzz/fuzz_util.h"

namespace mesa {
namespace {

std::string ModelConfig() {
  const char* vocab = std::getenv("MESA_FUZZ_MODEL_VOCAB");
  return absl::StrCat(R"({"model_type": "mesa_net", "hidden_size": 64, "num_hidden_layers": 1,
    "num_heads": 2, "head_dim": 32, "bos_token_id": 1, "eos_token_id": 2, "vocab_size": )",
                      vocab != nullptr && *vocab != '\0' ? vocab : "400", "}");
}

struct Context {
  MesaConfig model;
  std::unique_ptr<Tokenizer> tokenizer;
  server::Limits limits;
  CgSettings cg;
  server::TranslationContext ctx;
};

const Context& GetContext() {
  static const Context* const context = [] {
    // The parser logs every rejected message (e.g. invalid UTF-8 in a string field); that is
    // noise here and slows the fuzzer down.
    google::protobuf::SetLogHandler(nullptr);
    auto* c = new Context();
    auto model = ParseMesaConfig(ModelConfig(), "fuzz model");
    if (!model.ok()) fuzz::Fail(__FILE__, __LINE__, "model config", model.status().ToString());
    c->model = *model;
    auto tok = Tokenizer::Load(fuzz::TestdataDir() + "/tokenizer/tiny.model", c->model.vocab_size);
    if (!tok.ok()) fuzz::Fail(__FILE__, __LINE__, "tokenizer", tok.status().ToString());
    c->tokenizer = std::move(*tok);
    c->ctx = {&c->model, c->tokenizer.get(), &c->limits, &c->cg};
    return c;
  }();
  return *context;
}

void CheckTranslation(const v1::GenerateRequest& in) {
  const Context& c = GetContext();
  const server::Limits& lim = c.limits;
  const int32_t vocab = c.model.vocab_size;
  auto translated = server::ToGenerationRequest(in, c.ctx);
  if (!translated.ok()) {
    const absl::Status& s = translated.status();
    FUZZ_CHECK(s.code() == absl::StatusCode::kInvalidArgument && !s.message().empty(),
               s.ToString());
    return;
  }
  const GenerationRequest& r = *translated;
  FUZZ_CHECK(r.client_id == in.request_id() &&
                 static_cast<int64_t>(r.client_id.size()) <= lim.max_request_id_bytes,
             "request_id");

  // Prompt.
  FUZZ_CHECK(!r.prompt.empty() && static_cast<int64_t>(r.prompt.size()) <= lim.max_prompt_tokens,
             absl::StrCat("prompt of ", r.prompt.size(), " tokens accepted"));
  for (int32_t id : r.prompt) {
    FUZZ_CHECK(id >= 0 && id < vocab, absl::StrCat("prompt id ", id, " outside [0, ", vocab, ")"));
  }
  if (in.prompt_case() == v1::GenerateRequest::kText) {
    FUZZ_CHECK(static_cast<int64_t>(in.text().size()) <= lim.max_prompt_bytes, "prompt bytes");
    FUZZ_CHECK(IsValidUtf8(in.text()),
               "invalid UTF-8 prompt accepted: " + fuzz::Printable(in.text()));
    const bool bos = !in.has_add_bos() || in.add_bos();
    size_t first = 0;
    if (bos) {
      FUZZ_CHECK(r.prompt[0] == c.model.bos_token_id, "add_bos: the prompt does not start with BOS");
      first = 1;
    }
    for (size_t i = first; i < r.prompt.size(); ++i) {
      FUZZ_CHECK(r.prompt[i] < c.tokenizer->piece_count(),
                 absl::StrCat("text prompt id ", r.prompt[i], " is not a tokenizer piece"));
    }
  } else {
    FUZZ_CHECK(in.prompt_case() == v1::GenerateRequest::kTokenIds &&
                   static_cast<int>(r.prompt.size()) == in.token_ids().ids_size(),
               "token_ids prompt not taken as given");
  }

  // Sampling.
  const absl::Status sampling = ValidateSamplingParams(r.sampling);
  FUZZ_CHECK(sampling.ok(), "sampling parameters accepted that the sampler rejects: " +
                                sampling.ToString());
  FUZZ_CHECK(r.sampling.top_k >= 0 && r.sampling.top_k <= vocab,
             absl::StrCat("top_k ", r.sampling.top_k));
  if (in.sampling().has_seed()) FUZZ_CHECK(r.sampling.seed == in.sampling().seed(), "seed");

  // Stopping.
  const StoppingParams& st = r.stopping;
  FUZZ_CHECK(st.max_new_tokens >= 1 && st.max_new_tokens <= lim.max_new_tokens,
             absl::StrCat("max_new_tokens ", st.max_new_tokens));
  FUZZ_CHECK(static_cast<int64_t>(st.stop_strings.size()) <= lim.max_stop_strings, "stop count");
  for (const std::string& s : st.stop_strings) {
    FUZZ_CHECK(!s.empty() && static_cast<int64_t>(s.size()) <= lim.max_stop_string_bytes &&
                   IsValidUtf8(s),
               "stop string accepted: " + fuzz::Printable(s));
  }
  FUZZ_CHECK(static_cast<int64_t>(st.stop_token_ids.size()) <= lim.max_stop_token_ids,
             "stop_token_ids count");
  for (int32_t id : st.stop_token_ids) {
    FUZZ_CHECK(id >= 0 && id < vocab, absl::StrCat("stop token id ", id));
  }

  FUZZ_CHECK(r.top_logprobs >= 0 && r.top_logprobs <= lim.max_top_logprobs,
             absl::StrCat("top_logprobs ", r.top_logprobs));
  FUZZ_CHECK(r.priority == in.priority(), "priority");

  // The engine detokenizes with the prompt's last tokens as context: an accepted prompt must
  // not make that fail (a generated token is always inside the tokenizer's pieces).
  StreamDecoder stream(*c.tokenizer, r.prompt);
  auto delta = stream.Push(5);
  FUZZ_CHECK(delta.ok(), "accepted prompt breaks the stream decoder: " + delta.status().ToString());

  // CG: whatever the server lets through, the engine must accept.
  const absl::Status cg = ValidateCgSettings(r.cg);
  FUZZ_CHECK(cg.ok(), "CG settings accepted that the engine rejects: " + cg.ToString());
  FUZZ_CHECK(r.cg.max_iters == c.cg.max_iters ||
                 (r.cg.max_iters >= 1 && r.cg.max_iters <= lim.max_cg_iters),
             absl::StrCat("cg max_iters ", r.cg.max_iters));
  FUZZ_CHECK(r.cg.tol == c.cg.tol || (r.cg.tol >= lim.min_cg_tol && r.cg.tol < 1.0f),
             absl::StrCat("cg tol ", r.cg.tol));
}

}  // namespace
}  // namespace mesa

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  mesa::GetContext();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  mesa::v1::GenerateRequest in;
  if (size > static_cast<size_t>(INT32_MAX) || !in.ParseFromArray(data, static_cast<int>(size))) {
    return 0;
  }
  mesa::CheckTranslation(in);
  // The wire parser refuses invalid UTF-8 in proto3 strings, so the translator's own UTF-8
  // checks are reached only with strings changed after parsing: cut the last byte of the text
  // prompt and of the first stop string (which often splits a character).
  bool changed = false;
  if (in.prompt_case() == mesa::v1::GenerateRequest::kText && !in.text().empty()) {
    in.mutable_text()->pop_back();
    changed = true;
  }
  if (in.stopping().stop_size() > 0 && !in.stopping().stop(0).empty()) {
    in.mutable_stopping()->mutable_stop(0)->pop_back();
    changed = true;
  }
  if (changed) mesa::CheckTranslation(in);
  return 0;
}
