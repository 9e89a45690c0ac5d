// A ModelRunner wrapper that fails chosen calls, for fault tests (`serve` enables it from the
// MESA_FAULT_INJECTION environment variable and logs a warning). Spec: comma-separated
//   prefill_fail_at=N   the N-th Prefill call (1-based) returns INTERNAL
//   decode_fail_at=N    the N-th decode step (Decode, DecodeAndChoose or StartDecode) returns INTERNAL
//   poison_at=N         the N-th call of either kind fails and the runner stays poisoned
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/model_runner.h"

namespace mesa {

absl::StatusOr<std::unique_ptr<ModelRunner>> WrapWithFaultInjection(std::unique_ptr<ModelRunner> runner,
                                                                    const std::string& spec);

}  // namespace mesa
