// A GenerationSink that keeps a request's tokens and final event and lets a test wait for the
// end (never paused: its backlog is always zero).
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <vector>

#include "engine/request.h"

namespace mesa::testing {

class CollectingSink : public GenerationSink {
 public:
  void Push(GenerationEvent event) override {
    std::lock_guard<std::mutex> lock(mu_);
    for (const TokenChoice& c : event.tokens) tokens_.push_back(c.token);
    if (event.final) {
      final_ = event;
      done_ = true;
      cv_.notify_all();
    }
  }
  size_t Backlog() const override { return 0; }
  // The final event (after at most a minute; a default event if none came).
  GenerationEvent Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, std::chrono::seconds(60), [&] { return done_; });
    return final_;
  }
  std::vector<int32_t> tokens() const {
    std::lock_guard<std::mutex> lock(mu_);
    return tokens_;
  }
  size_t count() const {
    std::lock_guard<std::mutex> lock(mu_);
    return tokens_.size();
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<int32_t> tokens_;
  GenerationEvent final_;
  bool done_ = false;
};

// A CollectingSink that calls on_token(n) on the engine thread when the request's n-th token
// arrives: a client acting at a known point of the engine's steps (e.g. submitting another
// request, which then waits in the inbox while the step goes on).
class TokenActionSink : public CollectingSink {
 public:
  std::function<void(size_t)> on_token;
  void Push(GenerationEvent event) override {
    const size_t before = count();
    const size_t n = event.tokens.size();
    CollectingSink::Push(std::move(event));
    if (on_token) {
      for (size_t k = before + 1; k <= before + n; ++k) on_token(k);
    }
  }
};

}  // namespace mesa::testing
