// Writes a small random MesaNet model directory (config.json, model.safetensors and, when
// given, a tokenizer.model copy) for the command-line tests.
//   mesa_make_test_model OUT_DIR [TOKENIZER_MODEL] [VOCAB]
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
  const absl::Status s = mesa::testing::WriteRandomCheckpoint(out, config);
  if (!s.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  if (argc > 2) {
    std::filesystem::copy_file(argv[2], out / "tokenizer.model",
                               std::filesystem::copy_options::overwrite_existing);
  }
  return 0;
}
