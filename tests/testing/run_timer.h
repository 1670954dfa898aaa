// Measuring how long a blocking call took, counted in time in which the
// test could run.
#ifndef FORQ_TESTS_TESTING_RUN_TIMER_H_
#define FORQ_TESTS_TESTING_RUN_TIMER_H_

#include <algorithm>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

#include "common/mutex.h"

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

}  // namespace forq::testing

#endif  // FORQ_TESTS_TESTING_RUN_TIMER_H_
