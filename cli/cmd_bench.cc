// mesaserve bench: engine-only speed of a model on this machine, against the floor set by
// memory bandwidth (every weight byte and every state byte must cross the memory bus once per
// decode step).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "cli/commands.h"
#include "cli/engine_load.h"
#include "cli/model_setup.h"

namespace mesa::cli {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Device-to-device style copy bandwidth (bytes read + bytes written per second) of a buffer
// much larger than the caches, median of several runs.
double MeasureCopyBandwidth(size_t bytes) {
  std::unique_ptr<char[]> src(new char[bytes]), dst(new char[bytes]);
  std::memset(src.get(), 1, bytes);
  std::memset(dst.get(), 2, bytes);
  std::vector<double> rates;
  for (int i = 0; i < 7; ++i) {
    const auto t0 = Clock::now();
#pragma omp parallel for schedule(static)
    for (int64_t chunk = 0; chunk < 64; ++chunk) {
      const size_t per = bytes / 64;
      std::memcpy(dst.get() + chunk * per, src.get() + chunk * per, per);
    }
    rates.push_back(2.0 * static_cast<double>(bytes) / Seconds(t0, Clock::now()));
  }
  std::sort(rates.begin(), rates.end());
  return rates[rates.size() / 2];
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int RunBench(const std::vector<std::string>& args) {
  mesa::FlagSet flags("bench",
                "Engine-only speed on this machine: memory-copy bandwidth, decode step latency at\n"
                "several batch sizes and prefill throughput, each against the bandwidth floor.");
  ModelFlags model_flags;
  // The CPU engine's bench (its floor is the host's copy bandwidth); the GPU has its own
  // benches (tools/bench, docs/benchmarks.md).
  model_flags.device = "cpu";
  std::string batches = "1,4,8";
  int64_t steps = 32, prefill_tokens = 512, copy_mb = 1024, context = 128;
  std::string engine_concurrency;
  int64_t load_requests = 0, load_prompt = 32, load_new = 64;
  bool pipeline_decode = true;
  AddModelFlags(flags, &model_flags);
  flags.String("batches", &batches, "decode batch sizes to time, comma-separated");
  flags.Int("steps", &steps, "decode steps timed per batch size");
  flags.Int("context", &context, "tokens prefilled into each sequence before decode is timed");
  flags.Int("prefill-tokens", &prefill_tokens, "prompt length for the prefill timing");
  flags.Int("copy-mb", &copy_mb, "buffer size for the copy-bandwidth measurement (MiB)");
  flags.String("engine-concurrency", &engine_concurrency,
               "also run the serving engine in-process with these closed-loop concurrencies, "
               "e.g. 1,4,8 (the engine-only baseline for the server)");
  flags.Int("load-requests", &load_requests, "requests per concurrency level; 0 = 25 x concurrency");
  flags.Int("load-prompt-tokens", &load_prompt, "prompt length of the engine load");
  flags.Int("load-new-tokens", &load_new, "generated tokens per request of the engine load");
  flags.Bool("pipeline-decode", &pipeline_decode,
             "the engine load starts each decode step before handling the previous one's tokens "
             "(serve's --pipeline-decode)");
  int64_t prefill_interval = 1;
  double engine_rate = 0.0;
  flags.Float("engine-rate", &engine_rate,
              "open loop: the engine load's requests arrive at this many per second (Poisson); each "
              "--engine-concurrency value is then the slot count, and a request that finds the "
              "waiting queue (twice the slots) full is shed; 0 = closed loop");
  flags.Int("prefill-interval", &prefill_interval,
            "the engine load prefills new prompts at most every this many steps while others "
            "decode (serve's --prefill-interval)");
  if (absl::Status s = flags.Parse(args); !s.ok()) return Fail(std::string(s.message()));
  if (flags.help_requested()) {
    std::fputs(flags.Usage().c_str(), stdout);
    return 0;
  }
  std::vector<int32_t> batch_sizes;
  for (absl::string_view part : absl::StrSplit(batches, ',', absl::SkipWhitespace())) {
    int32_t b = 0;
    if (!absl::SimpleAtoi(part, &b) || b < 1 || b > 4096) {
      return Fail(absl::StrFormat("--batches: '%s' is not a batch size in [1, 4096]", std::string(part)));
    }
    batch_sizes.push_back(b);
  }
  if (steps < 1 || prefill_tokens < 1 || copy_mb < 16 || context < 1) {
    return Fail("--steps, --context and --prefill-tokens must be positive and --copy-mb at least 16");
  }
  const int32_t max_batch =
      batch_sizes.empty() ? 1 : *std::max_element(batch_sizes.begin(), batch_sizes.end());
  auto loaded = LoadModel(model_flags, /*need_tokenizer=*/false, max_batch);
  if (!loaded.ok()) return Fail(std::string(loaded.status().message()));
  ModelRunner& runner = *loaded->runner;
  const MesaConfig& config = runner.config();

  const double weight_bytes = static_cast<double>(runner.weight_bytes());
  const double state_bytes = static_cast<double>(runner.state_bytes_per_slot());
  std::printf("model %s: %.1f MB of weights, %.2f MB of state per sequence, backend %s\n",
              model_flags.model.c_str(), weight_bytes / 1e6, state_bytes / 1e6, runner.backend_name());
  std::printf("CG: mode %s, tol %g, cap %d\n\n", CgModeName(loaded->cg.mode), loaded->cg.tol,
              DecodeCgControl(loaded->cg, config).max_iters);
  // The engine load runs first: its engine thread must not share the cores with OpenMP workers
  // left over from this thread's earlier parallel regions (seen to cost 2x).
  if (!engine_concurrency.empty()) {
    if (!(engine_rate >= 0.0 && engine_rate <= 1e6)) {
      return Fail(absl::StrFormat("--engine-rate %g is outside [0, 1e6]", engine_rate));
    }
    const bool open_loop = engine_rate > 0.0;
    std::printf("engine load (prompt %lld, %lld new tokens, %s, %s)\n%-12s %10s %12s %12s %8s\n",
                static_cast<long long>(load_prompt), static_cast<long long>(load_new),
                open_loop ? absl::StrFormat("open loop at %g requests/s", engine_rate).c_str()
                          : "closed loop",
                loaded->tokenizer ? "detokenized" : "no tokenizer", open_loop ? "slots" : "concurrency",
                "requests", "requests/s", "tokens/s", "shed");
    for (absl::string_view part : absl::StrSplit(engine_concurrency, ',', absl::SkipWhitespace())) {
      int32_t c = 0;
      if (!absl::SimpleAtoi(part, &c) || c < 1 || c > 4096) {
        return Fail(absl::StrFormat("--engine-concurrency: '%s' is not in [1, 4096]", std::string(part)));
      }
      auto fresh = LoadModel(model_flags, /*need_tokenizer=*/false, c);
      if (!fresh.ok()) return Fail(std::string(fresh.status().message()));
      const int32_t n = load_requests > 0 ? static_cast<int32_t>(load_requests) : 25 * c;
      // With the model's tokenizer, if it has one: the server's engine detokenizes every token.
      EngineLoadOptions lo;
      lo.concurrency = c;
      lo.requests = n;
      lo.prompt_tokens = static_cast<int32_t>(load_prompt);
      lo.max_new_tokens = static_cast<int32_t>(load_new);
      lo.pipeline_decode = pipeline_decode;
      lo.prefill_interval = static_cast<int32_t>(prefill_interval);
      lo.rate = engine_rate;
      auto r = RunEngineLoad(std::move(fresh->runner), fresh->tokenizer.get(), fresh->cg, lo);
      if (!r.ok()) return Fail(std::string(r.status().message()));
      // Requests and tokens of those that ended OK (all of them in the closed loop).
      std::printf("%-12d %10lld %12.2f %12.1f %8lld\n", c, static_cast<long long>(r->requests),
                  r->requests / r->seconds, r->tokens / r->seconds, static_cast<long long>(r->shed));
    }
    std::printf("\n");
  }
  const double bandwidth = MeasureCopyBandwidth(static_cast<size_t>(copy_mb) << 20);
  std::printf("memory copy bandwidth (read + write): %.1f GB/s (%lld MiB buffers)\n\n",
              bandwidth / 1e9, static_cast<long long>(copy_mb));

  std::mt19937 rng(1);
  std::uniform_int_distribution<int32_t> token(3, config.vocab_size - 1);
  std::printf("%-10s %12s %12s %12s %10s\n", "decode", "ms/step", "tokens/s", "floor ms", "x floor");
  for (int32_t b : batch_sizes) {
    for (int32_t s = 0; s < b; ++s) {
      if (absl::Status st = runner.ResetSlot(s); !st.ok()) return Fail(std::string(st.message()));
      std::vector<int32_t> prompt(context);
      for (int32_t& t : prompt) t = token(rng);
      PrefillRequest req;
      req.slot = s;
      req.tokens = prompt;
      req.cg = PrefillCgControl(loaded->cg, config);
      PrefillResult res;
      if (absl::Status st = runner.Prefill({&req, 1}, {&res, 1}); !st.ok()) return Fail(std::string(st.message()));
    }
    std::vector<DecodeRow> rows(b);
    for (int32_t s = 0; s < b; ++s) rows[s] = {s, token(rng), DecodeCgControl(loaded->cg, config)};
    DecodeResult out;
    std::vector<double> times;
    for (int64_t i = 0; i < steps + 3; ++i) {
      const auto t0 = Clock::now();
      if (absl::Status st = runner.Decode(rows, &out); !st.ok()) return Fail(std::string(st.message()));
      if (i >= 3) times.push_back(Seconds(t0, Clock::now()));
      for (DecodeRow& r : rows) r.token = token(rng);
    }
    const double ms = Median(times) * 1e3;
    // Floor: weights read once, each sequence's state read and written once.
    const double floor_ms = (weight_bytes + 2.0 * state_bytes * b) / bandwidth * 1e3;
    std::printf("B=%-8d %12.3f %12.1f %12.3f %10.2f\n", b, ms, b * 1e3 / ms, floor_ms, ms / floor_ms);
  }

  std::vector<int32_t> prompt(prefill_tokens);
  for (int32_t& t : prompt) t = token(rng);
  std::vector<double> times;
  for (int i = 0; i < 3; ++i) {
    if (absl::Status st = runner.ResetSlot(0); !st.ok()) return Fail(std::string(st.message()));
    PrefillRequest req;
    req.slot = 0;
    req.tokens = prompt;
    req.cg = PrefillCgControl(loaded->cg, config);
    PrefillResult res;
    const auto t0 = Clock::now();
    if (absl::Status st = runner.Prefill({&req, 1}, {&res, 1}); !st.ok()) return Fail(std::string(st.message()));
    times.push_back(Seconds(t0, Clock::now()));
  }
  const double s = Median(times);
  std::printf("\nprefill T=%lld: %.3f s, %.1f tokens/s\n", static_cast<long long>(prefill_tokens), s,
              prefill_tokens / s);

  return 0;
}

}  // namespace mesa::cli
