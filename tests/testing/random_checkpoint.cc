#include "tests/testing/random_checkpoint.h"

#include <fstream>
#include <random>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "gtest/gtest.h"
#include "models/checkpoint.h"
#include "models/safetensors_writer.h"
#include "nlohmann/json.hpp"

namespace mesa::testing {

MesaConfig TinyConfig() {
  MesaConfig c;
  c.hidden_size = 64;
  c.num_hidden_layers = 2;
  c.num_heads = 4;
  c.head_dim = 16;
  c.conv_size = 4;
  c.intermediate_size = 128;
  c.vocab_size = 97;
  return c;
}

std::filesystem::path MakeTempDir(const std::string& name) {
  const std::filesystem::path dir = std::filesystem::path(::testing::TempDir()) /
                                    absl::StrCat("mesa_", name, "_", ::getpid());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

absl::Status WriteConfigJson(const std::filesystem::path& path, const MesaConfig& c) {
  nlohmann::json j;
  j["model_type"] = "mesa_net";
  j["architectures"] = {"MesaNetForCausalLM"};
  j["hidden_size"] = c.hidden_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_heads"] = c.num_heads;
  j["head_dim"] = c.head_dim;
  j["conv_size"] = c.conv_size;
  j["intermediate_size"] = c.intermediate_size;
  j["vocab_size"] = c.vocab_size;
  j["use_output_gate"] = c.use_output_gate;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["fuse_norm"] = c.fuse_norm;
  j["norm_eps"] = c.norm_eps;
  j["lambda_lower_bound"] = c.lambda_lower_bound;
  j["bos_token_id"] = c.bos_token_id;
  j["eos_token_id"] = c.eos_token_id;
  j["max_cg_step_training"] = c.max_cg_step_training;
  j["max_cg_step_decoding"] = c.max_cg_step_decoding;
  j["hidden_act"] = "swish";
  j["attn"] = nullptr;
  j["torch_dtype"] = "bfloat16";
  std::ofstream out(path);
  out << j.dump(2);
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path.string()));
  return absl::OkStatus();
}

absl::Status WriteRandomCheckpoint(const std::filesystem::path& dir, const MesaConfig& c,
                                   const RandomCheckpointOptions& options) {
  std::mt19937_64 rng(options.seed);
  auto normal = [&](size_t n, float std) {
    std::normal_distribution<float> dist(0.0f, std);
    std::vector<float> v(n);
    for (float& x : v) x = dist(rng);
    return v;
  };
  auto uniform = [&](size_t n, float lo, float hi) {
    std::uniform_real_distribution<float> dist(lo, hi);
    std::vector<float> v(n);
    for (float& x : v) x = dist(rng);
    return v;
  };
  auto numel = [](const std::vector<int64_t>& shape) {
    size_t n = 1;
    for (int64_t d : shape) n *= static_cast<size_t>(d);
    return n;
  };
  SafetensorsWriter w;
  const float proj_std = 1.0f / std::sqrt(static_cast<float>(c.hidden_size));
  for (const ExpectedTensor& t : ExpectedMesaTensors(c)) {
    if (!t.required && !options.write_lm_head_when_tied) continue;
    const size_t n = numel(t.shape);
    const std::string& name = t.name;
    auto ends_with = [&](const std::string& suffix) {
      return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
    };
    if (ends_with("lambda_params")) {
      w.AddFloat32(name, t.shape, uniform(n, -1.0f, 1.5f));
    } else if (ends_with("a_proj.bias")) {
      const float hi = std::log(options.max_retention / (1.0f - options.max_retention));
      w.AddBf16(name, t.shape, uniform(n, 0.0f, hi));
    } else if (ends_with("b_proj.bias")) {
      w.AddBf16(name, t.shape, uniform(n, -1.0f, 1.0f));
    } else if (ends_with("norm.weight")) {
      w.AddBf16(name, t.shape, uniform(n, 0.8f, 1.2f));
    } else if (ends_with("conv1d.weight")) {
      w.AddBf16(name, t.shape, normal(n, 0.5f));
    } else if (ends_with("embeddings.weight")) {
      w.AddBf16(name, t.shape, normal(n, 1.0f));
    } else if (ends_with("down_proj.weight")) {
      w.AddBf16(name, t.shape, normal(n, 1.0f / std::sqrt(static_cast<float>(c.intermediate_size))));
    } else if (ends_with("o_proj.weight")) {
      w.AddBf16(name, t.shape, normal(n, 1.0f / std::sqrt(static_cast<float>(c.key_dim()))));
    } else if (ends_with("lm_head.weight")) {
      w.AddBf16(name, t.shape, normal(n, 3.0f * proj_std));
    } else {
      w.AddBf16(name, t.shape, normal(n, proj_std));
    }
  }
  MESA_RETURN_IF_ERROR(WriteConfigJson(dir / "config.json", c));
  return w.WriteFile(dir / "model.safetensors");
}

}  // namespace mesa::testing
