#include "base/task_pool.h"

#include <pthread.h>

#include <algorithm>
#include <string>

namespace mesa {

TaskPool::TaskPool(int threads, const char* name) {
  const int n = std::max(1, threads);
  workers_.reserve(n);
  for (int i = 0; i < n; ++i) {
    workers_.emplace_back([this] { Work(); });
    pthread_setname_np(workers_.back().native_handle(), std::string(name).substr(0, 15).c_str());
  }
}

TaskPool::~TaskPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  for (std::thread& t : workers_) t.join();
}

void TaskPool::Post(std::function<void()> task) {
  bool wake = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    tasks_.push_back(std::move(task));
    // Busy workers come back for the queue on their own: skip the futex call then.
    wake = sleeping_ > 0;
  }
  if (wake) wake_.notify_one();
}

void TaskPool::Work() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    if (tasks_.empty()) {
      if (stop_) return;
      ++sleeping_;
      wake_.wait(lock, [this] { return stop_ || !tasks_.empty(); });
      --sleeping_;
      continue;
    }
    std::function<void()> task = std::move(tasks_.front());
    tasks_.pop_front();
    lock.unlock();
    task();
    lock.lock();
  }
}

}  // namespace mesa
