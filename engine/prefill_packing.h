// How a runner that prefills several sequences per launch (the CUDA runner) cuts one Prefill
// call's requests into launches: each launch ("pack") takes at most one piece of each request,
// at most `max_seqs` pieces, `max_rows` tokens and max_rows / chunk (rounded up) chunks in all,
// and one CG mode (the kernels are specialised by mode). A request's pieces run in order, one
// pack after another, and every piece but a request's last ends on a chunk boundary, so the
// chunking from the request's start, and with it the math, is that of one call per request.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "engine/model_runner.h"

namespace mesa {

struct PrefillPiece {
  size_t request = 0;  // index into the Prefill call's requests
  int64_t offset = 0;  // the piece's first token within the request
  int64_t len = 0;
  bool last = false;   // the request's final piece (its logits come from here)
};

using PrefillPack = std::vector<PrefillPiece>;

// The packs in launch order. Requests must be non-empty; max_rows >= chunk >= 1, max_seqs >= 1.
std::vector<PrefillPack> PackPrefill(absl::Span<const PrefillRequest> requests, int64_t max_rows,
                                     int32_t max_seqs, int32_t chunk);

}  // namespace mesa
