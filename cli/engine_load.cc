#include "cli/engine_load.h"

#include <condition_variable>
#include <mutex>
#include <random>
#include <string_view>

#include "base/poisson_arrivals.h"
#include "base/status_macros.h"
#include "engine/engine.h"
#include "server/serve_config.h"

namespace mesa::cli {
namespace {

// Counts tokens and wakes the driver when a request ends.
class CountingSink : public GenerationSink {
 public:
  CountingSink(std::mutex* mu, std::condition_variable* cv, int64_t* tokens, int32_t* done,
               absl::Status* error)
      : mu_(mu), cv_(cv), tokens_(tokens), done_(done), error_(error) {}
  void Push(GenerationEvent event) override {
    std::lock_guard<std::mutex> lock(*mu_);
    *tokens_ += static_cast<int64_t>(event.tokens.size());
    if (event.final) {
      if (!event.status.ok() && error_->ok()) *error_ = event.status;
      ++*done_;
      cv_->notify_all();
    }
  }
  size_t Backlog() const override { return 0; }

 private:
  std::mutex* mu_;
  std::condition_variable* cv_;
  int64_t* tokens_;
  int32_t* done_;
  absl::Status* error_;
};

}  // namespace

absl::StatusOr<EngineLoadResult> RunEngineLoad(std::unique_ptr<ModelRunner> runner,
                                               const Tokenizer* tokenizer, const CgSettings& cg,
                                               const EngineLoadOptions& o) {
  const int32_t vocab = runner->config().vocab_size;
  const bool open_loop = o.rate > 0;
  EngineOptions options;
  options.max_waiting = open_loop ? 2 * runner->num_slots() : o.requests;
  options.pipeline_decode = o.pipeline_decode;
  options.prefill_interval = o.prefill_interval;
  // The server's prefill settings, so that the server is compared with the engine it runs.
  options.prefill_chunk = 0;
  server::ApplyPrefillDefaults(&options, std::string_view(runner->backend_name()) == "cuda");
  MESA_ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine,
                        Engine::Create(std::move(runner), tokenizer, nullptr, options));
  std::mutex mu;
  std::condition_variable cv;
  int64_t tokens = 0;
  int32_t done = 0, submitted = 0, shed = 0;
  absl::Status error;
  std::mt19937 rng(7);
  std::uniform_int_distribution<int32_t> token(3, vocab - 1);
  // Submits the next request; a full queue in the open loop sheds it.
  auto submit = [&]() -> absl::Status {
    GenerationRequest r;
    r.prompt.resize(o.prompt_tokens);
    for (int32_t& t : r.prompt) t = token(rng);
    r.sampling.seed = static_cast<uint64_t>(submitted);
    r.stopping.max_new_tokens = o.max_new_tokens;
    r.stopping.ignore_eos = true;
    r.cg = cg;
    ++submitted;
    absl::Status s =
        engine->Submit(std::move(r), std::make_shared<CountingSink>(&mu, &cv, &tokens, &done, &error))
            .status();
    if (open_loop && absl::IsResourceExhausted(s)) {
      std::lock_guard<std::mutex> lock(mu);
      ++shed;
      ++done;
      return absl::OkStatus();
    }
    return s;
  };
  const absl::Time t0 = absl::Now();
  if (open_loop) {
    // The schedule of `mesaserve loadtest --rate` with its default seed (1) and no warm-up.
    PoissonArrivals arrivals(o.rate, /*seed=*/1);
    for (int32_t i = 0; i < o.requests; ++i) {
      absl::SleepFor(t0 + absl::Seconds(arrivals.Next()) - absl::Now());
      MESA_RETURN_IF_ERROR(submit());
    }
  } else {
    for (int32_t i = 0; i < std::min(o.concurrency, o.requests); ++i) MESA_RETURN_IF_ERROR(submit());
  }
  std::unique_lock<std::mutex> lock(mu);
  while (done < o.requests) {
    const int32_t before = done;
    cv.wait(lock, [&] { return done > before; });
    // Closed loop: each finished request is replaced by a new one.
    for (int32_t i = before; !open_loop && i < done && submitted < o.requests; ++i) {
      lock.unlock();
      absl::Status s = submit();
      lock.lock();
      MESA_RETURN_IF_ERROR(s);
    }
  }
  MESA_RETURN_IF_ERROR(error);
  EngineLoadResult r;
  r.requests = o.requests - shed;
  r.shed = shed;
  r.tokens = tokens;
  r.seconds = absl::ToDoubleSeconds(absl::Now() - t0);
  return r;
}

}  // namespace mesa::cli
