// One thread and a heap of deadlines, shared by every parked Manager waiter
// and session lease, so blocking operations never cost a thread each.
#ifndef FORQ_SERVER_MANAGER_TIMER_QUEUE_H_
#define FORQ_SERVER_MANAGER_TIMER_QUEUE_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <queue>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/base/thread_annotations.h"

#include "common/mutex.h"

namespace forq::server {

// Thread-safe. Callbacks run on the timer thread, one at a time, with no
// TimerQueue lock held; they must not block for long. Uses the steady clock
// so wall-clock jumps neither fire nor delay timers.
class TimerQueue {
 public:
  using Clock = std::chrono::steady_clock;

  TimerQueue();
  // Stops the thread; pending callbacks never run.
  ~TimerQueue();
  TimerQueue(const TimerQueue&) = delete;
  TimerQueue& operator=(const TimerQueue&) = delete;

  // Runs `fn` at `when` (at once if it is past). Returns an id for Cancel;
  // never 0.
  uint64_t Schedule(Clock::time_point when, std::function<void()> fn)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Drops a pending callback; no-op if it already ran or is running.
  void Cancel(uint64_t id) ABSL_LOCKS_EXCLUDED(mu_);
  // Stops the thread (idempotent); later Schedule calls are ignored.
  void Stop() ABSL_LOCKS_EXCLUDED(mu_);
  // Callbacks scheduled and not yet run or cancelled.
  size_t pending() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Entry {
    Clock::time_point when;
    uint64_t id;
    bool operator>(const Entry& o) const {
      return when != o.when ? when > o.when : id > o.id;
    }
  };
  void Loop() ABSL_LOCKS_EXCLUDED(mu_);

  Mutex mu_;
  CondVar cv_;
  // Cancelled entries stay in the heap until they surface (lazy deletion);
  // the heap is rebuilt when they outnumber the live ones.
  std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>> heap_
      ABSL_GUARDED_BY(mu_);
  std::unordered_map<uint64_t, std::function<void()>> live_
      ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace forq::server

#endif  // FORQ_SERVER_MANAGER_TIMER_QUEUE_H_
