// Token choice on the GPU for the rows whose rule needs only the logits row, the temperature
// and one uniform draw (engine/sampler.h PlainChoice): greedy and untruncated softmax sampling
// without penalties, the cases the engine hands to the runner. The same rule as
// Sampler::Sample, so a row's token does not depend on which side chose it: greedy takes the
// first id with the largest logit; softmax keeps the ids with z = (l - top) / T > -30 (top =
// the largest logit, z computed in fp32 as the CPU does), p = exp(z) rounded to fp32, and takes
// the first id in id order whose running sum (double) exceeds u = draw * sum(p). The sums are
// added in another order than the CPU's sequential loop (double precision: choices differ only
// when u lies within about 1e-16 of a boundary) and exp is computed in double and rounded (glibc's
// expf is within 0.502 ulp, so p may differ in its last bit now and then).
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "absl/status/status.h"

namespace mesa::gpu {

// One row's rule; mirrors PlainChoice::Kind.
struct RowChoice {
  int32_t kind = 0;  // 0 = none (the host samples from the row), 1 = greedy, 2 = softmax
  float temperature = 1.0f;
  double draw = 0.0;  // [0, 1)
  int32_t valid_vocab = 0;  // ids [0, min(valid_vocab, vocab)) can be chosen; 0 = all
};

struct SampleRowsParams {
  int32_t rows = 0;
  int32_t vocab = 0;        // logits row length and stride
  const float* logits = nullptr;     // [rows, vocab]
  const RowChoice* choices = nullptr;  // [rows], device
  int32_t* tokens = nullptr;         // [rows] out: the chosen id, -1 for kind 0 rows
  cudaStream_t stream = nullptr;
};

absl::Status SampleRows(const SampleRowsParams& p);

}  // namespace mesa::gpu
