// A worker pool's callbacks, recorded for tests to wait on: the fork
// pool's fixture (fork_pool_testing.h), the launcher tests and pool_bench
// use it (header only, no test framework).
#ifndef FORQ_WORKER_POOL_RECORDER_TESTING_H_
#define FORQ_WORKER_POOL_RECORDER_TESTING_H_

#include <deque>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

#include "common/mutex.h"
#include "worker/pool.h"

namespace forq::worker::fork_pool_testing {

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
      last_idle_ = absl::Now();
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

  // The n-th worker exit (from 1), once it happened.
  std::optional<WorkerExit> NthExit(size_t n = 1,
                                    absl::Duration timeout = kWait) {
    if (!WaitFor(
            [&] {
              mu_.AssertHeld();
              return exits_.size() >= n;
            },
            timeout)) {
      return std::nullopt;
    }
    MutexLock l(&mu_);
    return exits_[n - 1];
  }

  // Waits until the pool has called on_worker_idle `n` times in all.
  bool WaitIdleEvents(int n, absl::Duration timeout = kWait) {
    return WaitFor(
        [&] {
          mu_.AssertHeld();
          return idle_events_ >= n;
        },
        timeout);
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
  absl::Time last_idle_ ABSL_GUARDED_BY(mu_);
  int progress_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace forq::worker::fork_pool_testing

#endif  // FORQ_WORKER_POOL_RECORDER_TESTING_H_
