// Pending Wait calls of the scheduler: each has a task, a deadline and a
// callback, and leaves the registry exactly once (task finished, deadline
// passed, cancelled, or shutdown).
#ifndef FORQ_SERVER_SCHEDULER_WAIT_REGISTRY_H_
#define FORQ_SERVER_SCHEDULER_WAIT_REGISTRY_H_

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/node_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

#include "forq/v1/task.pb.h"

namespace forq::server {

// Thread-compatible: the scheduler calls it under its lock and runs the
// callbacks it returns after releasing the lock.
class WaitRegistry {
 public:
  // `terminal` is false when the wait timed out.
  using Done = std::function<void(absl::StatusOr<v1::Task>, bool terminal)>;

  WaitRegistry() = default;
  WaitRegistry(const WaitRegistry&) = delete;
  WaitRegistry& operator=(const WaitRegistry&) = delete;

  // Registers a wait for `task_id` until `deadline` (InfiniteFuture: no
  // timeout entry). Returns its handle, never 0.
  uint64_t Add(std::string task_id, absl::Time deadline, Done done);
  // Drops wait `handle` without calling it; false if it already left.
  bool Remove(uint64_t handle);
  // Removes and returns the waits of `task_id` (it finished).
  std::vector<Done> TakeTask(const std::string& task_id);
  // Removes and returns the waits whose deadline is <= `now`, with their
  // task ids, earliest first.
  std::vector<std::pair<std::string, Done>> TakeExpired(absl::Time now);
  // Removes and returns every wait.
  std::vector<Done> TakeAll();
  // Earliest deadline, or InfiniteFuture.
  absl::Time NextDeadline() const;

  // Whether `task_id` has waits, and every task that has.
  bool Has(const std::string& task_id) const {
    return by_task_.count(task_id) > 0;
  }
  std::vector<std::string> TaskIds() const;
  size_t size() const { return waits_.size(); }
  size_t deadlines() const { return deadlines_.size(); }

 private:
  struct Wait {
    std::string task_id;
    absl::Time deadline;
    Done done;
  };
  // Unlinks `it` from by_task_ and deadlines_ and erases it.
  Done Erase(absl::node_hash_map<uint64_t, Wait>::iterator it);

  uint64_t next_handle_ = 1;
  absl::node_hash_map<uint64_t, Wait> waits_;
  std::multimap<absl::Time, uint64_t> deadlines_;
  absl::node_hash_map<std::string, std::vector<uint64_t>> by_task_;
};

}  // namespace forq::server

#endif  // FORQ_SERVER_SCHEDULER_WAIT_REGISTRY_H_
