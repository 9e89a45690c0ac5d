#include "server/loadtest.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <thread>

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/poisson_arrivals.h"
#include "base/flags.h"
#include "mesa/v1/mesa.grpc.pb.h"

namespace mesa::server {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// A gRPC deadline `seconds` from now.
std::chrono::system_clock::time_point DeadlineIn(double seconds) {
  return std::chrono::system_clock::now() +
         std::chrono::microseconds(static_cast<int64_t>(seconds * 1e6));
}

struct Options {
  std::string address = "127.0.0.1:50051";
  int64_t concurrency = 1;
  int64_t connections = 1;  // client TCP connections; calls are spread over them
  int64_t requests = 100;
  double duration = 0;
  double rate = 0;  // > 0: open loop, Poisson arrivals at this many requests/s
  std::string prompt;
  int64_t prompt_tokens = 32;
  int64_t prompt_tokens_min = 0;   // > 0: lengths drawn uniformly from [min, prompt_tokens]
  int64_t seed = 1;
  int64_t max_new_tokens = 64;
  int64_t max_new_tokens_min = 0;  // > 0: drawn uniformly from [min, max_new_tokens]
  bool ignore_eos = true;
  double temperature = -1;  // < 0: the server's default
  int64_t top_k = 0;        // 0: off
  double top_p = 1.0;       // 1: off
  double repetition_penalty = 1.0;  // 1: off
  int64_t top_logprobs = 0;         // 0: none
  std::string mode = "stream";
  std::string cg_mode;  // empty: the server's default
  double cg_tol = 0;
  int64_t cg_max_iters = 0;
  int64_t warmup = 0;
  double timeout = 600;
  double connect_timeout = 10;
  std::string json_path;
};

// What one request saw, from the client's side and from the server's final message.
struct RequestResult {
  int64_t index = 0;
  grpc::StatusCode code = grpc::StatusCode::OK;
  std::string message;
  // Set when the call succeeded but its answer is not what the request asked for.
  std::string check_error;
  double start_s = 0;  // since the phase began
  double arrival_s = -1;  // open loop: when the call was due, since the phase began
  // Open loop: how long after its arrival time a client thread was free to take the call
  // (about 0 when one was waiting for it).
  double late_s = 0;
  double ttft_s = -1;  // streams only: first message that carries a token
  double e2e_s = 0;
  std::vector<double> itl_s;
  int64_t tokens = 0;  // token ids received
  // FNV-1a over the token ids in order: two runs generated the same tokens for a request
  // exactly when these agree (e.g. greedy alone and in a busy batch).
  uint64_t token_hash = 14695981039346656037ull;
  void HashTokens(const google::protobuf::RepeatedField<int32_t>& ids) {
    for (int32_t id : ids) {
      for (int b = 0; b < 4; ++b) {
        token_hash ^= (static_cast<uint32_t>(id) >> (8 * b)) & 0xFFu;
        token_hash *= 1099511628211ull;
      }
    }
  }
  int64_t messages = 0;
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  std::string finish_reason;
  double server_queue_s = -1, server_ttft_s = -1, server_total_s = -1;
  uint64_t cg_head_tokens = 0, cg_iterations = 0, cg_cap_hits = 0;

  bool ok() const { return code == grpc::StatusCode::OK && check_error.empty(); }
};

struct PhaseResult {
  std::vector<RequestResult> requests;  // by index
  double wall_s = 0;
};

std::string CodeName(grpc::StatusCode code) {
  // gRPC and absl use the same numbers; absl knows the canonical names.
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
}

// Linear interpolation between closest ranks (numpy's default), so small samples still give
// a sensible p99. NaN for an empty sample.
double Percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return std::nan("");
  const double rank = p / 100.0 * static_cast<double>(sorted.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(rank));
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (rank - static_cast<double>(lo)) * (sorted[hi] - sorted[lo]);
}

struct Distribution {
  std::vector<double> sorted;
  explicit Distribution(std::vector<double> v) : sorted(std::move(v)) {
    std::sort(sorted.begin(), sorted.end());
  }
  double P(double p) const { return Percentile(sorted, p); }
  double Mean() const {
    if (sorted.empty()) return std::nan("");
    double sum = 0;
    for (double x : sorted) sum += x;
    return sum / static_cast<double>(sorted.size());
  }
  double Max() const { return sorted.empty() ? std::nan("") : sorted.back(); }
};

class LoadTest {
 public:
  LoadTest(const Options& o, const std::vector<std::shared_ptr<grpc::Channel>>& channels,
           int32_t vocab_size)
      : o_(o), vocab_size_(vocab_size) {
    for (const auto& channel : channels) stubs_.push_back(v1::Generation::NewStub(channel));
  }

