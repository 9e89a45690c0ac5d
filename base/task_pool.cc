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

// Tasks queued per awake worker before another one is woken. Awake workers come back for the
// queue on their own, and each wake-up is a futex call on the posting (engine) thread: on an
// H200 serving 64 streams, waking a worker per task made filing a step's 64 events cost 6.3 us
// per token against 3.7 us in-process.
constexpr size_t kTasksPerAwakeWorker = 2;

void TaskPool::Post(std::function<void()> task) {
  bool wake = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    tasks_.push_back(std::move(task));
    const size_t awake = workers_.size() - static_cast<size_t>(sleeping_ - signalled_);
    if (sleeping_ > signalled_ && tasks_.size() > kTasksPerAwakeWorker * awake) {
      ++signalled_;
      wake = true;
    }
  }
  if (wake) wake_.notify_one();
}

void TaskPool::Work() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    if (tasks_.empty()) {
      if (stop_) return;
      // Every return from wait counts against signalled_, also when another worker took the
      // task meanwhile (or the wake-up was spurious): a count left behind would make Post take
      // a sleeping worker for an awake one and leave a task unrun. An extra decrement only
      // makes the next post wake one more worker.
      ++sleeping_;
      wake_.wait(lock);
      --sleeping_;
      if (signalled_ > 0) --signalled_;
      continue;  // the loop looks at the queue and stop_ again
    }
    std::function<void()> task = std::move(tasks_.front());
    tasks_.pop_front();
    lock.unlock();
    task();
    lock.lock();
  }
}

}  // namespace mesa
