#include "models/checkpoint.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/file_util.h"
#include "base/half.h"
#include "base/status_macros.h"
#include "models/safetensors.h"
#include "nlohmann/json.hpp"

namespace mesa {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

constexpr char kIndexFile[] = "model.safetensors.index.json";

std::string ShapeText(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// Lists up to `max_names` names followed by the total, so errors stay readable for big models.
std::string NameList(const std::vector<std::string>& names, size_t max_names = 5) {
  std::vector<std::string> shown(names.begin(),
                                 names.begin() + std::min(names.size(), max_names));
  std::string text = absl::StrJoin(shown, ", ");
  if (names.size() > max_names) absl::StrAppend(&text, ", ... (", names.size(), " in all)");
  return text;
}

struct Located {
  const SafetensorsFile* file = nullptr;
  const TensorInfo* info = nullptr;
};

class TensorSource {
 public:
  absl::Status Open(const std::vector<fs::path>& paths) {
    for (const fs::path& p : paths) {
      MESA_ASSIGN_OR_RETURN(SafetensorsFile f, SafetensorsFile::Open(p));
      files_.push_back(std::make_unique<SafetensorsFile>(std::move(f)));
      const SafetensorsFile* file = files_.back().get();
      for (const TensorInfo& info : file->tensors()) {
        auto [it, inserted] = by_name_.emplace(info.name, Located{file, &info});
        if (!inserted) {
          return absl::InvalidArgumentError(absl::StrCat(
              "tensor '", info.name, "' appears in both ", it->second.file->display_name(),
              " and ", file->display_name()));
        }
      }
    }
    return absl::OkStatus();
  }

  const Located* Find(const std::string& name) const {
    auto it = by_name_.find(name);
    return it == by_name_.end() ? nullptr : &it->second;
  }
  const std::map<std::string, Located>& all() const { return by_name_; }

 private:
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, Located> by_name_;
};

// Copies a tensor's elements into `out` (which has room for them) as `type`: bf16 and fp16
// sources convert exactly to fp32; other conversions round to nearest even.
absl::Status CopyAs(const Located& t, ScalarType type, WeightMatrix& out, int64_t offset) {
  const size_t n = static_cast<size_t>(t.info->num_elements());
  switch (type) {
    case ScalarType::kBf16:
      return CopyTensorToBf16(*t.file, *t.info, absl::MakeSpan(out.half.data() + offset, n));
    case ScalarType::kFp32:
      return CopyTensorToFloat(*t.file, *t.info, absl::MakeSpan(out.full.data() + offset, n));
    case ScalarType::kFp16: {
      std::vector<float> tmp(n);
      MESA_RETURN_IF_ERROR(CopyTensorToFloat(*t.file, *t.info, absl::MakeSpan(tmp)));
      for (size_t i = 0; i < n; ++i) out.half[offset + i] = FloatToFp16(tmp[i]);
      return absl::OkStatus();
    }
  }
  return absl::InternalError("unknown scalar type");
}

// Stacks one or more [n_i, cols] tensors into one [sum n_i, cols] matrix of `type`.
absl::StatusOr<WeightMatrix> ToMatrix(const std::vector<const Located*>& parts, ScalarType type) {
  WeightMatrix out;
  out.type = type;
  const auto& first_shape = parts.front()->info->shape;
  out.cols = first_shape.size() > 1 ? first_shape[1] : 1;
  for (const Located* p : parts) out.rows += p->info->shape[0];
  const size_t total = static_cast<size_t>(out.rows * out.cols);
  if (type == ScalarType::kFp32) {
    out.full.resize(total);
  } else {
    out.half.resize(total);
  }
  int64_t row = 0;
  for (const Located* p : parts) {
    MESA_RETURN_IF_ERROR(CopyAs(*p, type, out, row * out.cols));
    row += p->info->shape[0];
  }
  return out;
}

absl::StatusOr<std::vector<float>> ToFloat(const Located& t) {
  std::vector<float> v(static_cast<size_t>(t.info->num_elements()));
  MESA_RETURN_IF_ERROR(CopyTensorToFloat(*t.file, *t.info, absl::MakeSpan(v)));
  return v;
}

// A parameter the model holds in its compute dtype: the values it computes with.
absl::StatusOr<std::vector<float>> ToModelFloat(const Located& t, ScalarType type) {
  MESA_ASSIGN_OR_RETURN(std::vector<float> v, ToFloat(t));
  const Rounding r = RoundingFor(type);
  for (float& x : v) x = ApplyRounding(x, r);
  return v;
}

}  // namespace

float SoftplusTorch(float x) { return x > 20.0f ? x : std::log1p(std::exp(x)); }

size_t MesaWeights::bytes() const {
  size_t total = embeddings.bytes() + lm_head.bytes() + final_norm.size() * sizeof(float);
  for (const MesaLayerWeights& l : layers) {
    total += l.in_proj.bytes() + l.o_proj.bytes() + l.gate_up.bytes() + l.down.bytes();
    total += (l.attn_norm.size() + l.a_bias.size() + l.b_bias.size() + l.lambda.size() +
              l.q_conv.size() + l.k_conv.size() + l.o_norm.size() + l.mlp_norm.size()) *
             sizeof(float);
  }
  return total;
}

std::vector<ExpectedTensor> ExpectedMesaTensors(const MesaConfig& c) {
  const int64_t d = c.hidden_size, dk = c.key_dim(), h = c.num_heads, k = c.head_dim;
  const int64_t w = c.conv_size, inter = c.intermediate_size, vocab = c.vocab_size;
  std::vector<ExpectedTensor> t;
  t.push_back({"model.embeddings.weight", {vocab, d}});
  t.push_back({"model.norm.weight", {d}});
  t.push_back({"lm_head.weight", {vocab, d}, !c.tie_word_embeddings});
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".");
    t.push_back({p + "attn_norm.weight", {d}});
    t.push_back({p + "attn.q_proj.weight", {dk, d}});
    t.push_back({p + "attn.k_proj.weight", {dk, d}});
    t.push_back({p + "attn.v_proj.weight", {dk, d}});
    if (c.use_output_gate) t.push_back({p + "attn.g_proj.weight", {dk, d}});
    t.push_back({p + "attn.a_proj.weight", {h, d}});
    t.push_back({p + "attn.a_proj.bias", {h}});
    t.push_back({p + "attn.b_proj.weight", {h, d}});
    t.push_back({p + "attn.b_proj.bias", {h}});
    t.push_back({p + "attn.lambda_params", {dk}});
    t.push_back({p + "attn.q_conv1d.weight", {dk, 1, w}});
    t.push_back({p + "attn.k_conv1d.weight", {dk, 1, w}});
    t.push_back({p + "attn.o_norm.weight", {k}});
    t.push_back({p + "attn.o_proj.weight", {d, dk}});
    t.push_back({p + "mlp_norm.weight", {d}});
    t.push_back({p + "mlp.gate_proj.weight", {inter, d}});
    t.push_back({p + "mlp.up_proj.weight", {inter, d}});
    t.push_back({p + "mlp.down_proj.weight", {d, inter}});
  }
  return t;
}