  // Runs `requests` calls (or, with a duration, as many as start before it ends) with at most
  // o_.concurrency calls in flight. Closed loop (rate 0): each client thread starts its next
  // call when the last one ends. Open loop (rate > 0): call i starts at its arrival time, the
  // gaps between arrivals drawn from an exponential distribution (a Poisson process, seeded by
  // --seed), whatever the server's answers; a call whose arrival finds every thread busy starts
  // late (RequestResult::late_s). Indices start at `first_index`, so warm-up and measured
  // requests get different prompts and seeds.
  PhaseResult RunPhase(int64_t requests, double duration, int64_t first_index, double rate) {
    PhaseResult phase;
    std::mutex mu;
    int64_t next = 0;  // guarded by mu, with the arrivals (request `next` takes the next one)
    PoissonArrivals arrivals(rate > 0 ? rate : 1.0, static_cast<uint64_t>(o_.seed),
                             static_cast<uint64_t>(first_index));
    // The phase starts once every client thread exists (creating hundreds takes milliseconds,
    // which would make the first arrivals look late).
    std::condition_variable go;
    bool started = false;
    Clock::time_point start, end;
    std::vector<std::thread> workers;
    for (int64_t w = 0; w < o_.concurrency; ++w) {
      // Client thread w keeps its calls on connection w mod --connections.
      v1::Generation::Stub* stub = stubs_[w % stubs_.size()].get();
      workers.emplace_back([&, stub] {
        {
          std::unique_lock<std::mutex> lock(mu);
          go.wait(lock, [&] { return started; });
        }
        for (;;) {
          int64_t i;
          double arrival_s = 0;
          {
            std::lock_guard<std::mutex> lock(mu);
            i = next++;
            if (rate > 0) arrival_s = arrivals.Next();
          }
          const double taken_s = Seconds(start, Clock::now());
          if (requests > 0 && i >= requests) return;
          if (rate > 0) {
            if (duration > 0 && arrival_s >= duration) return;
            std::this_thread::sleep_until(start + std::chrono::microseconds(static_cast<int64_t>(arrival_s * 1e6)));
          } else if (duration > 0 && Clock::now() >= end) {
            return;
          }
          RequestResult r = Run(*stub, first_index + i, start);
          r.index = i;
          if (rate > 0) {
            r.arrival_s = arrival_s;
            r.late_s = std::max(0.0, taken_s - arrival_s);
          }
          std::lock_guard<std::mutex> lock(mu);
          phase.requests.push_back(std::move(r));
        }
      });
    }
    {
      std::lock_guard<std::mutex> lock(mu);
      start = Clock::now();
      end = start + std::chrono::microseconds(static_cast<int64_t>(duration * 1e6));
      started = true;
    }
    go.notify_all();
    for (std::thread& t : workers) t.join();
    phase.wall_s = Seconds(start, Clock::now());
    std::sort(phase.requests.begin(), phase.requests.end(),
              [](const RequestResult& a, const RequestResult& b) { return a.index < b.index; });
    return phase;
  }

 private:
  // Prompt length and max_new_tokens of request `index`: fixed, or drawn from the ranges with
  // a generator seeded by (seed, index) so a run is reproducible.
  std::pair<int64_t, int64_t> Lengths(int64_t index) const {
    std::seed_seq seq{static_cast<uint64_t>(o_.seed), static_cast<uint64_t>(index), uint64_t{7}};
    std::mt19937 rng(seq);
    auto draw = [&](int64_t lo, int64_t hi) {
      return lo > 0 && lo < hi ? std::uniform_int_distribution<int64_t>(lo, hi)(rng) : hi;
    };
    const int64_t prompt = draw(o_.prompt_tokens_min, o_.prompt_tokens);
    const int64_t out = draw(o_.max_new_tokens_min, o_.max_new_tokens);
    return {prompt, out};
  }

