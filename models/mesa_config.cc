#include "models/mesa_config.h"

#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "base/file_util.h"
#include "base/status_macros.h"
#include "nlohmann/json.hpp"

namespace mesa {
namespace {

using Json = nlohmann::json;

// Reads optional typed fields of the top-level object and reports the first error with the
// file name, the field and what was found.
class FieldReader {
 public:
  FieldReader(const Json& root, const std::string& source) : root_(root), source_(source) {}

  absl::Status Int(const char* key, int32_t min_value, int32_t max_value, int32_t* out) {
    auto it = root_.find(key);
    if (it == root_.end() || it->is_null()) return absl::OkStatus();
    if (!it->is_number_integer()) {
      return Error(key, absl::StrCat("expected an integer, found ", it->dump()));
    }
    const int64_t v = it->get<int64_t>();
    if (v < min_value || v > max_value) {
      return Error(key, absl::StrCat("value ", v, " is outside the supported range [", min_value,
                                     ", ", max_value, "]"));
    }
    *out = static_cast<int32_t>(v);
    return absl::OkStatus();
  }

  absl::Status Float(const char* key, double min_value, double max_value, float* out) {
    auto it = root_.find(key);
    if (it == root_.end() || it->is_null()) return absl::OkStatus();
    if (!it->is_number()) return Error(key, absl::StrCat("expected a number, found ", it->dump()));
    const double v = it->get<double>();
    if (!std::isfinite(v) || v < min_value || v > max_value) {
      return Error(key, absl::StrCat("value ", v, " is outside the supported range [", min_value,
                                     ", ", max_value, "]"));
    }
    *out = static_cast<float>(v);
    return absl::OkStatus();
  }

  absl::Status Bool(const char* key, bool* out) {
    auto it = root_.find(key);
    if (it == root_.end() || it->is_null()) return absl::OkStatus();
    if (!it->is_boolean()) return Error(key, absl::StrCat("expected true or false, found ", it->dump()));
    *out = it->get<bool>();
    return absl::OkStatus();
  }

  absl::Status String(const char* key, std::string* out) {
    auto it = root_.find(key);
    if (it == root_.end() || it->is_null()) return absl::OkStatus();
    if (!it->is_string()) return Error(key, absl::StrCat("expected a string, found ", it->dump()));
    *out = it->get<std::string>();
    return absl::OkStatus();
  }

  bool Present(const char* key) const {
    auto it = root_.find(key);
    return it != root_.end() && !it->is_null();
  }

  absl::Status Error(const std::string& key, const std::string& what) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": field '", key, "': ", what));
  }

 private:
  const Json& root_;
  const std::string& source_;
};

// HF configs store eos_token_id as an int or a list of ints; we use the first.
absl::Status ReadTokenId(const Json& root, const char* key, FieldReader& reader, int32_t vocab,
                         int32_t* out, bool* present) {
  *present = false;
  // Absent (or null, or []) keeps fla's default, which must fit the vocabulary too (found by
  // fuzz_mesa_config: vocab_size 1 with the default bos_token_id 1).
  auto default_fits = [&]() -> absl::Status {
    if (*out >= vocab) {
      return reader.Error(key, absl::StrCat("not given, and its default ", *out,
                                            " is outside the vocabulary [0, ", vocab, ")"));
    }
    return absl::OkStatus();
  };
  auto it = root.find(key);
  if (it == root.end() || it->is_null()) return default_fits();
  const Json* value = &*it;
  if (value->is_array()) {
    if (value->empty()) return default_fits();
    value = &(*value)[0];
  }
  if (!value->is_number_integer()) {
    return reader.Error(key, absl::StrCat("expected a token id, found ", it->dump()));
  }
  const int64_t id = value->get<int64_t>();
  if (id < 0 || id >= vocab) {
    return reader.Error(key, absl::StrCat("token id ", id, " is outside the vocabulary [0, ",
                                          vocab, ")"));
  }
  *out = static_cast<int32_t>(id);
  *present = true;
  return absl::OkStatus();
}

}  // namespace

int32_t DeriveIntermediateSize(int32_t hidden_size, double hidden_ratio) {
  const int64_t raw = static_cast<int64_t>(hidden_size * hidden_ratio * 2.0 / 3.0);
  return static_cast<int32_t>(256 * ((raw + 255) / 256));
}

