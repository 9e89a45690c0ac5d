// Argument checks every ModelRunner backend applies to the engine's requests, with the same
// messages on every backend.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/model_runner.h"

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

}  // namespace mesa
