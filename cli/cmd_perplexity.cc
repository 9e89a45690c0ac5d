// mesaserve perplexity: perplexity and CG statistics of a model on a text file.
// The text is tokenized as one sequence ([BOS] + tokens) and cut into consecutive windows of
// --window tokens; each window starts from a fresh state and predicts its tokens 1..n-1.
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>

#include "absl/strings/str_format.h"
#include "base/file_util.h"
#include "cli/cg_histogram.h"
#include "cli/cg_summary.h"
#include "cli/commands.h"
#include "cli/model_setup.h"

namespace mesa::cli {
namespace {

void DrawProgress(int64_t done, int64_t total, double seconds) {
  const int width = 30;
  const int filled = total > 0 ? static_cast<int>(width * done / total) : width;
  std::string bar(filled, '#');
  bar.append(width - filled, '.');
  std::fprintf(stderr, "\r[%s] %lld/%lld tokens, %.0f tok/s", bar.c_str(),
               static_cast<long long>(done), static_cast<long long>(total),
               seconds > 0 ? done / seconds : 0.0);
  std::fflush(stderr);
}

}  // namespace

int RunPerplexity(const std::vector<std::string>& args) {
  mesa::FlagSet flags("perplexity",
                "Perplexity of the model on a UTF-8 text file, with CG-iteration statistics.\n"
                "The file is tokenized as one sequence with BOS in front and evaluated in\n"
                "consecutive windows, each from a fresh state.");
  ModelFlags model_flags;
  std::string file;
  int64_t window = 512, max_tokens = 0;
  std::string report_path;
  bool progress = isatty(STDERR_FILENO);
  AddModelFlags(flags, &model_flags);
  flags.String("file", &file, "text file to evaluate");
  flags.Int("window", &window, "tokens per window (each starts from an empty state)");
  flags.Int("max-tokens", &max_tokens, "evaluate only the first N tokens; 0 = all");
  flags.String("report", &report_path, "write a JSON report (CG iteration distributions by layer and position)");
  flags.Bool("progress", &progress, "draw a progress bar on stderr (default: when stderr is a terminal)");
  if (absl::Status s = flags.Parse(args); !s.ok()) return Fail(std::string(s.message()));
  if (flags.help_requested()) {
    std::fputs(flags.Usage().c_str(), stdout);
    return 0;
  }
  if (file.empty()) return Fail("--file is required");
  if (window < 2 || window > (1 << 24)) return Fail(absl::StrFormat("--window %d is outside [2, 16777216]", window));
  if (max_tokens < 0) return Fail(absl::StrFormat("--max-tokens %d is negative", max_tokens));
  auto text = ReadFileToString(file, 1u << 30);
  if (!text.ok()) return Fail(std::string(text.status().message()));
  auto loaded = LoadModel(model_flags, /*need_tokenizer=*/true, /*num_slots=*/1);
  if (!loaded.ok()) return Fail(std::string(loaded.status().message()));
  ModelRunner& runner = *loaded->runner;
  const MesaConfig& config = runner.config();
  auto encoded = loaded->tokenizer->Encode(*text);
  if (!encoded.ok()) return Fail(std::string(encoded.status().message()));
  std::vector<int32_t> ids = {config.bos_token_id};
  ids.insert(ids.end(), encoded->begin(), encoded->end());
  if (max_tokens > 0 && static_cast<int64_t>(ids.size()) > max_tokens) ids.resize(max_tokens);
  const int64_t total = static_cast<int64_t>(ids.size());
  if (total < 2) return Fail("the file has too little text to evaluate (needs at least one token)");

  const int64_t vocab = config.vocab_size;
  const CgControl cg = PrefillCgControl(loaded->cg, config);
  CgSummary summary;
  CgHistogram histogram(config.num_hidden_layers, cg.max_iters, cg.mode == CgMode::kAdaptive);
  double nll = 0.0;
  int64_t predicted = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t start = 0; start < total; start += window) {
    const int64_t len = std::min(window, total - start);
    if (len < 2) break;
    if (absl::Status s = runner.ResetSlot(0); !s.ok()) return Fail(std::string(s.message()));
    PrefillRequest req;
    req.slot = 0;
    req.tokens = absl::MakeConstSpan(ids.data() + start, len);
    req.cg = cg;
    req.all_logits = true;
    req.want_stats = true;
    PrefillResult res;
    if (absl::Status s = runner.Prefill({&req, 1}, {&res, 1}); !s.ok()) return Fail(std::string(s.message()));
    summary.Add(res.stats, cg.max_iters, cg.mode == CgMode::kAdaptive);
    histogram.Add(res.stats, 0);
    for (int64_t t = 0; t + 1 < len; ++t) {
      const float* row = res.logits.data() + t * vocab;
      float mx = row[0];
      for (int64_t v = 1; v < vocab; ++v) mx = std::max(mx, row[v]);
      double sum = 0.0;
      for (int64_t v = 0; v < vocab; ++v) sum += std::exp(static_cast<double>(row[v] - mx));
      const double log_z = mx + std::log(sum);
      nll += log_z - row[ids[start + t + 1]];
      ++predicted;
    }
    if (progress) {
      DrawProgress(start + len, total,
                   std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (progress) std::fputs("\n", stderr);
  const double mean_nll = nll / static_cast<double>(predicted);
  std::printf("perplexity %.4f (mean NLL %.5f nats) over %lld predicted tokens in windows of %lld\n",
              std::exp(mean_nll), mean_nll, static_cast<long long>(predicted),
              static_cast<long long>(window));
  std::printf("cg mode %s, tol %g, cap %d: %s\n", CgModeName(cg.mode), cg.tol, cg.max_iters,
              summary.Format().c_str());
  std::printf("time %.2f s (%.1f tokens/s)\n", seconds, total / seconds);
  if (!report_path.empty()) {
    nlohmann::json report;
    report["file"] = file;
    report["model"] = model_flags.model;
    report["window"] = window;
    report["tokens"] = total;
    report["predicted_tokens"] = predicted;
    report["mean_nll"] = mean_nll;
    report["perplexity"] = std::exp(mean_nll);
    report["cg_mode"] = CgModeName(cg.mode);
    report["cg_tol"] = cg.tol;
    report["cg_cap"] = cg.max_iters;
    report["seconds"] = seconds;
    report["cg"] = histogram.ToJson();
    std::ofstream out(report_path);
    out << report.dump(1) << "\n";
    if (!out) return Fail("cannot write --report " + report_path);
  }
  return 0;
}

}  // namespace mesa::cli
