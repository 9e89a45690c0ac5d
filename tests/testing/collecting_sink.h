// A GenerationSink that keeps a request's tokens and final event and lets a test wait for the
// end (never paused: its backlog is always zero).
#pragma once

#include <chrono>
#include <condition_variable>
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

}  // namespace mesa::testing
