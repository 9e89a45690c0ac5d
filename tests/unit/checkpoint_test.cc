// Loading fla checkpoint directories: the happy paths (single file, shards, tied embeddings,
// mixed dtypes) and every failure class, each asserting what the error message names.
#include <cmath>
#include <fstream>
#include <functional>
#include <set>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "models/checkpoint.h"
#include "models/safetensors.h"
#include "models/safetensors_writer.h"
#include "nlohmann/json.hpp"
#include "tests/testing/random_checkpoint.h"

namespace mesa {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::HasSubstr;

void WriteText(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

std::string ReadText(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Rewrites model.safetensors through `edit`, which may add, replace or drop tensors.
void EditWeights(const fs::path& dir, const std::function<void(SafetensorsWriter&, const SafetensorsFile&)>& edit,
                 const std::set<std::string>& drop = {}) {
  auto file = SafetensorsFile::Open(dir / "model.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  SafetensorsWriter w;
  for (const TensorInfo& t : file->tensors()) {
    if (drop.count(t.name)) continue;
    auto data = file->Data(t);
    w.Add(t.name, t.dtype, t.shape, std::vector<uint8_t>(data.begin(), data.end()));
  }
  edit(w, *file);
  // Write through a new name first: the old file is still mapped.
  ASSERT_TRUE(w.WriteFile(dir / "model.safetensors.new").ok());
  fs::rename(dir / "model.safetensors.new", dir / "model.safetensors");
}

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::MakeTempDir(::testing::UnitTest::GetInstance()->current_test_info()->name());
    config_ = testing::TinyConfig();
  }
  void Write() { ASSERT_TRUE(testing::WriteRandomCheckpoint(dir_, config_).ok()); }
  absl::Status Load() { return LoadMesaWeights(dir_).status(); }

  fs::path dir_;
  MesaConfig config_;
};

TEST_F(CheckpointTest, LoadsAValidCheckpoint) {
  Write();
  auto w = LoadMesaWeights(dir_);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->layers.size(), 2u);
  const InProjLayout layout = InProjLayout::For(config_);
  EXPECT_EQ(w->layers[0].in_proj.rows, layout.rows);
  EXPECT_EQ(w->layers[0].in_proj.rows, 3 * 64 + 2 * 4);
  EXPECT_EQ(w->layers[0].gate_up.rows, 2 * 128);
  EXPECT_EQ(w->lm_head.rows, 97);
  for (float l : w->layers[1].lambda) EXPECT_GT(l, config_.lambda_lower_bound);
}

TEST_F(CheckpointTest, LambdaIsSoftplusPlusLowerBoundInFp32) {
  config_.lambda_lower_bound = 0.5f;
  Write();
  EditWeights(dir_, [&](SafetensorsWriter& w, const SafetensorsFile&) {
    std::vector<float> params(64, 0.0f);
    params[0] = -30.0f;  // softplus underflows to ~0
    params[1] = 25.0f;   // above PyTorch's threshold: identity
    params[2] = 0.110647f;
    w.AddFloat32("model.layers.0.attn.lambda_params", {64}, params);
  });
  auto w = LoadMesaWeights(dir_);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_NEAR(w->layers[0].lambda[0], 0.5f, 1e-7);
  EXPECT_EQ(w->layers[0].lambda[1], 25.5f);
  EXPECT_NEAR(w->layers[0].lambda[2], 0.75f + 0.5f, 1e-5);  // fla's init value gives lambda = 1 at bound 0.25
  EXPECT_NEAR(w->layers[0].lambda[3], std::log(2.0f) + 0.5f, 1e-6);
}

TEST_F(CheckpointTest, TiedEmbeddingsNeedNoLmHead) {
  config_.tie_word_embeddings = true;
  Write();
  auto w = LoadMesaWeights(dir_);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_TRUE(w->lm_head.empty());
  EXPECT_EQ(&w->output_matrix(), &w->embeddings);
}

TEST_F(CheckpointTest, LoadsShardedCheckpointThroughIndex) {
  Write();
  auto file = SafetensorsFile::Open(dir_ / "model.safetensors");
  ASSERT_TRUE(file.ok());
  SafetensorsWriter a, b;
  nlohmann::json index;
  int i = 0;
  for (const TensorInfo& t : file->tensors()) {
    auto data = file->Data(t);
    SafetensorsWriter& w = (i++ % 2 == 0) ? a : b;
    w.Add(t.name, t.dtype, t.shape, std::vector<uint8_t>(data.begin(), data.end()));
    index["weight_map"][t.name] = (&w == &a) ? "model-00001-of-00002.safetensors"
                                             : "model-00002-of-00002.safetensors";
  }
  ASSERT_TRUE(a.WriteFile(dir_ / "model-00001-of-00002.safetensors").ok());
  ASSERT_TRUE(b.WriteFile(dir_ / "model-00002-of-00002.safetensors").ok());
  fs::remove(dir_ / "model.safetensors");
  WriteText(dir_ / "model.safetensors.index.json", index.dump());
  auto w = LoadMesaWeights(dir_);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->layers.size(), 2u);

