// Loads a MesaNet checkpoint directory in flash-linear-attention's Hugging Face layout:
// config.json, model.safetensors (or shards listed by model.safetensors.index.json) and an
// optional tokenizer.model. Every tensor is checked by name, shape and dtype against the
// config before any is converted; errors name the file, the tensor and expected vs found.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "models/mesa_config.h"
#include "models/mesa_weights.h"

namespace mesa {

struct ExpectedTensor {
  std::string name;
  std::vector<int64_t> shape;
  bool required = true;  // lm_head.weight is optional (and ignored) with tied embeddings
};

// The tensors fla's MesaNetForCausalLM has for `config`, in checkpoint naming.
std::vector<ExpectedTensor> ExpectedMesaTensors(const MesaConfig& config);

// The safetensors files of a model directory: the shards named by the index when
// model.safetensors.index.json exists, else every *.safetensors file in the directory.
absl::StatusOr<std::vector<std::filesystem::path>> ListWeightFiles(const std::filesystem::path& dir);

absl::StatusOr<MesaWeights> LoadMesaWeights(const std::filesystem::path& dir);

// PyTorch's softplus (beta 1, threshold 20) in fp32, as fla computes lambda.
float SoftplusTorch(float x);

}  // namespace mesa
