// forqd's local Manager socket (--manager_socket=PATH): Manager operations
// from clients on forqd's host over a Unix stream socket, without gRPC. A
// blocking call costs one send and one receive on each side, as in Python's
// Manager; a unary gRPC call costs about three times as much CPU and time
// here (docs/manager.md, "Local socket"). The protocol is in
// api/forq/v1/manager.proto (LocalHello): protobuf's length-delimited
// messages, a hello with the caller's token, then one SessionRequest at a
// time, each answered with one SessionResponse.
#ifndef FORQ_SERVER_MANAGER_LOCAL_SOCKET_H_
#define FORQ_SERVER_MANAGER_LOCAL_SOCKET_H_

#include <sys/types.h>

#include <atomic>
#include <cstddef>
#include <list>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"

#include "common/mutex.h"
#include "common/scoped_fd.h"
#include "forq/v1/manager.pb.h"
#include "server/manager/manager_router.h"

namespace forq::server {

class Metrics;
class TokenTable;

struct LocalSocketOptions {
  std::string path;
  // Permission bits of the socket file: who may connect (0600: forqd's
  // user only; 0660: its group too).
  mode_t mode = 0600;
  // Largest request accepted (forqd --max_message_bytes).
  size_t max_message_bytes = 64 << 20;
  // Connections served at once; more are answered ResourceExhausted.
  size_t max_connections = 256;
  // Checked at the hello (role submit, as ManagerService.Call); null = no
  // token needed. Borrowed.
  const TokenTable* tokens = nullptr;
  // forq_manager_local_connections; may be null. Borrowed.
  Metrics* metrics = nullptr;
};

// Thread-safe. A thread per connection reads a request, runs its operations
// on the core, waits for their answers (a parked operation parks only its
// connection) and writes them back; a client that hangs up while parked
// has its operations cancelled within kHangupCheckMs.
class ManagerLocalSocket {
 public:
  // How often a connection waiting for a parked operation checks whether
  // its client hung up.
  static constexpr int kHangupCheckMs = 200;

  // Binds `options.path` and serves until Stop. A stale socket file (no
  // one listening) is replaced; FailedPrecondition when another process
  // listens there or the path is not a socket; InvalidArgument when the
  // path is too long for a Unix socket.
  static absl::StatusOr<std::unique_ptr<ManagerLocalSocket>> Listen(
      ManagerRouter& core, LocalSocketOptions options);
  ~ManagerLocalSocket();
  ManagerLocalSocket(const ManagerLocalSocket&) = delete;
  ManagerLocalSocket& operator=(const ManagerLocalSocket&) = delete;

  // Stops accepting, cancels parked operations, closes every connection,
  // joins the threads and removes the socket file. Idempotent. Call before
  // the Manager shuts down.
  void Stop() ABSL_LOCKS_EXCLUDED(mu_);

  const std::string& path() const { return options_.path; }

 private:
  struct Connection {
    ScopedFd fd;
    std::thread thread;
    std::atomic<bool> done{false};
  };

  ManagerLocalSocket(ManagerRouter& core, LocalSocketOptions options,
                     ScopedFd listener, ScopedFd stop);
  void AcceptLoop();
  // Joins finished connections; returns how many stay open.
  size_t ReapLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Open connections += delta, into forq_manager_local_connections.
  void CountOpen(int delta);
  void Serve(int fd);
  // Runs `request`, fills `response`; false when the client hung up (or
  // broke the protocol) while an operation was parked.
  bool Run(int fd, const ManagerCallOrigin& origin,
           const v1::SessionRequest& request, v1::SessionResponse* response);

  ManagerRouter& core_;
  const LocalSocketOptions options_;
  ScopedFd listener_;
  // An eventfd: readable once Stop was called.
  ScopedFd stop_;
  std::thread acceptor_;
  Mutex mu_;
  std::list<std::unique_ptr<Connection>> connections_ ABSL_GUARDED_BY(mu_);
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<int> open_{0};
};

}  // namespace forq::server

#endif  // FORQ_SERVER_MANAGER_LOCAL_SOCKET_H_