  // An index naming a shard that is not there.
  index["weight_map"]["model.norm.weight"] = "model-00003-of-00002.safetensors";
  WriteText(dir_ / "model.safetensors.index.json", index.dump());
  EXPECT_THAT(std::string(Load().message()),
              AllOf(HasSubstr("model-00003-of-00002.safetensors"), HasSubstr("does not exist")));
  // An index pointing outside the directory.
  index["weight_map"]["model.norm.weight"] = "../elsewhere.safetensors";
  WriteText(dir_ / "model.safetensors.index.json", index.dump());
  EXPECT_THAT(std::string(Load().message()), HasSubstr("not a plain file name"));
  WriteText(dir_ / "model.safetensors.index.json", "{\"weight_map\": 3}");
  EXPECT_THAT(std::string(Load().message()), HasSubstr("weight_map"));
}

TEST_F(CheckpointTest, MissingTensorIsNamed) {
  Write();
  EditWeights(dir_, [](SafetensorsWriter&, const SafetensorsFile&) {},
              {"model.layers.1.attn.k_conv1d.weight"});
  const absl::Status s = Load();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()),
              AllOf(HasSubstr("missing 1 tensor"), HasSubstr("model.layers.1.attn.k_conv1d.weight")));
}

TEST_F(CheckpointTest, UnexpectedTensorIsNamed) {
  Write();
  EditWeights(dir_, [](SafetensorsWriter& w, const SafetensorsFile&) {
    w.AddBf16("model.layers.0.attn.g_proj.weight", {64, 64}, std::vector<float>(64 * 64, 0.1f));
  });
  EXPECT_THAT(std::string(Load().message()),
              AllOf(HasSubstr("unexpected tensor"), HasSubstr("model.layers.0.attn.g_proj.weight"),
                    HasSubstr("use_output_gate")));
}

TEST_F(CheckpointTest, WrongShapeNamesExpectedAndFound) {
  Write();
  EditWeights(dir_, [](SafetensorsWriter& w, const SafetensorsFile&) {
    w.AddBf16("model.layers.0.mlp.down_proj.weight", {64, 100}, std::vector<float>(6400, 0.1f));
  });
  EXPECT_THAT(std::string(Load().message()),
              AllOf(HasSubstr("model.safetensors"), HasSubstr("model.layers.0.mlp.down_proj.weight"),
                    HasSubstr("[64, 100]"), HasSubstr("[64, 128]")));
}

TEST_F(CheckpointTest, UnsupportedDtypeIsNamed) {
  Write();
  EditWeights(dir_, [](SafetensorsWriter& w, const SafetensorsFile&) {
    w.Add("model.norm.weight", DType::kI32, {64}, std::vector<uint8_t>(256, 0));
  });
  EXPECT_THAT(std::string(Load().message()),
              AllOf(HasSubstr("model.norm.weight"), HasSubstr("I32"), HasSubstr("BF16")));
}

TEST_F(CheckpointTest, Fp16AndFp32WeightsAreAccepted) {
  Write();
  EditWeights(dir_, [](SafetensorsWriter& w, const SafetensorsFile&) {
    w.AddFloat16("model.norm.weight", {64}, std::vector<float>(64, 1.5f));
    w.AddFloat32("model.layers.0.attn_norm.weight", {64}, std::vector<float>(64, 0.75f));
  });
  auto w = LoadMesaWeights(dir_);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->final_norm[3], 1.5f);
  EXPECT_EQ(w->layers[0].attn_norm[5], 0.75f);
}

TEST_F(CheckpointTest, TruncatedWeightsFileIsAnError) {
  Write();
  const std::string bytes = ReadText(dir_ / "model.safetensors");
  WriteText(dir_ / "model.safetensors", bytes.substr(0, bytes.size() - 100));
  const absl::Status s = Load();
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), HasSubstr("model.safetensors"));
}

TEST_F(CheckpointTest, MalformedHeaderIsAnError) {
  Write();
  WriteText(dir_ / "model.safetensors", std::string("\x10\0\0\0\0\0\0\0{not json at all", 24));
  const absl::Status s = Load();
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), HasSubstr("model.safetensors"));
}

TEST_F(CheckpointTest, NoWeightsAtAll) {
  ASSERT_TRUE(testing::WriteConfigJson(dir_ / "config.json", config_).ok());
  EXPECT_THAT(std::string(Load().message()), HasSubstr("no *.safetensors"));
}

TEST_F(CheckpointTest, MissingConfigIsNamed) {
  Write();
  fs::remove(dir_ / "config.json");
  const absl::Status s = Load();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(s.message()), HasSubstr("config.json"));
}

TEST_F(CheckpointTest, NotADirectory) {
  EXPECT_THAT(std::string(LoadMesaWeights(dir_ / "nope").status().message()),
              HasSubstr("config.json"));
}

