// A fixed set of worker threads that run posted tasks in arrival order.
//
// The server uses one to take the gRPC write path off the engine thread: starting a write on
// a loopback or TCP socket runs the transport (and, on loopback, the receiver's network
// stack) inline, about 76 us per message on the 2-core development machine, which the engine
// thread would otherwise spend between two decode steps (docs/serving-benchmarks.md).
// Posting costs a lock and, only when the queue outgrows the workers that are awake, a wake-up:
// a burst (one engine step's events for 64 streams) wakes a few workers, not one per task.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace mesa {

class TaskPool {
 public:
  // `threads` >= 1 workers, named `name` (at most 15 characters) for ps and debuggers.
  TaskPool(int threads, const char* name);
  // Runs every task still queued, then joins the workers.
  ~TaskPool();
  TaskPool(const TaskPool&) = delete;
  TaskPool& operator=(const TaskPool&) = delete;

  // Tasks may run on any worker, concurrently with each other; a task that must follow
  // another is posted only after the first has run (or from it).
  void Post(std::function<void()> task);
  int threads() const { return static_cast<int>(workers_.size()); }

 private:
  void Work();

  std::mutex mu_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> tasks_;
  int32_t sleeping_ = 0;  // workers waiting on wake_ (including those signalled, not yet up)
  int32_t signalled_ = 0;  // notify_one calls whose worker has not woken yet
  bool stop_ = false;
  std::vector<std::thread> workers_;
};

}  // namespace mesa