  v1::GenerateRequest BuildRequest(int64_t index) const {
    const auto [prompt_tokens, max_new_tokens] = Lengths(index);
    v1::GenerateRequest req;
    req.set_request_id(absl::StrCat("loadtest-", index));
    if (!o_.prompt.empty()) {
      req.set_text(o_.prompt);
    } else {
      // Seeded by (seed, index): the same run sends the same prompts whatever the thread
      // interleaving. Ids from 3 up, like `mesaserve bench`, to skip the special tokens.
      std::seed_seq seq{static_cast<uint64_t>(o_.seed), static_cast<uint64_t>(index)};
      std::mt19937 rng(seq);
      std::uniform_int_distribution<int32_t> token(3, vocab_size_ - 1);
      auto* ids = req.mutable_token_ids()->mutable_ids();
      ids->Reserve(static_cast<int>(prompt_tokens));
      for (int64_t t = 0; t < prompt_tokens; ++t) ids->Add(token(rng));
    }
    v1::SamplingParams* s = req.mutable_sampling();
    if (o_.temperature >= 0) s->set_temperature(static_cast<float>(o_.temperature));
    if (o_.top_k > 0) s->set_top_k(static_cast<int32_t>(o_.top_k));
    if (o_.top_p < 1.0) s->set_top_p(static_cast<float>(o_.top_p));
    if (o_.repetition_penalty != 1.0) s->set_repetition_penalty(static_cast<float>(o_.repetition_penalty));
    if (o_.top_logprobs > 0) req.set_top_logprobs(static_cast<int32_t>(o_.top_logprobs));
    s->set_seed(static_cast<uint64_t>(o_.seed) * 1000003u + static_cast<uint64_t>(index));
    req.mutable_stopping()->set_max_new_tokens(static_cast<uint32_t>(max_new_tokens));
    req.mutable_stopping()->set_ignore_eos(o_.ignore_eos);
    if (!o_.cg_mode.empty()) {
      req.mutable_cg()->set_mode(o_.cg_mode == "fixed" ? v1::CG_MODE_FIXED : v1::CG_MODE_ADAPTIVE);
    }
    if (o_.cg_tol > 0) req.mutable_cg()->set_tolerance(static_cast<float>(o_.cg_tol));
    if (o_.cg_max_iters > 0) req.mutable_cg()->set_max_iterations(static_cast<int32_t>(o_.cg_max_iters));
    return req;
  }

  template <typename Final>
  static void TakeSummary(const Final& m, RequestResult& r) {
    if (m.has_usage()) {
      r.prompt_tokens = m.usage().prompt_tokens();
      r.completion_tokens = m.usage().completion_tokens();
    }
    if (m.has_timings()) {
      r.server_queue_s = m.timings().queue_seconds();
      r.server_ttft_s = m.timings().time_to_first_token_seconds();
      r.server_total_s = m.timings().total_seconds();
    }
    if (m.has_cg()) {
      r.cg_head_tokens = m.cg().head_tokens();
      r.cg_iterations = m.cg().total_iterations();
      r.cg_cap_hits = m.cg().cap_hits();
    }
    if (m.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
      r.finish_reason = v1::FinishReason_Name(m.finish_reason());
    }
  }

  RequestResult Run(v1::Generation::Stub& stub, int64_t index, Clock::time_point phase_start) {
    const v1::GenerateRequest req = BuildRequest(index);  // outside the timed span
    RequestResult r;
    grpc::ClientContext ctx;
    if (o_.timeout > 0) ctx.set_deadline(DeadlineIn(o_.timeout));
    const Clock::time_point t0 = Clock::now();
    r.start_s = Seconds(phase_start, t0);
    grpc::Status status;
    if (o_.mode == "stream") {
      std::unique_ptr<grpc::ClientReader<v1::GenerateStreamResponse>> reader =
          stub.GenerateStream(&ctx, req);
      v1::GenerateStreamResponse msg;
      Clock::time_point last;
      while (reader->Read(&msg)) {
        const Clock::time_point now = Clock::now();
        ++r.messages;
        const int n = msg.token_ids_size();
        if (n > 0) {
          if (r.ttft_s < 0) {
            // Tokens beyond the first in the first message (the server merges what waits
            // while it delivers) arrived with it: a gap of 0 each, so that every token after
            // the first has one ITL sample.
            r.ttft_s = Seconds(t0, now);
            for (int k = 1; k < n; ++k) r.itl_s.push_back(0.0);
          } else {
            // A message that carries several tokens shares its gap among them, so ITL stays
            // per token whatever the server's message batching.
            const double gap = Seconds(last, now) / n;
            for (int k = 0; k < n; ++k) r.itl_s.push_back(gap);
          }
          last = now;
          r.tokens += n;
          r.HashTokens(msg.token_ids());
        }
        TakeSummary(msg, r);
      }
      status = reader->Finish();
    } else {
      v1::GenerateResponse resp;
      status = stub.Generate(&ctx, req, &resp);
      r.messages = 1;
      r.tokens = resp.token_ids_size();
      r.HashTokens(resp.token_ids());
      TakeSummary(resp, r);
    }
    r.e2e_s = Seconds(t0, Clock::now());
    r.code = status.error_code();
    r.message = status.error_message();
    if (status.ok()) {
      // Cheap end-to-end consistency checks: what arrived is what the server says it sent,
      // and with ignore_eos (and no stop conditions) every request runs to max_new_tokens.
      if (r.tokens != r.completion_tokens) {
        r.check_error = absl::StrCat("received ", r.tokens, " tokens but usage.completion_tokens is ",
                                     r.completion_tokens);
      } else if (o_.ignore_eos && r.tokens != Lengths(index).second) {
        r.check_error = absl::StrCat("expected ", Lengths(index).second, " tokens with ignore_eos, got ",
                                     r.tokens, " (finish ", r.finish_reason, ")");
      }
    }
    return r;
  }

