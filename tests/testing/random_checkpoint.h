// Writes small MesaNet checkpoints with random weights in fla's layout, for tests that need a
// model but not a particular one (batching, continuation, exact-solve and loader tests).
#pragma once

#include <cstdint>
#include <filesystem>

#include "absl/status/status.h"
#include "models/mesa_config.h"

namespace mesa::testing {

// A small config: hidden 64, 2 layers, 4 heads x 16, conv 4, vocab 97.
MesaConfig TinyConfig();

struct RandomCheckpointOptions {
  uint64_t seed = 1;
  // Decay gates are drawn so that sigmoid(a_bias) spans [0.5, max_retention]: values near 1
  // make slow-decaying, harder (worse-conditioned) CG systems.
  float max_retention = 0.995f;
  bool write_lm_head_when_tied = false;
};

// Writes config.json and model.safetensors (bf16 weights, fp32 lambda_params) into `dir`.
absl::Status WriteRandomCheckpoint(const std::filesystem::path& dir, const MesaConfig& config,
                                   const RandomCheckpointOptions& options = {});

// Writes `config` as fla's MesaNetConfig would serialise it.
absl::Status WriteConfigJson(const std::filesystem::path& path, const MesaConfig& config);

// A fresh empty directory under the test temp dir.
std::filesystem::path MakeTempDir(const std::string& name);

}  // namespace mesa::testing
