// One-shot latch for store tests: a done callback calls Notify(), the test
// thread Wait()s. Built on forq::Mutex so ThreadSanitizer sees the handoff
// (absl::Notification lives in Debian's uninstrumented libabsl).
#ifndef FORQ_SERVER_STORE_TEST_LATCH_H_
#define FORQ_SERVER_STORE_TEST_LATCH_H_

#include "absl/base/thread_annotations.h"

#include "common/mutex.h"

namespace forq::server {

// Thread-safe.
class TestLatch {
 public:
  TestLatch() = default;
  TestLatch(const TestLatch&) = delete;
  TestLatch& operator=(const TestLatch&) = delete;

  void Notify() ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(&mu_);
    done_ = true;
    cv_.SignalAll();
  }
  // Blocks until Notify() has been called.
  void Wait() ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(&mu_);
    while (!done_) {
      cv_.Wait(&mu_);
    }
  }
  bool HasBeenNotified() ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(&mu_);
    return done_;
  }

 private:
  Mutex mu_;
  CondVar cv_;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace forq::server

#endif  // FORQ_SERVER_STORE_TEST_LATCH_H_