  const Options& o_;
  std::vector<std::unique_ptr<v1::Generation::Stub>> stubs_;
  int32_t vocab_size_;
};

// Aggregates of a measured phase, shared by the table and the JSON file.
struct Summary {
  int64_t requests = 0, ok = 0, failed = 0;
  double wall_s = 0, requests_per_s = 0, tokens_per_s = 0;
  int64_t tokens = 0, messages = 0;
  // Goodput: the tokens of the calls that succeeded, per second of the phase.
  int64_t ok_tokens = 0;
  double goodput_tokens_per_s = 0;
  // Open loop: calls that no client thread was free to start at their arrival time (by more
  // than 10 ms: less is the scheduler's wake-up on a loaded machine), and the worst delay.
  int64_t late = 0;
  double max_late_s = 0;
  uint64_t cg_head_tokens = 0, cg_iterations = 0, cg_cap_hits = 0;
  Distribution ttft{{}}, itl{{}}, e2e{{}}, server_ttft{{}}, queue{{}};
  Distribution failed_e2e{{}};  // how long failed calls took to fail (a shed call: fast)
  // Error kind (gRPC code name, or CLIENT_CHECK) -> count and first message.
  std::map<std::string, std::pair<int64_t, std::string>> errors;
};

Summary Summarize(const PhaseResult& phase) {
  Summary s;
  s.requests = static_cast<int64_t>(phase.requests.size());
  s.wall_s = phase.wall_s;
  std::vector<double> ttft, itl, e2e, server_ttft, queue, failed_e2e;
  for (const RequestResult& r : phase.requests) {
    s.tokens += r.tokens;  // tokens of failed calls were generated and delivered too
    s.messages += r.messages;
    if (r.late_s > 1e-2) ++s.late;
    s.max_late_s = std::max(s.max_late_s, r.late_s);
    if (!r.ok()) {
      ++s.failed;
      failed_e2e.push_back(r.e2e_s);
      const std::string kind = r.code != grpc::StatusCode::OK ? CodeName(r.code) : "CLIENT_CHECK";
      auto [it, inserted] = s.errors.try_emplace(
          kind, 0, r.code != grpc::StatusCode::OK ? r.message : r.check_error);
      ++it->second.first;
      continue;
    }
    ++s.ok;
    s.ok_tokens += r.tokens;
    if (r.ttft_s >= 0) ttft.push_back(r.ttft_s);
    itl.insert(itl.end(), r.itl_s.begin(), r.itl_s.end());
    e2e.push_back(r.e2e_s);
    if (r.server_ttft_s >= 0) server_ttft.push_back(r.server_ttft_s);
    if (r.server_queue_s >= 0) queue.push_back(r.server_queue_s);
    s.cg_head_tokens += r.cg_head_tokens;
    s.cg_iterations += r.cg_iterations;
    s.cg_cap_hits += r.cg_cap_hits;
  }
  s.requests_per_s = s.wall_s > 0 ? static_cast<double>(s.ok) / s.wall_s : 0;
  s.tokens_per_s = s.wall_s > 0 ? static_cast<double>(s.tokens) / s.wall_s : 0;
  s.goodput_tokens_per_s = s.wall_s > 0 ? static_cast<double>(s.ok_tokens) / s.wall_s : 0;
  s.failed_e2e = Distribution(std::move(failed_e2e));
  s.ttft = Distribution(std::move(ttft));
  s.itl = Distribution(std::move(itl));
  s.e2e = Distribution(std::move(e2e));
  s.server_ttft = Distribution(std::move(server_ttft));
  s.queue = Distribution(std::move(queue));
  return s;
}

std::string Ms(double seconds) {
  return std::isnan(seconds) ? "-" : absl::StrFormat("%.3f", seconds * 1e3);
}

void PrintLatencyRow(const char* name, const Distribution& d) {
  std::printf("  %-22s %10s %10s %10s %10s %10s %8zu\n", name, Ms(d.P(50)).c_str(),
              Ms(d.P(90)).c_str(), Ms(d.P(99)).c_str(), Ms(d.Mean()).c_str(), Ms(d.Max()).c_str(),
              d.sorted.size());
}