absl::StatusOr<std::vector<fs::path>> ListWeightFiles(const fs::path& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrCat(dir.string(), ": not a directory"));
  }
  const fs::path index_path = dir / kIndexFile;
  std::vector<fs::path> files;
  if (fs::exists(index_path, ec)) {
    MESA_ASSIGN_OR_RETURN(std::string text, ReadFileToString(index_path, 64u << 20));
    Json index;
    try {
      index = Json::parse(text);
    } catch (const Json::exception& e) {  // parse_error; out_of_range for numbers past double
      return absl::InvalidArgumentError(absl::StrCat(index_path.string(), ": malformed JSON: ", e.what()));
    }
    auto map_it = index.is_object() ? index.find("weight_map") : index.end();
    if (map_it == index.end() || !map_it->is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path.string(), ": expected an object field 'weight_map'"));
    }
    std::set<std::string> names;
    for (auto it = map_it->begin(); it != map_it->end(); ++it) {
      if (!it->is_string()) {
        return absl::InvalidArgumentError(absl::StrCat(index_path.string(), ": weight_map['",
                                                       it.key(), "'] is not a file name"));
      }
      const std::string file = it->get<std::string>();
      // Shards live next to the index: refuse paths that could point elsewhere.
      if (file.empty() || file.find('/') != std::string::npos || file == "." || file == "..") {
        return absl::InvalidArgumentError(absl::StrCat(index_path.string(), ": weight_map['",
                                                       it.key(), "'] = '", file,
                                                       "' is not a plain file name"));
      }
      names.insert(file);
    }
    for (const std::string& n : names) {
      if (!fs::exists(dir / n, ec)) {
        return absl::NotFoundError(absl::StrCat(index_path.string(), " names shard '", n,
                                                "', which does not exist in ", dir.string()));
      }
      files.push_back(dir / n);
    }
    return files;
  }
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    if (entry.path().extension() == ".safetensors") files.push_back(entry.path());
  }
  if (ec) return absl::NotFoundError(absl::StrCat(dir.string(), ": cannot list: ", ec.message()));
  std::sort(files.begin(), files.end());
  if (files.empty()) {
    return absl::NotFoundError(absl::StrCat(dir.string(), ": no *.safetensors file and no ",
                                            kIndexFile));
  }
  return files;
}

