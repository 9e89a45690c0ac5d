#include "cli/model_setup.h"

#include <omp.h>

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "base/log.h"
#include "base/status_macros.h"
#include "engine/runner_factory.h"
#include "models/checkpoint.h"

namespace mesa::cli {

std::string DefaultModelDir() {
  if (const char* env = std::getenv("MESA_MODEL_DIR"); env != nullptr && *env != '\0') return env;
  return MESA_DEFAULT_MODEL_DIR;
}

void AddModelFlags(FlagSet& flags, ModelFlags* v) {
  if (v->model.empty()) v->model = DefaultModelDir();
  if (v->cg_mode.empty()) v->cg_mode = CgModeName(kDefaultCgMode);
  flags.String("model", &v->model, "model directory (config.json, *.safetensors, tokenizer.model)");
  flags.String("cg-mode", &v->cg_mode, "conjugate-gradient mode: adaptive or fixed (fla-compatible)");
  flags.Float("cg-tol", &v->cg_tol, "adaptive mode: stop when |r|/|q| falls below this");
  flags.Int("cg-max-iters", &v->cg_max_iters,
            "CG iteration cap (fixed mode: exact count); 0 = the model's max_cg_step_* values");
  flags.Int("threads", &v->threads, "CPU threads; 0 = all cores");
  if (v->device.empty()) v->device = "auto";
  flags.String("device", &v->device,
               "model backend: auto (CUDA when this build has it and a GPU is present), cpu or cuda");
}

absl::StatusOr<LoadedModel> LoadModel(const ModelFlags& flags, bool need_tokenizer,
                                      int32_t num_slots) {
  LoadedModel out;
  MESA_ASSIGN_OR_RETURN(out.cg.mode, ParseCgMode(flags.cg_mode));
  out.cg.tol = static_cast<float>(flags.cg_tol);
  if (flags.cg_max_iters < 0 || flags.cg_max_iters > kMaxCgIters) {
    return absl::InvalidArgumentError(absl::StrCat("--cg-max-iters ", flags.cg_max_iters,
                                                   " is outside [0, ", kMaxCgIters, "]"));
  }
  out.cg.max_iters = static_cast<int32_t>(flags.cg_max_iters);
  MESA_RETURN_IF_ERROR(ValidateCgSettings(out.cg));
  if (flags.threads < 0 || flags.threads > 1024) {
    return absl::InvalidArgumentError(absl::StrCat("--threads ", flags.threads, " is outside [0, 1024]"));
  }
  if (flags.threads > 0) omp_set_num_threads(static_cast<int>(flags.threads));

  const std::filesystem::path dir(flags.model);
  MESA_ASSIGN_OR_RETURN(MesaWeights weights, LoadMesaWeights(dir));
  const int32_t vocab = weights.config.vocab_size;
  const std::filesystem::path tok_path = dir / "tokenizer.model";
  if (need_tokenizer || std::filesystem::exists(tok_path)) {
    if (!std::filesystem::exists(tok_path)) {
      return absl::NotFoundError(absl::StrCat(
          dir.string(), ": no tokenizer.model; this command needs one (the 'logits' command "
                        "takes token ids and works without it)"));
    }
    MESA_ASSIGN_OR_RETURN(out.tokenizer, Tokenizer::Load(tok_path, vocab));
  }
  RunnerSpec spec;
  MESA_ASSIGN_OR_RETURN(spec.device, ParseDevice(flags.device));
  spec.num_slots = num_slots;
  MESA_ASSIGN_OR_RETURN(out.runner, CreateModelRunner(std::move(weights), spec));
  MESA_LOG(DEBUG) << "loaded " << dir.string() << ": " << out.runner->weight_bytes()
                  << " weight bytes, " << out.runner->state_bytes_per_slot() << " state bytes/slot";
  return out;
}

}  // namespace mesa::cli
