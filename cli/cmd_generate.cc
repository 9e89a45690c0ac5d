// mesaserve generate: prompt in, streamed text out.
#include <chrono>
#include <cstdio>
#include <random>

#include "absl/strings/str_format.h"
#include "cli/cg_summary.h"
#include "cli/commands.h"
#include "cli/model_setup.h"
#include "engine/sampler.h"
#include "models/tokenizer_stream.h"

namespace mesa::cli {

int RunGenerate(const std::vector<std::string>& args) {
  mesa::FlagSet flags("generate", "Generates text from a prompt with the CPU engine and streams it to stdout.");
  ModelFlags model_flags;
  std::string prompt;
  int64_t max_new_tokens = 128, top_k = 0, seed = -1;
  double temperature = 0.8, top_p = 0.95, min_p = 0.0, repetition_penalty = 1.0;
  bool add_bos = true, stats = false, ignore_eos = false;
  AddModelFlags(flags, &model_flags);
  flags.String("prompt", &prompt, "text to continue");
  flags.Int("max-new-tokens", &max_new_tokens, "tokens to generate at most");
  flags.Float("temperature", &temperature, "sampling temperature; 0 = greedy");
  flags.Int("top-k", &top_k, "sample from the k most likely tokens; 0 = off");
  flags.Float("top-p", &top_p, "nucleus sampling mass; 1 = off");
  flags.Float("min-p", &min_p, "drop tokens below min-p times the top probability; 0 = off");
  flags.Float("repetition-penalty", &repetition_penalty, "penalty for tokens already present; 1 = off");
  flags.Int("seed", &seed, "random seed; -1 = random");
  flags.Bool("add-bos", &add_bos, "start the sequence with the model's BOS token");
  flags.Bool("ignore-eos", &ignore_eos, "keep generating after the EOS token");
  flags.Bool("stats", &stats, "print speed and CG statistics to stderr");
  if (absl::Status s = flags.Parse(args); !s.ok()) return Fail(std::string(s.message()));
  if (flags.help_requested()) {
    std::fputs(flags.Usage().c_str(), stdout);
    return 0;
  }
  if (max_new_tokens < 0 || max_new_tokens > 1'000'000) {
    return Fail(absl::StrFormat("--max-new-tokens %d is outside [0, 1000000]", max_new_tokens));
  }
  SamplingParams sp;
  sp.temperature = static_cast<float>(temperature);
  sp.top_k = static_cast<int32_t>(top_k);
  sp.top_p = static_cast<float>(top_p);
  sp.min_p = static_cast<float>(min_p);
  sp.repetition_penalty = static_cast<float>(repetition_penalty);
  sp.seed = seed >= 0 ? static_cast<uint64_t>(seed) : std::random_device{}();
  if (absl::Status s = ValidateSamplingParams(sp); !s.ok()) return Fail(std::string(s.message()));

  auto loaded = LoadModel(model_flags, /*need_tokenizer=*/true, /*num_slots=*/1);
  if (!loaded.ok()) return Fail(std::string(loaded.status().message()));
  ModelRunner& runner = *loaded->runner;
  const Tokenizer& tokenizer = *loaded->tokenizer;
  const MesaConfig& config = runner.config();

  auto encoded = tokenizer.Encode(prompt);
  if (!encoded.ok()) return Fail(std::string(encoded.status().message()));
  std::vector<int32_t> ids;
  if (add_bos) ids.push_back(config.bos_token_id);
  ids.insert(ids.end(), encoded->begin(), encoded->end());
  if (ids.empty()) return Fail("the prompt is empty and --no-add-bos leaves no token to start from");

  Sampler sampler(sp, std::min(config.vocab_size, tokenizer.piece_count()));
  for (int32_t t : ids) sampler.Observe(t);
  StreamDecoder stream(tokenizer, ids);
  std::fputs(prompt.c_str(), stdout);
  std::fflush(stdout);

  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  PrefillRequest req;
  req.slot = 0;
  req.tokens = ids;
  req.cg = PrefillCgControl(loaded->cg, config);
  req.want_stats = stats;
  PrefillResult pre;
  if (absl::Status s = runner.ResetSlot(0); !s.ok()) return Fail(std::string(s.message()));
  if (absl::Status s = runner.Prefill({&req, 1}, {&pre, 1}); !s.ok()) {
    return Fail(std::string(s.message()));
  }
  const auto t1 = Clock::now();
  CgSummary prefill_cg, decode_cg;
  if (stats) prefill_cg.Add(pre.stats, req.cg.max_iters, req.cg.mode == CgMode::kAdaptive);

  std::vector<float> logits = std::move(pre.logits);
  DecodeRow row;
  row.slot = 0;
  row.cg = DecodeCgControl(loaded->cg, config);
  DecodeResult dec;
  int64_t generated = 0;
  while (generated < max_new_tokens) {
    const int32_t token = sampler.Sample(logits);
    ++generated;
    if (token == config.eos_token_id && !ignore_eos) break;
    sampler.Observe(token);
    auto text = stream.Push(token);
    if (!text.ok()) return Fail(std::string(text.status().message()));
    std::fputs(text->c_str(), stdout);
    std::fflush(stdout);
    if (generated == max_new_tokens) break;
    row.token = token;
    if (absl::Status s = runner.Decode({&row, 1}, &dec); !s.ok()) return Fail(std::string(s.message()));
    if (stats) decode_cg.Add(dec.stats, row.cg.max_iters, row.cg.mode == CgMode::kAdaptive);
    logits = std::move(dec.logits);
  }
  auto tail = stream.Flush();
  if (tail.ok()) std::fputs(tail->c_str(), stdout);
  std::fputs("\n", stdout);
  std::fflush(stdout);
  const auto t2 = Clock::now();
  if (stats) {
    const double pre_s = std::chrono::duration<double>(t1 - t0).count();
    const double dec_s = std::chrono::duration<double>(t2 - t1).count();
    std::fprintf(stderr, "prefill: %zu tokens in %.3f s (%.1f tok/s); %s\n", ids.size(), pre_s,
                 ids.size() / pre_s, prefill_cg.Format().c_str());
    std::fprintf(stderr, "decode: %lld tokens in %.3f s (%.1f tok/s); %s\n",
                 static_cast<long long>(generated), dec_s, generated / dec_s,
                 decode_cg.Format().c_str());
  }
  return 0;
}

}  // namespace mesa::cli
