// Several sequences packed back to back in the rows of one prefill call (fla's cu_seqlens):
// sequence s owns rows [start[s], start[s + 1]) and, in the chunked prefill, the 64-token chunks
// [chunk_start[s], chunk_start[s + 1]) (its last chunk may be short). Plain data with a fixed
// capacity, so it travels inside kernel parameters: a launch needs no device-side table, no
// upload and no allocation.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define MESA_HOST_DEVICE __host__ __device__
#else
#define MESA_HOST_DEVICE
#endif

namespace mesa::gpu {

inline constexpr int32_t kPrefillChunk = 64;
inline constexpr int32_t kMaxPackedSeqs = 32;

struct PackedSeqs {
  int32_t count = 0;
  int32_t start[kMaxPackedSeqs + 1] = {};        // token rows; start[count] = total rows
  int32_t chunk_start[kMaxPackedSeqs + 1] = {};  // chunks; chunk_start[count] = total chunks

  // Appends a sequence of `len` tokens; returns its index, or -1 when the table is full.
  int32_t Add(int32_t len) {
    if (count >= kMaxPackedSeqs) return -1;
    start[count + 1] = start[count] + len;
    chunk_start[count + 1] = chunk_start[count] + (len + kPrefillChunk - 1) / kPrefillChunk;
    return count++;
  }
  MESA_HOST_DEVICE int32_t rows() const { return start[count]; }
  MESA_HOST_DEVICE int32_t chunks() const { return chunk_start[count]; }
  MESA_HOST_DEVICE int32_t length(int32_t s) const { return start[s + 1] - start[s]; }

  // The sequence that owns row t / chunk n (a linear walk: at most kMaxPackedSeqs entries, read once per
  // warp or block).
  MESA_HOST_DEVICE int32_t SeqOfRow(int64_t t) const {
    int32_t s = 0;
    while (s + 1 < count && start[s + 1] <= t) ++s;
    return s;
  }
  MESA_HOST_DEVICE int32_t SeqOfChunk(int32_t n) const {
    int32_t s = 0;
    while (s + 1 < count && chunk_start[s + 1] <= n) ++s;
    return s;
  }
};

}  // namespace mesa::gpu