// config.json parsing.

struct ConfigCase {
  std::string name;
  std::string json;
  std::vector<std::string> expect;  // substrings of the error
};

class ConfigErrorTest : public ::testing::TestWithParam<ConfigCase> {};

TEST_P(ConfigErrorTest, IsRejectedWithAClearMessage) {
  auto c = ParseMesaConfig(GetParam().json, "config.json");
  ASSERT_FALSE(c.ok());
  for (const std::string& e : GetParam().expect) {
    EXPECT_THAT(std::string(c.status().message()), HasSubstr(e));
  }
}

const char kBase[] = R"("model_type": "mesa_net", "hidden_size": 64, "num_heads": 4, "head_dim": 16, "vocab_size": 100)";

INSTANTIATE_TEST_SUITE_P(
    Cases, ConfigErrorTest,
    ::testing::Values(
        ConfigCase{"malformed", "{\"model_type\": ", {"config.json", "malformed JSON"}},
        ConfigCase{"array", "[1, 2]", {"JSON object"}},
        ConfigCase{"wrong_type", R"({"model_type": "llama"})", {"model_type", "mesa_net", "llama"}},
        ConfigCase{"missing_type", R"({"hidden_size": 64})", {"model_type", "missing"}},
        ConfigCase{"hybrid", std::string("{") + kBase + R"(, "attn": {"layers": [1], "num_heads": 4}})",
                   {"'attn'", "hybrid"}},
        ConfigCase{"attnres", std::string("{") + kBase + R"(, "attnres_block_size": 2})",
                   {"attnres_block_size", "not supported"}},
        ConfigCase{"silu", std::string("{") + kBase + R"(, "hidden_act": "silu"})",
                   {"hidden_act", "swish", "silu"}},
        ConfigCase{"powlu", std::string("{") + kBase + R"(, "hidden_act": "powlu"})", {"powlu"}},
        ConfigCase{"head_dim", R"({"model_type": "mesa_net", "head_dim": 256})",
                   {"head_dim", "256", "128"}},
        ConfigCase{"neg_hidden", R"({"model_type": "mesa_net", "hidden_size": -4})",
                   {"hidden_size", "-4"}},
        ConfigCase{"string_layers", R"({"model_type": "mesa_net", "num_hidden_layers": "24"})",
                   {"num_hidden_layers", "integer", "\"24\""}},
        ConfigCase{"conv", std::string("{") + kBase + R"(, "conv_size": 0})", {"conv_size", "0"}},
        ConfigCase{"eos", std::string("{") + kBase + R"(, "eos_token_id": 100})",
                   {"eos_token_id", "100", "vocabulary"}},
        ConfigCase{"old_gate", std::string("{") + kBase + R"(, "use_gate": true})",
                   {"use_gate", "use_output_gate"}},
        ConfigCase{"old_param", std::string("{") + kBase + R"(, "expand_v": 1})", {"A_log"}},
        ConfigCase{"eps", std::string("{") + kBase + R"(, "norm_eps": -1})", {"norm_eps"}},
        // Found by fuzz_mesa_config: a number past double's range used to escape as an exception.
        ConfigCase{"number_overflow", std::string("{") + kBase + R"(, "bos_token_id": 1e3081})",
                   {"config.json", "malformed JSON", "number overflow"}},
        // Found by fuzz_mesa_config: defaults of absent token ids must fit the vocabulary.
        ConfigCase{"default_bos_outside_vocab", R"({"model_type": "mesa_net", "vocab_size": 1})",
                   {"bos_token_id", "default 1", "[0, 1)"}}),
    [](const auto& info) { return info.param.name; });

TEST(ConfigTest, DefaultsFollowFlaAndIntermediateSizeIsDerived) {
  auto c = ParseMesaConfig(R"({"model_type": "mesa_net"})", "config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->hidden_size, 2048);
  EXPECT_EQ(c->num_hidden_layers, 24);
  EXPECT_EQ(c->intermediate_size, 5632);
  EXPECT_EQ(c->max_cg_step_decoding, 30);
  EXPECT_FLOAT_EQ(c->lambda_lower_bound, 0.25f);
  EXPECT_TRUE(c->fuse_norm);
  // The table of spec 1.2.
  const std::pair<int, int> table[] = {{512, 1536}, {768, 2048}, {1024, 2816}, {1536, 4096},
                                       {2048, 5632}, {2560, 6912}, {3072, 8192}, {4096, 11008}};
  for (auto [d, inter] : table) EXPECT_EQ(DeriveIntermediateSize(d, 4.0), inter) << d;
}

TEST(ConfigTest, EosAsListAndUnknownKeysAreAccepted) {
  auto c = ParseMesaConfig(
      R"({"model_type": "mesa_net", "eos_token_id": [2, 5], "use_short_conv": false, "transformers_version": "4.0", "attn_mode": "chunk"})",
      "config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->eos_token_id, 2);
}

}  // namespace
}  // namespace mesa
