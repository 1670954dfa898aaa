// libforq's end of forqd's local Manager socket (forqd --manager_socket,
// ManagerOptions::local_socket). Internal to libforq.
#ifndef FORQ_CLIENT_SRC_LOCAL_SOCKET_H_
#define FORQ_CLIENT_SRC_LOCAL_SOCKET_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

#include "common/mutex.h"
#include "forq/v1/manager.pb.h"

namespace forq::manager_internal {

// Thread-safe. Each call takes an idle connection (or opens one), sends
// its request and reads the answer on the calling thread; a connection
// that failed is dropped, a good one kept for the next call.
class LocalSocket {
 public:
  // `authorization` is "Bearer TOKEN" or empty. `rpc_timeout` bounds
  // connecting and, added to a blocking call's wait, each answer.
  LocalSocket(std::string path, std::string authorization,
              absl::Duration rpc_timeout);
  ~LocalSocket();
  LocalSocket(const LocalSocket&) = delete;
  LocalSocket& operator=(const LocalSocket&) = delete;

  // The operation's result, or its error. Unavailable when forqd cannot
  // be reached or the connection broke before the answer (the operation
  // may then have run), DeadlineExceeded when no answer came within
  // `wait` + rpc_timeout (infinite `wait`: no limit).
  absl::StatusOr<v1::ManagerResult> Call(const v1::ManagerCall& call,
                                         absl::Duration wait);

 private:
  class Connection;
  absl::StatusOr<std::unique_ptr<Connection>> Open() const;

  const std::string path_;
  const std::string authorization_;
  const absl::Duration rpc_timeout_;
  Mutex mu_;
  std::vector<std::unique_ptr<Connection>> idle_ ABSL_GUARDED_BY(mu_);
};

}  // namespace forq::manager_internal

#endif  // FORQ_CLIENT_SRC_LOCAL_SOCKET_H_
