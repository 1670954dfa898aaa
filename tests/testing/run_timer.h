// Measuring and bounding one blocking call, counted in time in which the
// test could run.
#ifndef FORQ_TESTS_TESTING_RUN_TIMER_H_
#define FORQ_TESTS_TESTING_RUN_TIMER_H_

#include <algorithm>
#include <functional>
#include <optional>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

#include "common/mutex.h"
#include "tests/testing/run_budget.h"

namespace forq::testing {

// The run-time counterpart of `absl::Now() - start`, for a test that bounds
// the time one blocking call took (a RunExec, a Wait RPC) and so cannot
// spend a RunBudget slice by slice itself. A thread wakes every kTick and
// adds the time since its last wake-up, but at most 2 * kTick: a stop of
// the test's processes (SIGSTOP of them all, a suspended VM) adds about
// 2 * kTick however long it lasts, while a call that really hangs is
// measured in full.
//
// Usage:
//   RunTimer timer;
//   Blocks();
//   EXPECT_LT(timer.Elapsed(), absl::Seconds(5));
//
// Thread-safe.
class RunTimer {
 public:
  static constexpr absl::Duration kTick = absl::Milliseconds(100);

  RunTimer() : ticker_([this] { Tick(); }) {}
  ~RunTimer() {
    {
      MutexLock lock(&mu_);
      stop_ = true;
      cv_.Signal();
    }
    ticker_.join();
  }
  RunTimer(const RunTimer&) = delete;
  RunTimer& operator=(const RunTimer&) = delete;

  // Run time since construction.
  absl::Duration Elapsed() const ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(&mu_);
    return ran_ + std::min(absl::Now() - last_, 2 * kTick);
  }

 private:
  void Tick() ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(&mu_);
    while (!stop_) {
      cv_.WaitWithTimeout(&mu_, kTick);
      const absl::Time now = absl::Now();
      ran_ += std::min(now - last_, 2 * kTick);
      last_ = now;
    }
  }

  mutable Mutex mu_;
  CondVar cv_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  absl::Duration ran_ ABSL_GUARDED_BY(mu_);
  absl::Time last_ ABSL_GUARDED_BY(mu_) = absl::Now();
  std::thread ticker_;  // last: starts once the members above are set
};

// Calls `on_expiry` once `budget` of time in which the test ran
// (RunBudget) has passed, unless destroyed first: a bound in run time for a
// call with no deadline of its own, such as a gRPC stream read to its end
// (`on_expiry` cancels its context). `on_expiry` runs on the watchdog's
// thread and must not destroy the watchdog.
//
// Thread-safe.
class RunWatchdog {
 public:
  RunWatchdog(absl::Duration budget, std::function<void()> on_expiry)
      : thread_([this, budget, on_expiry = std::move(on_expiry)] {
          Watch(budget, on_expiry);
        }) {}
  ~RunWatchdog() {
    {
      MutexLock lock(&mu_);
      disarmed_ = true;
      cv_.Signal();
    }
    thread_.join();
  }
  RunWatchdog(const RunWatchdog&) = delete;
  RunWatchdog& operator=(const RunWatchdog&) = delete;

  // Whether `on_expiry` was called.
  bool expired() const ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(&mu_);
    return expired_;
  }

 private:
  void Watch(absl::Duration budget, const std::function<void()>& on_expiry)
      ABSL_LOCKS_EXCLUDED(mu_) {
    RunBudget run(budget);
    MutexLock lock(&mu_);
    while (!disarmed_) {
      const std::optional<absl::Time> until = run.NextSlice();
      if (!until) {
        expired_ = true;
        on_expiry();
        return;
      }
      cv_.WaitWithTimeout(&mu_, *until - absl::Now());
    }
  }

  mutable Mutex mu_;
  CondVar cv_;
  bool disarmed_ ABSL_GUARDED_BY(mu_) = false;
  bool expired_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;  // last: starts once the members above are set
};

// Calls `call(timeout)`, a call timed by the wall clock (forqd's Wait, a
// gRPC deadline), and calls it again with what is left while
// `timed_out(result)` holds but the test ran less than `timeout` since the
// first call (the test and forqd were stopped meanwhile). Returns the last
// result.
template <typename Call, typename TimedOut>
auto CallForRunTime(absl::Duration timeout, Call call, TimedOut timed_out) {
  RunTimer timer;
  auto result = call(timeout);
  while (timed_out(result)) {
    const absl::Duration left = timeout - timer.Elapsed();
    if (left <= absl::ZeroDuration()) break;
    result = call(left);
  }
  return result;
}

}  // namespace forq::testing

#endif  // FORQ_TESTS_TESTING_RUN_TIMER_H_
