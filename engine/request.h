// A generation request in native types (the transport parses and validates its own format
// into this), and the events the engine sends back.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "engine/cg_settings.h"
#include "engine/sampler.h"

namespace mesa {

using RequestId = uint64_t;

struct StoppingParams {
  int32_t max_new_tokens = 256;
  std::vector<std::string> stop_strings;  // the match is not returned
  std::vector<int32_t> stop_token_ids;    // the token is returned
  bool ignore_eos = false;
};

struct GenerationRequest {
  std::vector<int32_t> prompt;  // token ids, already checked against the vocabulary
  SamplingParams sampling;
  StoppingParams stopping;
  CgSettings cg;
  int32_t top_logprobs = 0;
  int32_t priority = 0;          // larger first
  std::string client_id;         // for logs and responses only
  absl::Time arrival = absl::Now();
  absl::Time deadline = absl::InfiniteFuture();
};

enum class FinishReason { kNone, kLength, kEos, kStopString, kStopToken };
const char* FinishReasonName(FinishReason reason);

struct TokenChoice {
  int32_t token = 0;
  float logprob = 0.0f;
  std::vector<TokenLogprob> top;  // when top_logprobs > 0
};

// CG work done for one request (all its tokens, layers and heads).
struct RequestCgStats {
  uint64_t solves = 0;
  uint64_t iterations = 0;
  uint64_t cap_hits = 0;
};

struct RequestSummary {
  int32_t prompt_tokens = 0;
  int32_t completion_tokens = 0;
  double queue_seconds = 0.0;
  double time_to_first_token_seconds = 0.0;
  double total_seconds = 0.0;
  RequestCgStats cg;
};

// One message to the client: newly released text and tokens; the last one also carries the
// outcome (status OK with a finish reason, or an error) and the summary.
struct GenerationEvent {
  std::string text;
  std::vector<TokenChoice> tokens;
  bool final = false;
  absl::Status status;
  FinishReason finish = FinishReason::kNone;
  RequestSummary summary;
};

// Receives a request's events. Push is called on the engine thread and must not block; the
// engine stops stepping a request while Backlog() is at the request's buffer bound, so a slow
// reader holds only its own request back. Implementations must be thread-safe.
class GenerationSink {
 public:
  virtual ~GenerationSink() = default;
  virtual void Push(GenerationEvent event) = 0;
  virtual size_t Backlog() const = 0;  // events pushed but not yet delivered
};

}  // namespace mesa