void PrintReport(const Options& o, const v1::ModelInfo& info, const Summary& s,
                 const Summary* warmup) {
  std::printf("mesaserve loadtest: %s, model %s (%s, %s, %d state slots)\n", o.address.c_str(),
              info.name().c_str(), info.backend().c_str(), info.dtype().c_str(), info.state_slots());
  const std::string prompt =
      o.prompt.empty() ? absl::StrCat(o.prompt_tokens, " random token ids (seed ", o.seed, ")")
                       : absl::StrCat("text of ", o.prompt.size(), " bytes");
  std::printf("  mode %s, %s %lld over %lld connection%s, prompt %s, max_new_tokens %lld%s, temperature %s%s, CG %s\n",
              o.mode.c_str(), o.rate > 0 ? "open loop, at most" : "concurrency",
              static_cast<long long>(o.concurrency),
              static_cast<long long>(o.connections), o.connections == 1 ? "" : "s", prompt.c_str(),
              static_cast<long long>(o.max_new_tokens), o.ignore_eos ? " (ignore_eos)" : "",
              o.temperature < 0 ? "server default" : absl::StrFormat("%g", o.temperature).c_str(),
              absl::StrCat((o.top_k > 0 || o.top_p < 1.0)
                               ? absl::StrFormat(", top_k %lld, top_p %g", static_cast<long long>(o.top_k), o.top_p)
                               : "",
                           o.repetition_penalty != 1.0
                               ? absl::StrFormat(", repetition_penalty %g", o.repetition_penalty)
                               : "",
                           o.top_logprobs > 0
                               ? absl::StrFormat(", top_logprobs %lld", static_cast<long long>(o.top_logprobs))
                               : "")
                  .c_str(),
              o.cg_mode.empty() ? "server default" : o.cg_mode.c_str());
  if (warmup != nullptr) {
    std::printf("  warm-up: %lld requests, %lld failed (not counted below)\n",
                static_cast<long long>(warmup->requests), static_cast<long long>(warmup->failed));
  }
  std::printf("\n");
  std::printf("  %-22s %lld ok, %lld failed, in %.3f s\n", "requests",
              static_cast<long long>(s.ok), static_cast<long long>(s.failed), s.wall_s);
  std::printf("  %-22s %.2f\n", "requests/s", s.requests_per_s);
  std::printf("  %-22s %.1f (%lld tokens in %lld messages)\n", "output tokens/s", s.tokens_per_s,
              static_cast<long long>(s.tokens), static_cast<long long>(s.messages));
  if (s.failed > 0) {
    std::printf("  %-22s %.1f (tokens of the calls that succeeded)\n", "goodput tokens/s",
                s.goodput_tokens_per_s);
  }
  if (o.rate > 0) {
    std::printf("  %-22s Poisson at %g requests/s (seed %lld); %lld of %lld calls found every client "
                "thread busy (max delay %s ms)%s\n",
                "arrivals", o.rate, static_cast<long long>(o.seed), static_cast<long long>(s.late),
                static_cast<long long>(s.requests), Ms(s.max_late_s).c_str(),
                s.late > 0 ? ": raise --concurrency" : "");
  }
  std::printf("\n  %-22s %10s %10s %10s %10s %10s %8s\n", "latency (ms)", "p50", "p90", "p99",
              "mean", "max", "n");
  if (o.mode == "stream") {
    PrintLatencyRow("TTFT", s.ttft);
    PrintLatencyRow("ITL", s.itl);
  }
  PrintLatencyRow("end-to-end", s.e2e);
  PrintLatencyRow("server TTFT", s.server_ttft);
  PrintLatencyRow("server queue", s.queue);
  if (s.failed > 0) PrintLatencyRow("failed calls", s.failed_e2e);
  std::printf("\n  %-22s %llu iterations over %llu head-tokens = %.2f per head-token, %llu cap hits\n",
              "CG", static_cast<unsigned long long>(s.cg_iterations),
              static_cast<unsigned long long>(s.cg_head_tokens),
              s.cg_head_tokens > 0 ? static_cast<double>(s.cg_iterations) / s.cg_head_tokens : 0.0,
              static_cast<unsigned long long>(s.cg_cap_hits));
  if (s.errors.empty()) {
    std::printf("  %-22s none\n", "errors");
  } else {
    std::printf("\n  %-22s %8s  %s\n", "errors", "count", "first message");
    for (const auto& [kind, e] : s.errors) {
      std::printf("  %-22s %8lld  %s\n", kind.c_str(), static_cast<long long>(e.first),
                  e.second.c_str());
    }
  }
  std::fflush(stdout);
}

