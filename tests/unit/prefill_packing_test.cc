// PackPrefill (engine/prefill_packing.h): how the CUDA runner cuts a Prefill call into launches.
#include "engine/prefill_packing.h"

#include <cstdint>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace mesa {
namespace {

// Requests over one shared token buffer (PackPrefill reads only lengths and modes).
struct Requests {
  std::vector<int32_t> tokens = std::vector<int32_t>(100000, 1);
  std::vector<PrefillRequest> list;
  void Add(int64_t len, CgMode mode = CgMode::kFixed) {
    PrefillRequest r;
    r.slot = static_cast<SlotId>(list.size());
    r.tokens = absl::MakeConstSpan(tokens).subspan(0, len);
    r.cg.mode = mode;
    list.push_back(r);
  }
};

// Every rule of the header, for any input.
void CheckInvariants(const Requests& reqs, const std::vector<PrefillPack>& packs, int64_t max_rows,
                     int32_t max_seqs, int32_t chunk) {
  std::vector<int64_t> covered(reqs.list.size(), 0);
  for (const PrefillPack& pack : packs) {
    ASSERT_FALSE(pack.empty());
    ASSERT_LE(static_cast<int32_t>(pack.size()), max_seqs);
    int64_t rows = 0, chunks = 0;
    std::vector<bool> seen(reqs.list.size(), false);
    for (const PrefillPiece& p : pack) {
      const PrefillRequest& r = reqs.list[p.request];
      EXPECT_FALSE(seen[p.request]) << "two pieces of one request in a pack";
      seen[p.request] = true;
      EXPECT_EQ(p.offset, covered[p.request]) << "pieces out of order";
      EXPECT_GT(p.len, 0);
      covered[p.request] += p.len;
      const int64_t n = static_cast<int64_t>(r.tokens.size());
      EXPECT_EQ(p.last, covered[p.request] == n);
      if (!p.last) {
        EXPECT_EQ(p.len % chunk, 0) << "a piece that is not the last ends mid-chunk";
      }
      EXPECT_EQ(r.cg.mode, reqs.list[pack[0].request].cg.mode) << "two CG modes in one pack";
      rows += p.len;
      chunks += (p.len + chunk - 1) / chunk;
    }
    EXPECT_LE(rows, max_rows);
    EXPECT_LE(chunks, (max_rows + chunk - 1) / chunk);
  }
  for (size_t r = 0; r < reqs.list.size(); ++r) {
    EXPECT_EQ(covered[r], static_cast<int64_t>(reqs.list[r].tokens.size())) << "request " << r;
  }
}

TEST(PackPrefill, ShortRequestsShareOneLaunch) {
  Requests reqs;
  for (int64_t len : {7, 64, 1, 130}) reqs.Add(len);
  const std::vector<PrefillPack> packs = PackPrefill(reqs.list, 2048, 32, 64);
  ASSERT_EQ(packs.size(), 1u);
  ASSERT_EQ(packs[0].size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(packs[0][i].request, i);
    EXPECT_EQ(packs[0][i].offset, 0);
    EXPECT_EQ(packs[0][i].len, static_cast<int64_t>(reqs.list[i].tokens.size()));
    EXPECT_TRUE(packs[0][i].last);
  }
}

TEST(PackPrefill, LongRequestRunsInChunkAlignedPieces) {
  Requests reqs;
  reqs.Add(5000);
  const std::vector<PrefillPack> packs = PackPrefill(reqs.list, 2048, 32, 64);
  ASSERT_EQ(packs.size(), 3u);
  EXPECT_EQ(packs[0][0].len, 2048);
  EXPECT_EQ(packs[1][0].offset, 2048);
  EXPECT_EQ(packs[2][0].offset, 4096);
  EXPECT_EQ(packs[2][0].len, 904);
  EXPECT_FALSE(packs[1][0].last);
  EXPECT_TRUE(packs[2][0].last);
}

TEST(PackPrefill, RaggedTailsCountAsWholeChunks) {
  Requests reqs;
  reqs.Add(100);   // 2 chunks
  reqs.Add(3000);  // 1948 rows left but 30 chunks: 1920 tokens now, the rest next
  const std::vector<PrefillPack> packs = PackPrefill(reqs.list, 2048, 32, 64);
  ASSERT_EQ(packs.size(), 2u);
  ASSERT_EQ(packs[0].size(), 2u);
  EXPECT_EQ(packs[0][1].len, 1920);
  EXPECT_EQ(packs[1][0].request, 1u);
  EXPECT_EQ(packs[1][0].len, 1080);
  CheckInvariants(reqs, packs, 2048, 32, 64);
}

TEST(PackPrefill, AtMostMaxSeqsPerLaunch) {
  Requests reqs;
  for (int i = 0; i < 40; ++i) reqs.Add(10);
  const std::vector<PrefillPack> packs = PackPrefill(reqs.list, 2048, 32, 64);
  ASSERT_EQ(packs.size(), 2u);
  EXPECT_EQ(packs[0].size(), 32u);
  EXPECT_EQ(packs[1].size(), 8u);
  EXPECT_EQ(packs[1][0].request, 32u);
}

TEST(PackPrefill, OneCgModePerLaunch) {
  Requests reqs;
  reqs.Add(10, CgMode::kFixed);
  reqs.Add(10, CgMode::kAdaptive);
  reqs.Add(10, CgMode::kFixed);
  const std::vector<PrefillPack> packs = PackPrefill(reqs.list, 2048, 32, 64);
  ASSERT_EQ(packs.size(), 2u);
  ASSERT_EQ(packs[0].size(), 2u);
  EXPECT_EQ(packs[0][1].request, 2u);
  ASSERT_EQ(packs[1].size(), 1u);
  EXPECT_EQ(packs[1][0].request, 1u);
}

TEST(PackPrefill, RandomCallsKeepEveryRule) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 300; ++trial) {
    const int32_t chunk = trial % 3 == 0 ? 16 : 64;
    const int64_t max_rows = chunk * (1 + static_cast<int64_t>(rng() % 40));
    const int32_t max_seqs = 1 + static_cast<int32_t>(rng() % 8);
    Requests reqs;
    const int n = 1 + static_cast<int>(rng() % 12);
    for (int i = 0; i < n; ++i) {
      reqs.Add(1 + static_cast<int64_t>(rng() % 3000),
               rng() % 4 == 0 ? CgMode::kAdaptive : CgMode::kFixed);
    }
    SCOPED_TRACE(::testing::Message() << "trial " << trial);
    CheckInvariants(reqs, PackPrefill(reqs.list, max_rows, max_seqs, chunk), max_rows, max_seqs,
                    chunk);
  }
}

}  // namespace
}  // namespace mesa
