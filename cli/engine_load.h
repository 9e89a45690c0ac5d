// Engine-only load: the serving engine (continuous batching, sampling, detokenization, stop
// checks) driven in-process by closed-loop clients, without gRPC. The baseline for the
// server's throughput.
#pragma once

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "engine/cg_settings.h"
#include "engine/model_runner.h"
#include "models/tokenizer.h"

namespace mesa::cli {

struct EngineLoadResult {
  int64_t requests = 0;
  int64_t tokens = 0;
  double seconds = 0.0;
};

// Runs `requests` requests of `prompt_tokens` random token ids and exactly `max_new_tokens`
// generated tokens, `concurrency` at a time, through an Engine on `runner` with the prefill
// chunk and budget `mesaserve serve` uses on that backend (PrefillChunkFor). With a tokenizer
// (which must outlive the call) the engine detokenizes every token as it does in the server.
// pipeline_decode and prefill_interval: EngineOptions' (serve's --pipeline-decode and
// --prefill-interval).
absl::StatusOr<EngineLoadResult> RunEngineLoad(std::unique_ptr<ModelRunner> runner,
                                               const Tokenizer* tokenizer,
                                               const CgSettings& cg, int32_t concurrency,
                                               int32_t requests, int32_t prompt_tokens,
                                               int32_t max_new_tokens, bool pipeline_decode = true,
                                               int32_t prefill_interval = 1);

}  // namespace mesa::cli
