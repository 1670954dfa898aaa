// The fork pool tests' fixture: a real ForkPool (supervisor and workers
// forked) whose callbacks a Recorder (pool_recorder_testing.h) keeps for
// the test to wait on.
#ifndef FORQ_WORKER_FORK_POOL_TESTING_H_
#define FORQ_WORKER_FORK_POOL_TESTING_H_

#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

#include "common/mutex.h"
#include "tests/testing/status_matchers.h"
#include "worker/fork_pool.h"
#include "worker/pool.h"
#include "worker/pool_recorder_testing.h"

namespace forq::worker::fork_pool_testing {

using ::forq::testing::IsOk;

class ForkPoolTest : public ::testing::Test {
 protected:
  void StartPool(ForkPoolOptions options) {
    FORQ_ASSERT_OK_AND_ASSIGN(pool_, CreateForkPool(std::move(options)));
    ASSERT_THAT(pool_->Start(rec_.Callbacks()), IsOk());
    ASSERT_TRUE(WaitIdle(pool_->size()));
  }
  void TearDown() override {
    if (pool_ != nullptr) pool_->Shutdown();
  }

  bool WaitIdle(int n) {
    return rec_.WaitFor([&] { return pool_->IdleCount() >= n; });
  }

  // Dispatches when a worker is idle.
  void Run(std::string task_id, std::string kind, std::string payload,
           absl::Duration timeout = absl::InfiniteDuration(), int attempt = 1) {
    ASSERT_TRUE(WaitIdle(1));
    Assignment a;
    a.task_id = std::move(task_id);
    a.attempt = attempt;
    a.kind = std::move(kind);
    a.payload = std::move(payload);
    a.timeout = timeout;
    ASSERT_THAT(pool_->Dispatch(std::move(a)), IsOk());
  }

  Outcome RunAndWait(std::string kind, std::string payload,
                     absl::Duration timeout = absl::InfiniteDuration()) {
    Run(absl::StrCat("t", ++counter_), std::move(kind), std::move(payload),
        timeout);
    std::optional<Outcome> o = rec_.NextOutcome();
    EXPECT_TRUE(o.has_value()) << "no outcome";
    return o.value_or(Outcome{});
  }

  // pid of the worker currently running `task_id`, or 0.
  int PidRunning(absl::string_view task_id) {
    for (const WorkerInfo& w : pool_->Workers()) {
      if (w.current_task_id == task_id) return w.pid;
    }
    return 0;
  }

  Recorder rec_;
  std::unique_ptr<WorkerPool> pool_;
  int counter_ = 0;
};

inline ForkPoolOptions Options(int workers) {
  ForkPoolOptions o;
  o.workers = workers;
  o.cancel_grace = absl::Milliseconds(500);
  return o;
}

// An assignment of `kind`, attempt 0.
inline Assignment Task(std::string id, std::string kind, std::string payload,
                       absl::Duration timeout = absl::InfiniteDuration()) {
  Assignment a;
  a.task_id = std::move(id);
  a.kind = std::move(kind);
  a.payload = std::move(payload);
  a.timeout = timeout;
  return a;
}

}  // namespace forq::worker::fork_pool_testing

#endif  // FORQ_WORKER_FORK_POOL_TESTING_H_
