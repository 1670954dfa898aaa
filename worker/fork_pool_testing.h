// The fork pool tests' fixture: a real ForkPool (supervisor and workers
// forked) whose callbacks a Recorder keeps for the test to wait on.
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

namespace forq::worker::fork_pool_testing {

using ::forq::testing::IsOk;

constexpr absl::Duration kWait = absl::Seconds(20);

// Records every callback of a pool and lets the test wait for them.
class Recorder {
 public:
  PoolCallbacks Callbacks() {
    PoolCallbacks cb;
    cb.on_outcome = [this](Outcome o) {
      MutexLock l(&mu_);
      outcomes_.push_back(std::move(o));
      cv_.SignalAll();
    };
    cb.on_progress = [this](absl::string_view, int, double f,
                            absl::string_view) {
      MutexLock l(&mu_);
      ++progress_;
      cv_.SignalAll();
    };
    cb.on_worker_idle = [this] {
      MutexLock l(&mu_);
      ++idle_events_;
      cv_.SignalAll();
    };
    cb.on_worker_exit = [this](const WorkerExit& x) {
      MutexLock l(&mu_);
      exits_.push_back(x);
      cv_.SignalAll();
    };
    cb.on_call = [this](
                     absl::string_view task_id, std::string request,
                     std::function<void(absl::StatusOr<std::string>)> reply) {
      MutexLock l(&mu_);
      calls_.push_back(
          {std::string(task_id), std::move(request), std::move(reply)});
      cv_.SignalAll();
    };
    return cb;
  }

  // Waits until `pred` holds (checked under the lock) or the deadline.
  template <typename Pred>
  bool WaitFor(Pred pred, absl::Duration timeout = kWait) {
    const absl::Time deadline = absl::Now() + timeout;
    MutexLock l(&mu_);
    while (!pred()) {
      const absl::Duration left = deadline - absl::Now();
      if (left <= absl::ZeroDuration()) return false;
      cv_.WaitWithTimeout(&mu_, left);
    }
    return true;
  }

  // Next outcome, in arrival order.
  std::optional<Outcome> NextOutcome(absl::Duration timeout = kWait) {
    if (!WaitFor(
            [&] {
              mu_.AssertHeld();
              return consumed_ < outcomes_.size();
            },
            timeout)) {
      return std::nullopt;
    }
    MutexLock l(&mu_);
    return outcomes_[consumed_++];
  }

  std::vector<WorkerExit> exits() {
    MutexLock l(&mu_);
    return exits_;
  }
  size_t exit_count() {
    MutexLock l(&mu_);
    return exits_.size();
  }
  int progress() {
    MutexLock l(&mu_);
    return progress_;
  }

  struct Call {
    std::string task_id;
    std::string request;
    std::function<void(absl::StatusOr<std::string>)> reply;
  };
  std::optional<Call> TakeCall(absl::Duration timeout = kWait) {
    if (!WaitFor(
            [&] {
              mu_.AssertHeld();
              return !calls_.empty();
            },
            timeout)) {
      return std::nullopt;
    }
    MutexLock l(&mu_);
    Call c = std::move(calls_.front());
    calls_.pop_front();
    return c;
  }

  Mutex mu_;
  CondVar cv_;
  std::vector<Outcome> outcomes_ ABSL_GUARDED_BY(mu_);
  size_t consumed_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<WorkerExit> exits_ ABSL_GUARDED_BY(mu_);
  std::deque<Call> calls_ ABSL_GUARDED_BY(mu_);
  int idle_events_ ABSL_GUARDED_BY(mu_) = 0;
  int progress_ ABSL_GUARDED_BY(mu_) = 0;
};

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
