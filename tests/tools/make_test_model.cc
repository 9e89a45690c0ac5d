// Writes a small random MesaNet model directory (config.json, model.safetensors and, when
// given, a tokenizer.model copy) for the command-line tests.
//   mesa_make_test_model OUT_DIR [TOKENIZER_MODEL] [VOCAB] [HIDDEN LAYERS HEADS HEAD_DIM]
// (an empty TOKENIZER_MODEL argument means none)
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "tests/testing/random_checkpoint.h"

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s OUT_DIR [TOKENIZER_MODEL] [VOCAB]\n", argv[0]);
    return 2;
  }
  const std::filesystem::path out(argv[1]);
  std::filesystem::create_directories(out);
  mesa::MesaConfig config = mesa::testing::TinyConfig();
  config.vocab_size = argc > 3 ? std::atoi(argv[3]) : 400;
  if (argc > 7) {
    config.hidden_size = std::atoi(argv[4]);
    config.num_hidden_layers = std::atoi(argv[5]);
    config.num_heads = std::atoi(argv[6]);
    config.head_dim = std::atoi(argv[7]);
    config.intermediate_size = mesa::DeriveIntermediateSize(config.hidden_size, 4.0);
  }
  const absl::Status s = mesa::testing::WriteRandomCheckpoint(out, config);
  if (!s.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  if (argc > 2 && argv[2][0] != '\0') {
    std::filesystem::copy_file(argv[2], out / "tokenizer.model",
                               std::filesystem::copy_options::overwrite_existing);
  }
  return 0;
}