nlohmann::json DistributionJson(const Distribution& d) {
  // JSON has no NaN: an empty sample is null.
  auto num = [](double x) { return std::isnan(x) ? nlohmann::json() : nlohmann::json(x); };
  return {{"n", d.sorted.size()}, {"p50", num(d.P(50))}, {"p90", num(d.P(90))},
          {"p99", num(d.P(99))},  {"mean", num(d.Mean())}, {"max", num(d.Max())}};
}

absl::Status WriteJson(const Options& o, const v1::ModelInfo& info, const PhaseResult& phase,
                       const Summary& s, const Summary* warmup) {
  nlohmann::json j;
  j["config"] = {{"address", o.address},
                 {"mode", o.mode},
                 {"concurrency", o.concurrency},
                 {"connections", o.connections},
                 {"requests", o.requests},
                 {"duration_s", o.duration},
                 {"rate", o.rate},
                 {"warmup", o.warmup},
                 {"prompt", o.prompt},
                 {"prompt_tokens", o.prompt.empty() ? o.prompt_tokens : 0},
                 {"seed", o.seed},
                 {"max_new_tokens", o.max_new_tokens},
                 {"ignore_eos", o.ignore_eos},
                 {"temperature", o.temperature < 0 ? nlohmann::json() : nlohmann::json(o.temperature)},
                 {"top_k", o.top_k},
                 {"top_p", o.top_p},
                 {"repetition_penalty", o.repetition_penalty},
                 {"top_logprobs", o.top_logprobs},
                 {"cg_mode", o.cg_mode},
                 {"cg_tol", o.cg_tol},
                 {"cg_max_iters", o.cg_max_iters}};
  j["model"] = {{"name", info.name()},         {"backend", info.backend()},
                {"dtype", info.dtype()},       {"state_slots", info.state_slots()},
                {"vocab_size", info.vocab_size()}};
  nlohmann::json errors = nlohmann::json::object();
  for (const auto& [kind, e] : s.errors) errors[kind] = {{"count", e.first}, {"first_message", e.second}};
  j["summary"] = {{"requests", s.requests},
                  {"ok", s.ok},
                  {"failed", s.failed},
                  {"wall_s", s.wall_s},
                  {"requests_per_s", s.requests_per_s},
                  {"output_tokens", s.tokens},
                  {"output_tokens_per_s", s.tokens_per_s},
                  {"goodput_tokens_per_s", s.goodput_tokens_per_s},
                  {"late_starts", s.late},
                  {"max_late_s", s.max_late_s},
                  {"failed_e2e_s", DistributionJson(s.failed_e2e)},
                  {"messages", s.messages},
                  {"ttft_s", DistributionJson(s.ttft)},
                  {"itl_s", DistributionJson(s.itl)},
                  {"e2e_s", DistributionJson(s.e2e)},
                  {"server_ttft_s", DistributionJson(s.server_ttft)},
                  {"server_queue_s", DistributionJson(s.queue)},
                  {"cg_head_tokens", s.cg_head_tokens},
                  {"cg_iterations", s.cg_iterations},
                  {"cg_mean_iterations", s.cg_head_tokens > 0
                                             ? static_cast<double>(s.cg_iterations) / s.cg_head_tokens
                                             : 0.0},
                  {"cg_cap_hits", s.cg_cap_hits},
                  {"errors", errors}};
  if (warmup != nullptr) j["warmup"] = {{"requests", warmup->requests}, {"failed", warmup->failed}};
  nlohmann::json requests = nlohmann::json::array();
  for (const RequestResult& r : phase.requests) {
    requests.push_back({{"index", r.index},
                        {"ok", r.ok()},
                        {"code", CodeName(r.code)},
                        {"message", r.message},
                        {"check_error", r.check_error},
                        {"start_s", r.start_s},
                        {"arrival_s", r.arrival_s < 0 ? nlohmann::json() : nlohmann::json(r.arrival_s)},
                        {"late_s", r.late_s},
                        {"ttft_s", r.ttft_s < 0 ? nlohmann::json() : nlohmann::json(r.ttft_s)},
                        {"e2e_s", r.e2e_s},
                        {"tokens", r.tokens},
                        {"messages", r.messages},
                        {"prompt_tokens", r.prompt_tokens},
                        {"completion_tokens", r.completion_tokens},
                        {"finish_reason", r.finish_reason},
                        {"server_queue_s", r.server_queue_s},
                        {"server_ttft_s", r.server_ttft_s},
                        {"server_total_s", r.server_total_s},
                        {"cg_head_tokens", r.cg_head_tokens},
                        {"cg_iterations", r.cg_iterations},
                        {"cg_cap_hits", r.cg_cap_hits},
                        {"token_hash", absl::StrFormat("%016x", r.token_hash)},
                        {"itl_s", r.itl_s}});
  }
  j["requests"] = std::move(requests);
  std::ofstream out(o.json_path);
  // Messages from the server are sanitized to UTF-8 there; replace rather than throw anyway.
  out << j.dump(1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  if (!out) return absl::UnavailableError(absl::StrCat("cannot write --json ", o.json_path));
  return absl::OkStatus();
}

absl::Status Validate(const Options& o) {
  if (o.connections < 1 || o.connections > o.concurrency) {
    return absl::InvalidArgumentError(absl::StrCat("--connections ", o.connections, " is outside [1, --concurrency ",
                                                   o.concurrency, "]"));
  }
  if (o.concurrency < 1 || o.concurrency > 4096) {
    return absl::InvalidArgumentError(absl::StrCat("--concurrency ", o.concurrency, " is outside [1, 4096]"));
  }
  if (o.requests < 0 || (o.requests == 0 && o.duration <= 0)) {
    return absl::InvalidArgumentError("give --requests N > 0 or --duration S > 0");
  }
  if (o.duration < 0) return absl::InvalidArgumentError("--duration must not be negative");
  if (!(o.rate >= 0 && o.rate <= 1e6)) {
    return absl::InvalidArgumentError(absl::StrCat("--rate ", o.rate, " is outside [0, 1e6]"));
  }
  if (o.prompt.empty() && o.prompt_tokens < 1) {
    return absl::InvalidArgumentError("--prompt-tokens must be positive (or give --prompt)");
  }
  if (o.max_new_tokens < 1 || o.max_new_tokens > UINT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat("--max-new-tokens ", o.max_new_tokens, " must be positive"));
  }
  if (o.mode != "stream" && o.mode != "unary") {
    return absl::InvalidArgumentError(absl::StrCat("--mode '", o.mode, "' is not stream or unary"));
  }
  if (!o.cg_mode.empty() && o.cg_mode != "adaptive" && o.cg_mode != "fixed") {
    return absl::InvalidArgumentError(absl::StrCat("--cg-mode '", o.cg_mode, "' is not adaptive or fixed"));
  }
  if (o.warmup < 0) return absl::InvalidArgumentError("--warmup must not be negative");
  if (o.top_k < 0 || o.top_k > (1 << 30)) {
    return absl::InvalidArgumentError(absl::StrCat("--top-k ", o.top_k, " is outside [0, 2^30]"));
  }
  if (!(o.top_p > 0.0 && o.top_p <= 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat("--top-p ", o.top_p, " is outside (0, 1]"));
  }
  if (!(o.repetition_penalty > 0.0 && o.repetition_penalty <= 10.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--repetition-penalty ", o.repetition_penalty, " is outside (0, 10]"));
  }
  if (o.top_logprobs < 0 || o.top_logprobs > 1000) {
    return absl::InvalidArgumentError(absl::StrCat("--top-logprobs ", o.top_logprobs, " is outside [0, 1000]"));
  }
  return absl::OkStatus();
}

}  // namespace