absl::StatusOr<MesaWeights> LoadMesaWeights(const fs::path& dir) {
  MESA_ASSIGN_OR_RETURN(MesaConfig config, LoadMesaConfig(dir / "config.json"));
  MESA_ASSIGN_OR_RETURN(std::vector<fs::path> paths, ListWeightFiles(dir));
  TensorSource source;
  MESA_RETURN_IF_ERROR(source.Open(paths));

  // Names first (missing and unexpected), then shapes and dtypes, all before converting.
  const std::vector<ExpectedTensor> expected = ExpectedMesaTensors(config);
  std::set<std::string> expected_names;
  std::vector<std::string> missing;
  for (const ExpectedTensor& e : expected) {
    expected_names.insert(e.name);
    if (e.required && source.Find(e.name) == nullptr) missing.push_back(e.name);
  }
  if (!missing.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(dir.string(), ": missing ", missing.size(),
                                                   " tensor(s) that config.json requires: ",
                                                   NameList(missing)));
  }
  std::vector<std::string> extra;
  for (const auto& [name, located] : source.all()) {
    if (!expected_names.count(name)) extra.push_back(absl::StrCat(name, " (", located.file->display_name(), ")"));
  }
  if (!extra.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        dir.string(), ": ", extra.size(), " unexpected tensor(s) for this config.json: ",
        NameList(extra), "; check use_output_gate, num_hidden_layers and the fla version"));
  }
  for (const ExpectedTensor& e : expected) {
    const Located* t = source.Find(e.name);
    if (t == nullptr) continue;
    if (t->info->shape != e.shape) {
      return absl::InvalidArgumentError(absl::StrCat(
          t->file->display_name(), ": tensor '", e.name, "' has shape ", ShapeText(t->info->shape),
          "; config.json implies ", ShapeText(e.shape)));
    }
    if (t->info->dtype != DType::kBF16 && t->info->dtype != DType::kF16 &&
        t->info->dtype != DType::kF32) {
      return absl::InvalidArgumentError(absl::StrCat(
          t->file->display_name(), ": tensor '", e.name, "' has dtype ", DTypeName(t->info->dtype),
          "; supported are BF16, F16 and F32"));
    }
  }

  MesaWeights w;
  w.config = config;
  auto get = [&](const std::string& name) { return source.Find(name); };
  const ScalarType dt = config.dtype;
  MESA_ASSIGN_OR_RETURN(w.embeddings, ToMatrix({get("model.embeddings.weight")}, dt));
  MESA_ASSIGN_OR_RETURN(w.final_norm, ToModelFloat(*get("model.norm.weight"), dt));
  if (!config.tie_word_embeddings) {
    MESA_ASSIGN_OR_RETURN(w.lm_head, ToMatrix({get("lm_head.weight")}, dt));
  }
  for (int i = 0; i < config.num_hidden_layers; ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".");
    MesaLayerWeights l;
    MESA_ASSIGN_OR_RETURN(l.attn_norm, ToModelFloat(*get(p + "attn_norm.weight"), dt));
    std::vector<const Located*> in_parts = {get(p + "attn.q_proj.weight"),
                                            get(p + "attn.k_proj.weight"),
                                            get(p + "attn.v_proj.weight")};
    if (config.use_output_gate) in_parts.push_back(get(p + "attn.g_proj.weight"));
    in_parts.push_back(get(p + "attn.a_proj.weight"));
    in_parts.push_back(get(p + "attn.b_proj.weight"));
    MESA_ASSIGN_OR_RETURN(l.in_proj, ToMatrix(in_parts, dt));
    MESA_ASSIGN_OR_RETURN(l.a_bias, ToModelFloat(*get(p + "attn.a_proj.bias"), dt));
    MESA_ASSIGN_OR_RETURN(l.b_bias, ToModelFloat(*get(p + "attn.b_proj.bias"), dt));
    MESA_ASSIGN_OR_RETURN(std::vector<float> lambda_params, ToFloat(*get(p + "attn.lambda_params")));
    l.lambda.resize(lambda_params.size());
    for (size_t j = 0; j < lambda_params.size(); ++j) {
      l.lambda[j] = SoftplusTorch(lambda_params[j]) + config.lambda_lower_bound;
    }
    MESA_ASSIGN_OR_RETURN(l.q_conv, ToModelFloat(*get(p + "attn.q_conv1d.weight"), dt));
    MESA_ASSIGN_OR_RETURN(l.k_conv, ToModelFloat(*get(p + "attn.k_conv1d.weight"), dt));
    // fla creates the gate-less o_norm weight (like lambda_params) in fp32 and keeps it there.
    if (config.use_output_gate) {
      MESA_ASSIGN_OR_RETURN(l.o_norm, ToModelFloat(*get(p + "attn.o_norm.weight"), dt));
    } else {
      MESA_ASSIGN_OR_RETURN(l.o_norm, ToFloat(*get(p + "attn.o_norm.weight")));
    }
    MESA_ASSIGN_OR_RETURN(l.o_proj, ToMatrix({get(p + "attn.o_proj.weight")}, dt));
    MESA_ASSIGN_OR_RETURN(l.mlp_norm, ToModelFloat(*get(p + "mlp_norm.weight"), dt));
    MESA_ASSIGN_OR_RETURN(l.gate_up, ToMatrix({get(p + "mlp.gate_proj.weight"), get(p + "mlp.up_proj.weight")}, dt));
    MESA_ASSIGN_OR_RETURN(l.down, ToMatrix({get(p + "mlp.down_proj.weight")}, dt));
    w.layers.push_back(std::move(l));
  }
  return w;
}

}  // namespace mesa
