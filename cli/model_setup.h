// Flags and loading shared by the subcommands that run a model.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "base/flags.h"
#include "engine/cg_settings.h"
#include "engine/model_runner.h"
#include "models/tokenizer.h"

namespace mesa::cli {

struct ModelFlags {
  std::string model;          // model directory
  std::string cg_mode;        // fixed | adaptive
  double cg_tol = kDefaultCgTol;
  int64_t cg_max_iters = 0;
  int64_t threads = 0;        // 0 = all cores
  std::string device;         // auto | cpu | cuda (default auto)
};

void AddModelFlags(FlagSet& flags, ModelFlags* values);

struct LoadedModel {
  std::unique_ptr<ModelRunner> runner;
  std::unique_ptr<Tokenizer> tokenizer;  // null when not requested and absent
  CgSettings cg;
};

// Loads weights (and tokenizer.model when `need_tokenizer`, or when present).
absl::StatusOr<LoadedModel> LoadModel(const ModelFlags& flags, bool need_tokenizer,
                                      int32_t num_slots);

std::string DefaultModelDir();

}  // namespace mesa::cli