int RunLoadTest(const std::vector<std::string>& args) {
  Options o;
  FlagSet f("loadtest",
            "Load-tests a running server: --concurrency calls in flight (one thread each), or requests\n"
            "arriving at --rate per second (open loop), --requests in total or for --duration seconds.\n"
            "Reports requests/s, output tokens/s, goodput, TTFT, ITL and end-to-end latency\n"
            "percentiles, CG work and errors by status code.\n"
            "Exit code 0 when every request succeeded, 1 otherwise.");
  f.String("address", &o.address, "server address host:port");
  f.Int("concurrency", &o.concurrency, "calls in flight (one client thread each)");
  f.Int("connections", &o.connections,
        "client connections (HTTP/2 over TCP) the calls are spread over, like that many clients; "
        "at most --concurrency");
  f.Int("requests", &o.requests, "requests to send in total (with --duration: at most this many; 0 = no cap)");
  f.Float("duration", &o.duration, "seconds to keep starting requests (0 = until --requests are done)");
  f.Float("rate", &o.rate,
          "open loop: requests arrive at this many per second (Poisson, seeded by --seed) whatever the "
          "server answers, with at most --concurrency in flight; 0 = closed loop");
  f.String("prompt", &o.prompt, "prompt text (tokenized by the server); empty = random token ids");
  f.Int("prompt-tokens", &o.prompt_tokens, "length of the random token-id prompts when --prompt is empty");
  f.Int("prompt-tokens-min", &o.prompt_tokens_min,
        "with it, prompt lengths are drawn uniformly from [min, --prompt-tokens] (mixed load)");
  f.Int("seed", &o.seed, "seed of the random prompts and of the per-request sampling seeds");
  f.Int("max-new-tokens", &o.max_new_tokens, "tokens to generate per request");
  f.Int("max-new-tokens-min", &o.max_new_tokens_min,
        "with it, max_new_tokens is drawn uniformly from [min, --max-new-tokens] (mixed load)");
  f.Bool("ignore-eos", &o.ignore_eos,
         "keep generating past EOS, so every request generates exactly --max-new-tokens");
  f.Float("temperature", &o.temperature, "sampling temperature; negative = the server's default");
  f.Int("top-k", &o.top_k, "top-k truncation; 0 = off");
  f.Float("top-p", &o.top_p, "top-p (nucleus) truncation; 1 = off");
  f.Float("repetition-penalty", &o.repetition_penalty, "repetition penalty; 1 = off");
  f.Int("top-logprobs", &o.top_logprobs, "log-probabilities of the N most likely tokens per step; 0 = none");
  f.String("mode", &o.mode, "stream (GenerateStream: TTFT and ITL) or unary (Generate)");
  f.String("cg-mode", &o.cg_mode, "adaptive or fixed; empty = the server's default");
  f.Float("cg-tol", &o.cg_tol, "adaptive CG tolerance; 0 = the server's default");
  f.Int("cg-max-iters", &o.cg_max_iters, "CG iteration cap (adaptive) or count (fixed); 0 = the server's default");
  f.Int("warmup", &o.warmup, "requests sent first (same concurrency) and left out of the results");
  f.Float("timeout", &o.timeout, "deadline of each call in seconds; 0 = none");
  f.Float("connect-timeout", &o.connect_timeout, "seconds to wait for the server to answer GetModelInfo");
  f.String("json", &o.json_path, "write the configuration, summary and every request's results here");
  if (absl::Status st = f.Parse(args); !st.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(st.message()).c_str());
    return 1;
  }
  if (f.help_requested()) {
    std::fputs(f.Usage().c_str(), stdout);
    return 0;
  }
  // --duration alone means "for that long", not "for that long or 100 requests".
  if (o.duration > 0 && !f.WasSet("requests")) o.requests = 0;
  if (absl::Status st = Validate(o); !st.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(st.message()).c_str());
    return 1;
  }

  auto channel = grpc::CreateChannel(o.address, grpc::InsecureChannelCredentials());
  // The model info gives the vocabulary for random prompts, and waiting for it (wait_for_ready)
  // lets scripts start the load test right after the server's port line.
  v1::ModelInfo info;
  {
    grpc::ClientContext ctx;
    ctx.set_wait_for_ready(true);
    ctx.set_deadline(DeadlineIn(o.connect_timeout));
    const grpc::Status st = v1::Generation::NewStub(channel)->GetModelInfo(&ctx, {}, &info);
    if (!st.ok()) {
      std::fprintf(stderr, "error: GetModelInfo on %s failed: %s: %s\n", o.address.c_str(),
                   CodeName(st.error_code()).c_str(), st.error_message().c_str());
      return 1;
    }
  }
  if (o.prompt.empty() && info.vocab_size() <= 3) {
    std::fprintf(stderr, "error: the model's vocabulary (%d) is too small for random prompts\n",
                 info.vocab_size());
    return 1;
  }

  // Distinct channel arguments give each channel its own connection (gRPC shares one between
  // channels with equal arguments).
  std::vector<std::shared_ptr<grpc::Channel>> channels{channel};
  for (int64_t i = 1; i < o.connections; ++i) {
    grpc::ChannelArguments args;
    args.SetInt("mesa.loadtest.connection", static_cast<int>(i));
    channels.push_back(grpc::CreateCustomChannel(o.address, grpc::InsecureChannelCredentials(), args));
  }
  LoadTest test(o, channels, info.vocab_size());
  std::unique_ptr<Summary> warmup;
  if (o.warmup > 0) {
    // Closed loop whatever --rate: the warm-up only has to bring the server up to speed.
    warmup = std::make_unique<Summary>(Summarize(test.RunPhase(o.warmup, 0, /*first_index=*/0, 0)));
  }
  const PhaseResult phase = test.RunPhase(o.requests, o.duration, /*first_index=*/o.warmup, o.rate);
  const Summary s = Summarize(phase);
  PrintReport(o, info, s, warmup.get());
  if (!o.json_path.empty()) {
    if (absl::Status st = WriteJson(o, info, phase, s, warmup.get()); !st.ok()) {
      std::fprintf(stderr, "error: %s\n", std::string(st.message()).c_str());
      return 1;
    }
  }
  const bool clean = s.failed == 0 && s.requests > 0 && (warmup == nullptr || warmup->failed == 0);
  return clean ? 0 : 1;
}

}  // namespace mesa::server
