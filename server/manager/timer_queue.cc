#include "server/manager/timer_queue.h"

#include <utility>

#include "absl/time/time.h"

namespace forq::server {

TimerQueue::TimerQueue() : thread_([this] { Loop(); }) {}

TimerQueue::~TimerQueue() { Stop(); }

uint64_t TimerQueue::Schedule(Clock::time_point when,
                              std::function<void()> fn) {
  MutexLock lock(&mu_);
  if (stopping_) return 0;
  const uint64_t id = next_id_++;
  const bool earliest = heap_.empty() || when < heap_.top().when;
  heap_.push(Entry{when, id});
  live_.emplace(id, std::move(fn));
  if (earliest) cv_.Signal();
  return id;
}

void TimerQueue::Cancel(uint64_t id) {
  if (id == 0) return;
  std::function<void()> dropped;
  MutexLock lock(&mu_);
  auto it = live_.find(id);
  if (it == live_.end()) return;
  // Destroyed after the lock is released: a callback may own objects whose
  // destructors must not run under mu_.
  dropped = std::move(it->second);
  live_.erase(it);
  if (heap_.size() > 64 && heap_.size() > 2 * live_.size()) {
    std::vector<Entry> keep;
    keep.reserve(live_.size());
    while (!heap_.empty()) {
      if (live_.count(heap_.top().id) != 0) keep.push_back(heap_.top());
      heap_.pop();
    }
    heap_ = decltype(heap_)(std::greater<Entry>(), std::move(keep));
  }
}

void TimerQueue::Stop() {
  {
    MutexLock lock(&mu_);
    if (stopping_) return;
    stopping_ = true;
    cv_.SignalAll();
  }
  if (thread_.joinable()) thread_.join();
  std::unordered_map<uint64_t, std::function<void()>> dropped;
  MutexLock lock(&mu_);
  dropped.swap(live_);
}

size_t TimerQueue::pending() {
  MutexLock lock(&mu_);
  return live_.size();
}

void TimerQueue::Loop() {
  mu_.Lock();
  while (!stopping_) {
    if (heap_.empty()) {
      cv_.Wait(&mu_);
      continue;
    }
    const Entry top = heap_.top();
    auto it = live_.find(top.id);
    if (it == live_.end()) {
      heap_.pop();
      continue;
    }
    const Clock::time_point now = Clock::now();
    if (top.when > now) {
      cv_.WaitWithTimeout(&mu_, absl::FromChrono(top.when - now));
      continue;
    }
    heap_.pop();
    std::function<void()> fn = std::move(it->second);
    live_.erase(it);
    mu_.Unlock();
    fn();
    fn = nullptr;
    mu_.Lock();
  }
  mu_.Unlock();
}

}  // namespace forq::server
