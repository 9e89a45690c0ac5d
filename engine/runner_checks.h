// Argument checks every ModelRunner backend applies to the engine's requests, with the same
// messages on every backend, and the sizing of results that both backends fill alike.
#pragma once

#include <cstdint>
#include <set>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "engine/model_runner.h"
#include "models/mesa_config.h"

namespace mesa {

inline absl::Status CheckSlotInPool(SlotId slot, int32_t num_slots) {
  if (slot < 0 || slot >= num_slots) {
    return absl::InvalidArgumentError(
        absl::StrCat("slot ", slot, " is outside the pool [0, ", num_slots, ")"));
  }
  return absl::OkStatus();
}

inline absl::Status CheckTokenInVocab(int32_t token, int32_t vocab_size) {
  if (token < 0 || token >= vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("token id ", token, " is outside the vocabulary [0, ", vocab_size, ")"));
  }
  return absl::OkStatus();
}

// Prefill: one result per request, every slot in the pool and in one request only (a runner may
// run the requests side by side), no empty prompt, every token in the vocabulary. All checked
// before any work, so a bad request changes nothing.
inline absl::Status CheckPrefillRequests(absl::Span<const PrefillRequest> requests,
                                         size_t num_results, int32_t num_slots,
                                         int32_t vocab_size) {
  if (requests.size() != num_results) {
    return absl::InvalidArgumentError("Prefill: requests and results differ in length");
  }
  std::set<SlotId> seen;
  for (const PrefillRequest& req : requests) {
    absl::Status s = CheckSlotInPool(req.slot, num_slots);
    if (!s.ok()) return s;
    if (!seen.insert(req.slot).second) {
      return absl::InvalidArgumentError(absl::StrCat("Prefill: slot ", req.slot, " appears twice"));
    }
    if (req.tokens.empty()) return absl::InvalidArgumentError("Prefill: empty token list");
    for (int32_t t : req.tokens) {
      s = CheckTokenInVocab(t, vocab_size);
      if (!s.ok()) return s;
    }
  }
  return absl::OkStatus();
}

// Decode: every live row's slot in the pool and token in the vocabulary, no slot twice (pad
// rows aside). `fed`: for StartDecode, which rows of the step started just before can feed a
// row (its live rows); empty everywhere else, where no row may feed.
inline absl::Status CheckDecodeRows(absl::Span<const DecodeRow> rows, int32_t num_slots,
                                    int32_t vocab_size, absl::Span<const uint8_t> fed = {}) {
  std::set<SlotId> seen;
  for (size_t i = 0; i < rows.size(); ++i) {
    const DecodeRow& row = rows[i];
    if (row.slot == kPadSlot) continue;
    absl::Status s = CheckSlotInPool(row.slot, num_slots);
    if (!s.ok()) return s;
    if (row.feed_row >= 0) {
      if (fed.empty()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "Decode: row ", i, " feeds on row ", row.feed_row,
            " of a previous step, but only a step started right after another can"));
      }
      if (static_cast<size_t>(row.feed_row) >= fed.size() || !fed[row.feed_row]) {
        return absl::InvalidArgumentError(absl::StrCat(
            "Decode: row ", i, " feeds on row ", row.feed_row, " of the previous step, which has ",
            fed.size(), " rows and chose no token for that one"));
      }
    } else {
      s = CheckTokenInVocab(row.token, vocab_size);
      if (!s.ok()) return s;
    }
    if (!seen.insert(row.slot).second) {
      return absl::InvalidArgumentError(absl::StrCat("Decode: slot ", row.slot, " appears twice"));
    }
  }
  return absl::OkStatus();
}

// A prefill result sized for `req`: zero logits for every row (all_logits) or the last, and
// zeroed CG statistics for every token when asked for (empty otherwise); no token.
// `logits` false: the runner chooses the request's next token (PrefillRequest::choice) and
// returns no logits.
inline void SizePrefillResult(const PrefillRequest& req, const MesaConfig& config,
                              PrefillResult* result, bool logits = true) {
  const int64_t n = static_cast<int64_t>(req.tokens.size());
  result->token = -1;
  if (logits) {
    result->logits.assign((req.all_logits ? n : 1) * static_cast<int64_t>(config.vocab_size), 0.0f);
  } else {
    result->logits.clear();
  }
  if (req.want_stats) {
    result->stats.Resize(static_cast<int32_t>(n), config.num_hidden_layers, config.num_heads);
  } else {
    result->stats = CgStats{};
  }
}

}  // namespace mesa
