#include "base/task_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <set>
#include <thread>
#include <vector>

namespace mesa {
namespace {

TEST(TaskPoolTest, OneWorkerRunsTasksInPostOrder) {
  std::vector<int> order;
  {
    TaskPool pool(1, "test-pool");
    for (int i = 0; i < 1000; ++i) pool.Post([&order, i] { order.push_back(i); });
  }  // the destructor runs what is still queued
  ASSERT_EQ(order.size(), 1000u);
  for (int i = 0; i < 1000; ++i) EXPECT_EQ(order[i], i);
}

TEST(TaskPoolTest, DestructorRunsQueuedTasksBeforeJoining) {
  std::atomic<int> ran{0};
  {
    TaskPool pool(2, "test-pool");
    std::promise<void> release;
    std::shared_future<void> gate = release.get_future().share();
    // Both workers block, so the other tasks are still queued when the destructor starts.
    for (int i = 0; i < 2; ++i) pool.Post([gate, &ran] { gate.wait(); ++ran; });
    for (int i = 0; i < 50; ++i) pool.Post([&ran] { ++ran; });
    release.set_value();
  }
  EXPECT_EQ(ran.load(), 52);
}

TEST(TaskPoolTest, ManyPostersAndWorkersRunEveryTaskOnce) {
  constexpr int kPosters = 4, kPerPoster = 5000;
  std::atomic<int64_t> sum{0};
  std::mutex mu;
  std::set<std::thread::id> workers;
  {
    TaskPool pool(3, "test-pool");
    EXPECT_EQ(pool.threads(), 3);
    std::vector<std::thread> posters;
    for (int p = 0; p < kPosters; ++p) {
      posters.emplace_back([&, p] {
        for (int i = 1; i <= kPerPoster; ++i) {
          pool.Post([&, v = int64_t{p} * kPerPoster + i] {
            sum += v;
            std::lock_guard<std::mutex> lock(mu);
            workers.insert(std::this_thread::get_id());
          });
        }
      });
    }
    for (std::thread& t : posters) t.join();
  }
  const int64_t n = int64_t{kPosters} * kPerPoster;
  EXPECT_EQ(sum.load(), n * (n + 1) / 2);
  EXPECT_LE(workers.size(), 3u);
  EXPECT_EQ(workers.count(std::this_thread::get_id()), 0u) << "tasks must not run on the poster";
}

TEST(TaskPoolTest, ABurstOfSlowTasksWakesSeveralWorkers) {
  // Posts wake workers only as the queue outgrows the awake ones; a burst of tasks that take a
  // while must still spread over the pool rather than wait for one worker.
  std::mutex mu;
  std::set<std::thread::id> workers;
  const auto start = std::chrono::steady_clock::now();
  {
    TaskPool pool(4, "test-pool");
    for (int i = 0; i < 32; ++i) {
      pool.Post([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
        std::lock_guard<std::mutex> lock(mu);
        workers.insert(std::this_thread::get_id());
      });
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(workers.size(), 4u);
  EXPECT_LT(seconds, 32 * 0.005) << "the 32 tasks of 5 ms ran one after the other";
}

TEST(TaskPoolTest, EveryTaskRunsWhileThePoolLives) {
  // Bursts of 1 to 4 short tasks, sometimes after a pause in which the workers fall asleep:
  // each burst must run without waiting for the destructor (a wake-up left uncounted would
  // leave a task queued with every worker asleep).
  TaskPool pool(2, "test-pool");
  std::atomic<int> ran{0};
  int posted = 0;
  for (int round = 0; round < 400; ++round) {
    const int burst = 1 + round % 4;
    for (int i = 0; i < burst; ++i) pool.Post([&ran] { ++ran; });
    posted += burst;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (ran.load() < posted && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
    ASSERT_EQ(ran.load(), posted) << "round " << round << ": a task was left queued";
    if (round % 3 == 0) std::this_thread::sleep_for(std::chrono::microseconds(300));
  }
}

TEST(TaskPoolTest, SleepingWorkerWakesForALatePost) {
  TaskPool pool(1, "test-pool");
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // the worker is asleep now
  std::promise<void> done;
  pool.Post([&done] { done.set_value(); });
  EXPECT_EQ(done.get_future().wait_for(std::chrono::seconds(10)), std::future_status::ready);
}

TEST(TaskPoolTest, AtLeastOneWorker) {
  TaskPool pool(0, "test-pool");
  EXPECT_EQ(pool.threads(), 1);
  std::promise<void> done;
  pool.Post([&done] { done.set_value(); });
  EXPECT_EQ(done.get_future().wait_for(std::chrono::seconds(10)), std::future_status::ready);
}

}  // namespace
}  // namespace mesa
