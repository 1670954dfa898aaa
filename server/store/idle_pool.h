// The idle read connections of a store (SqliteStore's readers with their
// prepared statements, PostgresStore's libpq connections): a read takes
// one, or opens a new one when none is idle, and gives it back when done.
// The most recently used one is taken first (its caches are warm); at most
// `max_idle` are kept, the rest are closed as they come back.
#ifndef FORQ_SERVER_STORE_IDLE_POOL_H_
#define FORQ_SERVER_STORE_IDLE_POOL_H_

#include <cstddef>
#include <memory>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"

#include "common/mutex.h"

namespace forq::server {

// Thread-safe.
template <typename T>
class IdlePool {
 public:
  explicit IdlePool(size_t max_idle) : max_idle_(max_idle) {}
  IdlePool(const IdlePool&) = delete;
  IdlePool& operator=(const IdlePool&) = delete;

  // The idle item given back last, or null if none is idle.
  std::unique_ptr<T> Take() ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(&mu_);
    if (idle_.empty()) return nullptr;
    std::unique_ptr<T> item = std::move(idle_.back());
    idle_.pop_back();
    return item;
  }

  // Keeps `item` for a later Take; closes it if `max_idle` are idle.
  void Give(std::unique_ptr<T> item) ABSL_LOCKS_EXCLUDED(mu_) {
    if (item == nullptr) return;
    MutexLock lock(&mu_);
    if (idle_.size() < max_idle_) idle_.push_back(std::move(item));
  }

  // Closes every idle item (the store closes, or they went stale).
  void Clear() ABSL_LOCKS_EXCLUDED(mu_) {
    std::vector<std::unique_ptr<T>> idle;
    {
      MutexLock lock(&mu_);
      idle.swap(idle_);
    }
    // Closed outside the lock: closing a connection may wait on its peer.
  }

  size_t idle() const ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(&mu_);
    return idle_.size();
  }

 private:
  const size_t max_idle_;
  mutable Mutex mu_;
  std::vector<std::unique_ptr<T>> idle_ ABSL_GUARDED_BY(mu_);
};

}  // namespace forq::server

#endif  // FORQ_SERVER_STORE_IDLE_POOL_H_
