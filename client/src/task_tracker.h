// Bookkeeping shared by Executor and Pool: which tasks and Map streams were
// started through one object, whether it still accepts work, and waiting for
// all of it to finish. Not part of the installed API.
#ifndef FORQ_CLIENT_SRC_TASK_TRACKER_H_
#define FORQ_CLIENT_SRC_TASK_TRACKER_H_

#include <string>
#include <vector>

#include "absl/status/status.h"

#include "common/mutex.h"
#include "forq/client.h"

namespace forq::client_internal {

// Thread-safe. No lock is held across an RPC.
class TaskTracker {
 public:
  explicit TaskTracker(Client& client) : client_(client) {}
  TaskTracker(const TaskTracker&) = delete;
  TaskTracker& operator=(const TaskTracker&) = delete;

  // Starts one submission; false once closed. Each true return must be
  // paired with EndSubmit.
  bool BeginSubmit() ABSL_LOCKS_EXCLUDED(mu_);
  // Ends a submission; records `id` unless empty (the submit failed).
  void EndSubmit(const std::string& id) ABSL_LOCKS_EXCLUDED(mu_);
  // Like BeginSubmit/EndSubmit for a Map stream.
  bool BeginStream() ABSL_LOCKS_EXCLUDED(mu_);
  void EndStream() ABSL_LOCKS_EXCLUDED(mu_);

  void Close() ABSL_LOCKS_EXCLUDED(mu_);
  bool closed() const ABSL_LOCKS_EXCLUDED(mu_);

  // Waits until no submission is in progress, every recorded task is
  // terminal and every stream has ended. Returns the first RPC error.
  absl::Status WaitAll() ABSL_LOCKS_EXCLUDED(mu_);
  // Cancels every recorded task that is not terminal yet. Returns the first
  // RPC error other than FailedPrecondition (already finished).
  absl::Status CancelAll() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  // Waits for in-progress submissions, then takes the recorded ids.
  std::vector<std::string> TakeIds() ABSL_LOCKS_EXCLUDED(mu_);

  Client& client_;
  mutable Mutex mu_;
  CondVar cv_;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  int submitting_ ABSL_GUARDED_BY(mu_) = 0;
  int streams_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<std::string> ids_ ABSL_GUARDED_BY(mu_);
};

}  // namespace forq::client_internal

#endif  // FORQ_CLIENT_SRC_TASK_TRACKER_H_
