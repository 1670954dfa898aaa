#include "client/src/task_tracker.h"

#include <utility>

namespace forq::client_internal {

bool TaskTracker::BeginSubmit() {
  MutexLock lock(&mu_);
  if (closed_) return false;
  ++submitting_;
  return true;
}

void TaskTracker::EndSubmit(const std::string& id) {
  MutexLock lock(&mu_);
  --submitting_;
  if (!id.empty()) ids_.push_back(id);
  cv_.SignalAll();
}

bool TaskTracker::BeginStream() {
  MutexLock lock(&mu_);
  if (closed_) return false;
  ++streams_;
  return true;
}

void TaskTracker::EndStream() {
  MutexLock lock(&mu_);
  --streams_;
  cv_.SignalAll();
}

void TaskTracker::Close() {
  MutexLock lock(&mu_);
  closed_ = true;
}

bool TaskTracker::closed() const {
  MutexLock lock(&mu_);
  return closed_;
}

std::vector<std::string> TaskTracker::TakeIds() {
  MutexLock lock(&mu_);
  // A submission in progress may be about to record an id.
  while (submitting_ > 0) cv_.Wait(&mu_);
  return std::exchange(ids_, {});
}

absl::Status TaskTracker::WaitAll() {
  std::vector<std::string> ids = TakeIds();
  // One message on the client's wait stream for all of them.
  absl::StatusOr<std::vector<v1::Task>> r = client_.WaitAll(ids);
  if (!r.ok()) {
    // Keep the ids so a later call can wait again.
    MutexLock lock(&mu_);
    ids_.insert(ids_.end(), ids.begin(), ids.end());
    return r.status();
  }
  MutexLock lock(&mu_);
  while (streams_ > 0) cv_.Wait(&mu_);
  return absl::OkStatus();
}

absl::Status TaskTracker::CancelAll() {
  std::vector<std::string> ids = TakeIds();
  absl::Status first;
  for (const std::string& id : ids) {
    absl::StatusOr<v1::Task> t = client_.Cancel(id);
    if (!t.ok() && t.status().code() != absl::StatusCode::kFailedPrecondition &&
        first.ok()) {
      first = t.status();
    }
  }
  // Cancelled tasks still have to reach a terminal state for WaitAll.
  MutexLock lock(&mu_);
  ids_.insert(ids_.end(), ids.begin(), ids.end());
  return first;
}

}  // namespace forq::client_internal
