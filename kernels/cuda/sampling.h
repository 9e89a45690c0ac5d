// Token choice on the GPU for the rows whose rule needs only the logits row, the sampling
// parameters and one uniform draw (engine/plain_choice.h): greedy, softmax and truncated
// softmax sampling without penalties, the cases the engine hands to the runner. The same rule
// as Sampler::Sample, so a row's token does not depend on which side chose it: greedy takes the
// first id with the largest logit; softmax keeps the ids with z = (l - top) / T > -30 (top =
// the largest logit, z computed in fp32 as the CPU does), p = exp(z) rounded to fp32, and takes
// the first id in id order whose running sum (double) exceeds u = draw * sum(p). Truncated
// softmax orders those candidates by (p descending, id ascending), keeps the top_k, those with
// p >= min_p * p_max, then the shortest prefix holding top_p of the kept mass, and walks that
// order. Sums run in another order than the CPU's sequential loops (softmax: double; truncated:
// fixed point at 2^-44, exact and deterministic): choices differ only when u lies within about
// 1e-12 of a boundary. exp is computed in double and rounded (glibc's expf is within 0.502 ulp,
// so p may differ in its last bit now and then).
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "absl/status/status.h"

namespace mesa::gpu {

// One row's rule; mirrors PlainChoice::Kind.
struct RowChoice {
  // 0 = none (the host samples from the row), 1 = greedy, 2 = softmax, 3 = truncated softmax
  int32_t kind = 0;
  float temperature = 1.0f;
  double draw = 0.0;  // [0, 1)
  int32_t valid_vocab = 0;  // ids [0, min(valid_vocab, vocab)) can be chosen; 0 = all
  int32_t top_k = 0;        // kind 3: 0 = off
  float top_p = 1.0f;       // kind 3: 1 = off
  float min_p = 0.0f;       // kind 3: 0 = off
  // Penalties on the seen tokens [seen_offset, + seen_count) of SampleRowsParams::seen, applied
  // to the row's logits in place first: l = l > 0 ? l / repetition : l * repetition, then
  // l -= fma(frequency, count, presence) (engine/sampler.cc's arithmetic).
  float repetition_penalty = 1.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  int32_t seen_offset = 0;
  int32_t seen_count = 0;
  // Log-probabilities of the raw logits to report (rows without penalties): the chosen token's
  // and the top_logprobs most likely, most likely first (ties: smaller id first).
  int32_t top_logprobs = 0;
};

inline constexpr int32_t kMaxTopLogprobs = 20;

// (token, log-probability), as engine/plain_choice.h TokenLogprob.
struct TopLogprob {
  int32_t token;
  float logprob;
};

// (token, count) of a seen token, as engine/plain_choice.h SeenToken.
struct SeenEntry {
  int32_t token;
  int32_t count;
};

// Truncated choice (kind 3) keeps the row's probabilities in shared memory: rows longer than
// this take the host path (the caller passes kind 0 for them).
inline constexpr int32_t kMaxTruncatedSampleVocab = 49152;

struct SampleRowsParams {
  int32_t rows = 0;
  int32_t vocab = 0;        // logits row length and stride
  float* logits = nullptr;           // [rows, vocab]; rows with penalties are changed in place
  const SeenEntry* seen = nullptr;   // the rows' seen tokens (RowChoice::seen_offset)
  bool any_penalties = false;        // some row has seen_count > 0
  float* logprobs = nullptr;         // [rows] out: the chosen token's, where top_logprobs > 0
  TopLogprob* top = nullptr;         // [rows, kMaxTopLogprobs] out
  bool any_logprobs = false;         // some row has top_logprobs > 0
  const RowChoice* choices = nullptr;  // [rows], device
  int32_t* tokens = nullptr;         // [rows] out: the chosen id, -1 for kind 0 rows
  bool any_truncated = false;        // some row is kind 3 (a second kernel runs for those)
  cudaStream_t stream = nullptr;
};

absl::Status SampleRows(const SampleRowsParams& p);

}  // namespace mesa::gpu
