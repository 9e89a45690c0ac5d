// MesaNet hyper-parameters as written by flash-linear-attention's MesaNetConfig
// (config.json, model_type "mesa_net"). Parsing validates every field we use and rejects the
// options this engine does not implement, with errors that name the field and the value.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "base/half.h"

namespace mesa {

struct MesaConfig {
  int32_t hidden_size = 2048;         // d
  int32_t num_hidden_layers = 24;     // L
  int32_t num_heads = 16;             // H
  int32_t head_dim = 128;             // K = V
  int32_t conv_size = 4;              // W: short causal conv width (q and k)
  int32_t intermediate_size = 0;      // I (derived from hidden_ratio when null in the file)
  int32_t vocab_size = 32000;
  bool use_output_gate = false;       // g_proj + gated o_norm
  bool tie_word_embeddings = false;
  bool fuse_norm = true;              // fused residual-add RMSNorm semantics (spec 3.2)
  float norm_eps = 1e-6f;
  float lambda_lower_bound = 0.25f;
  int32_t bos_token_id = 1;
  int32_t eos_token_id = 2;
  std::optional<int32_t> pad_token_id;
  int32_t max_cg_step_training = 30;  // prefill CG iterations in fla-compatible mode
  int32_t max_cg_step_decoding = 30;  // decode CG iterations in fla-compatible mode
  // Compute dtype (config "torch_dtype" or "dtype"; bfloat16 when absent): activations are
  // rounded to it where fla's model rounds them, and weight matrices are stored in it.
  ScalarType dtype = ScalarType::kBf16;

  int32_t key_dim() const { return num_heads * head_dim; }  // D_k = H*K
};

// Hard limits of this engine; a config outside them is rejected at load.
inline constexpr int32_t kMaxHeadDim = 128;
inline constexpr int32_t kMaxConvSize = 16;

// Parses and validates config.json text. `source` names the file in error messages.
absl::StatusOr<MesaConfig> ParseMesaConfig(std::string_view json_text, const std::string& source);
absl::StatusOr<MesaConfig> LoadMesaConfig(const std::filesystem::path& path);

// fla's GatedMLP width rule: int(d * ratio * 2/3) rounded up to a multiple of 256.
int32_t DeriveIntermediateSize(int32_t hidden_size, double hidden_ratio);

}  // namespace mesa
