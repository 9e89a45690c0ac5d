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
