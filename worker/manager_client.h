// The Manager as tasks see it: a typed client over TaskContext::Call. The
// request/reply types and their encoding are in worker/manager_protocol.h.
#ifndef FORQ_WORKER_MANAGER_CLIENT_H_
#define FORQ_WORKER_MANAGER_CLIENT_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

#include "worker/handler.h"
#include "worker/manager_protocol.h"

namespace forq::worker {

struct ManagerClientOptions {
  // Lease of the session this client opens for locks and permits.
  absl::Duration session_ttl = absl::Seconds(30);
};

// A typed Manager client for one handler call, over its TaskContext.
// Thread-compatible (like TaskContext). Blocking operations are also bounded
// by the task's deadline. The session for locks and permits is opened on
// first use, renewed by every call that names it, and closed by the
// destructor, so whatever the task still holds is released when it returns;
// if the worker dies instead, the session expires after session_ttl.
class ManagerClient {
 public:
  explicit ManagerClient(TaskContext& ctx, ManagerClientOptions options = {});
  ~ManagerClient();
  ManagerClient(const ManagerClient&) = delete;
  ManagerClient& operator=(const ManagerClient&) = delete;

  // Sends any request (the typed helpers below are shorthands).
  absl::StatusOr<ManagerReply> Call(const ManagerRequest& request);

  absl::StatusOr<std::string> DictGet(absl::string_view name,
                                      absl::string_view key);
  absl::Status DictSet(absl::string_view name, absl::string_view key,
                       absl::string_view value);
  absl::StatusOr<std::string> ListGet(absl::string_view name, int64_t index);
  absl::Status ListSet(absl::string_view name, int64_t index,
                       absl::string_view value);
  absl::StatusOr<int64_t> ListAppend(absl::string_view name,
                                     absl::string_view value);
  // Atomic add; returns the new value as decimal text.
  absl::StatusOr<std::string> ListAdd(absl::string_view name, int64_t index,
                                      absl::string_view delta);
  absl::StatusOr<std::string> ValueAdd(absl::string_view name,
                                       absl::string_view delta);
  // Blocks while the queue is full; ResourceExhausted after `timeout`.
  absl::Status QueuePut(absl::string_view name, absl::string_view item,
                        absl::Duration timeout = absl::InfiniteDuration());
  // Blocks while the queue is empty; DeadlineExceeded after `timeout`.
  absl::StatusOr<std::string> QueueGet(
      absl::string_view name,
      absl::Duration timeout = absl::InfiniteDuration());
  // Acquires a Lock for this client's session; returns its fencing token.
  // DeadlineExceeded when `timeout` passes first.
  absl::StatusOr<uint64_t> LockAcquire(
      absl::string_view name,
      absl::Duration timeout = absl::InfiniteDuration());
  absl::Status LockRelease(absl::string_view name);
  absl::Status EventSet(absl::string_view name);
  // True if set, false if `timeout` passed first.
  absl::StatusOr<bool> EventWait(absl::string_view name,
                                 absl::Duration timeout);

  // The session id, opening it if needed.
  absl::StatusOr<std::string> Session();
  // Closes the session now (releasing its holdings); a later lock op opens a
  // new one.
  absl::Status CloseSession();

 private:
  int64_t TimeoutMs(absl::Duration timeout) const;

  TaskContext& ctx_;
  const ManagerClientOptions options_;
  std::string session_;
};

}  // namespace forq::worker

#endif  // FORQ_WORKER_MANAGER_CLIENT_H_