absl::StatusOr<MesaConfig> ParseMesaConfig(std::string_view json_text, const std::string& source) {
  Json root;
  try {
    root = Json::parse(json_text.begin(), json_text.end());
  } catch (const Json::exception& e) {  // parse_error; out_of_range for numbers past double
    return absl::InvalidArgumentError(absl::StrCat(source, ": malformed JSON: ", e.what()));
  }
  if (!root.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": expected a JSON object at the top level, found ", root.type_name()));
  }
  FieldReader r(root, source);
  MesaConfig c;

  std::string model_type;
  MESA_RETURN_IF_ERROR(r.String("model_type", &model_type));
  if (model_type != "mesa_net") {
    return r.Error("model_type", absl::StrCat("expected \"mesa_net\", found \"", model_type,
                                              "\"", model_type.empty() ? " (missing)" : ""));
  }

  // Options this engine does not implement: refuse them rather than compute something else.
  if (r.Present("attn")) {
    return r.Error("attn", "hybrid softmax-attention layers are not supported; expected null");
  }
  if (r.Present("attnres_block_size")) {
    return r.Error("attnres_block_size", "Attention Residuals are not supported; expected null");
  }
  std::string act = "swish";
  MESA_RETURN_IF_ERROR(r.String("hidden_act", &act));
  if (act != "swish") {
    return r.Error("hidden_act", absl::StrCat("only \"swish\" (SwiGLU) is supported, found \"",
                                              act, "\""));
  }
  // Configs from fla before 2025-07-11 call the output gate `use_gate`; fla now ignores that key
  // and then refuses the g_proj weights, so say what to rename instead of failing later.
  if (r.Present("use_gate") && !r.Present("use_output_gate")) {
    return r.Error("use_gate",
                   "this config predates fla's rename to 'use_output_gate' (2025-07-11); "
                   "rename the key");
  }
  if (r.Present("A_log") || r.Present("expand_v")) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": this config uses MesaNet's first parameterisation (A_log/expand_v, fla before "
                "2025-06-11), which current fla and this engine do not load"));
  }

  constexpr int32_t kBig = 1 << 20;
  MESA_RETURN_IF_ERROR(r.Int("hidden_size", 1, 65536, &c.hidden_size));
  MESA_RETURN_IF_ERROR(r.Int("num_hidden_layers", 1, 1024, &c.num_hidden_layers));
  MESA_RETURN_IF_ERROR(r.Int("num_heads", 1, 1024, &c.num_heads));
  MESA_RETURN_IF_ERROR(r.Int("head_dim", 1, std::numeric_limits<int32_t>::max(), &c.head_dim));
  if (c.head_dim > kMaxHeadDim) {
    return r.Error("head_dim", absl::StrCat("value ", c.head_dim, " exceeds the supported maximum ",
                                            kMaxHeadDim));
  }
  MESA_RETURN_IF_ERROR(r.Int("conv_size", 1, kMaxConvSize, &c.conv_size));
  MESA_RETURN_IF_ERROR(r.Int("vocab_size", 1, 1 << 24, &c.vocab_size));
  MESA_RETURN_IF_ERROR(r.Bool("use_output_gate", &c.use_output_gate));
  MESA_RETURN_IF_ERROR(r.Bool("tie_word_embeddings", &c.tie_word_embeddings));
  MESA_RETURN_IF_ERROR(r.Bool("fuse_norm", &c.fuse_norm));
  MESA_RETURN_IF_ERROR(r.Float("norm_eps", 1e-12, 1.0, &c.norm_eps));
  MESA_RETURN_IF_ERROR(r.Float("lambda_lower_bound", 0.0, 1e6, &c.lambda_lower_bound));
  MESA_RETURN_IF_ERROR(r.Int("max_cg_step_training", 0, 1000, &c.max_cg_step_training));
  MESA_RETURN_IF_ERROR(r.Int("max_cg_step_decoding", 0, 1000, &c.max_cg_step_decoding));
  std::string dtype;
  MESA_RETURN_IF_ERROR(r.String("torch_dtype", &dtype));
  const char* dtype_key = "torch_dtype";
  if (dtype.empty()) {
    MESA_RETURN_IF_ERROR(r.String("dtype", &dtype));
    dtype_key = "dtype";
  }
  if (dtype.empty() || dtype == "bfloat16") {
    c.dtype = ScalarType::kBf16;
  } else if (dtype == "float16") {
    c.dtype = ScalarType::kFp16;
  } else if (dtype == "float32") {
    c.dtype = ScalarType::kFp32;
  } else {
    return r.Error(dtype_key, absl::StrCat("unsupported dtype \"", dtype,
                                           "\"; supported are bfloat16, float16 and float32"));
  }

  float hidden_ratio = 4.0f;
  MESA_RETURN_IF_ERROR(r.Float("hidden_ratio", 1e-3, 1e3, &hidden_ratio));
  if (r.Present("intermediate_size")) {
    MESA_RETURN_IF_ERROR(r.Int("intermediate_size", 1, kBig, &c.intermediate_size));
  } else {
    c.intermediate_size = DeriveIntermediateSize(c.hidden_size, hidden_ratio);
  }

  bool present = false;
  MESA_RETURN_IF_ERROR(ReadTokenId(root, "bos_token_id", r, c.vocab_size, &c.bos_token_id, &present));
  MESA_RETURN_IF_ERROR(ReadTokenId(root, "eos_token_id", r, c.vocab_size, &c.eos_token_id, &present));
  int32_t pad = 0;
  MESA_RETURN_IF_ERROR(ReadTokenId(root, "pad_token_id", r, c.vocab_size, &pad, &present));
  if (present) c.pad_token_id = pad;

  // Guard the products the loader and the state pool compute from these numbers.
  const int64_t key_dim = static_cast<int64_t>(c.num_heads) * c.head_dim;
  if (key_dim > kBig) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": num_heads * head_dim = ", key_dim,
                                                   " exceeds the supported maximum ", kBig));
  }
  return c;
}

absl::StatusOr<MesaConfig> LoadMesaConfig(const std::filesystem::path& path) {
  MESA_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path, 16u << 20));
  return ParseMesaConfig(text, path.string());
}

}  // namespace mesa
