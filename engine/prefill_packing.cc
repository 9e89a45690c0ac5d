#include "engine/prefill_packing.h"

#include <algorithm>

namespace mesa {

std::vector<PrefillPack> PackPrefill(absl::Span<const PrefillRequest> requests, int64_t max_rows,
                                     int32_t max_seqs, int32_t chunk) {
  const int64_t max_chunks = (max_rows + chunk - 1) / chunk;
  std::vector<int64_t> done(requests.size(), 0);
  std::vector<PrefillPack> packs;
  for (;;) {
    PrefillPack pack;
    int64_t rows = 0, chunks = 0;
    bool fixed = false;
    for (size_t r = 0; r < requests.size(); ++r) {
      const int64_t left = static_cast<int64_t>(requests[r].tokens.size()) - done[r];
      if (left == 0) continue;
      if (static_cast<int32_t>(pack.size()) == max_seqs) break;
      const bool r_fixed = requests[r].cg.mode == CgMode::kFixed;
      if (!pack.empty() && r_fixed != fixed) continue;  // a later pack of its own mode
      int64_t len = std::min({left, max_rows - rows, (max_chunks - chunks) * chunk});
      if (len < left) len = len / chunk * chunk;  // a piece that is not the last ends on a chunk
      if (len <= 0) continue;                     // no room left here; maybe for a shorter one
      pack.push_back({r, done[r], len, len == left});
      rows += len;
      chunks += (len + chunk - 1) / chunk;
      fixed = r_fixed;
    }
    if (pack.empty()) break;
    for (const PrefillPiece& piece : pack) done[piece.request] += piece.len;
    packs.push_back(std::move(pack));
  }
  return packs;
}

}  // namespace mesa
