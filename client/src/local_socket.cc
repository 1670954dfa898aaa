#include "client/src/local_socket.h"

#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>

#include <algorithm>
#include <cerrno>
#include <utility>

#include "absl/strings/str_cat.h"
#include "google/protobuf/io/zero_copy_stream_impl.h"

#include "api/delimited_io.h"
#include "client/src/manager_internal.h"
#include "common/errno_status.h"
#include "common/scoped_fd.h"

namespace forq::manager_internal {
namespace {

// Connections kept for later calls; more at once are closed after use.
constexpr size_t kMaxIdle = 16;
// The largest answer read (a protobuf message's own limit is 2 GiB).
constexpr size_t kMaxAnswerBytes = size_t{1} << 30;

}  // namespace

class LocalSocket::Connection {
 public:
  Connection(ScopedFd fd, const std::string& path)
      : fd_(std::move(fd)), in_(fd_.get()), path_(path) {}

  absl::Status Send(const google::protobuf::MessageLite& m) {
    return WriteDelimited(fd_.get(), m);
  }

  // Reads the next message, waiting at most `limit` for each part of it.
  absl::Status Receive(google::protobuf::MessageLite* m, absl::Duration limit) {
    if (limit != timeout_) {
      timeval tv{};
      if (limit != absl::InfiniteDuration()) {
        tv = absl::ToTimeval(std::max(limit, absl::Milliseconds(1)));
      }
      if (setsockopt(fd_.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) !=
          0) {
        return ErrnoToStatus(errno, "setsockopt SO_RCVTIMEO");
      }
      timeout_ = limit;
    }
    absl::StatusOr<bool> got = ReadDelimited(&in_, kMaxAnswerBytes, m);
    if (got.ok() && *got) return absl::OkStatus();
    const int err = in_.GetErrno();
    if (err == EAGAIN || err == EWOULDBLOCK) {
      return absl::DeadlineExceededError(
          absl::StrCat("no answer on the local Manager socket ", path_,
                       " within ", absl::FormatDuration(limit)));
    }
    if (got.ok()) {
      return absl::UnavailableError(absl::StrCat(
          "forqd closed its end of the local Manager socket ", path_));
    }
    return got.status();
  }

  v1::SessionRequest request;
  v1::SessionResponse response;

 private:
  ScopedFd fd_;
  google::protobuf::io::FileInputStream in_;
  const std::string& path_;
  absl::Duration timeout_ = absl::InfiniteDuration();
};

LocalSocket::LocalSocket(std::string path, std::string authorization,
                         absl::Duration rpc_timeout)
    : path_(std::move(path)),
      authorization_(std::move(authorization)),
      rpc_timeout_(rpc_timeout) {}

LocalSocket::~LocalSocket() = default;

absl::StatusOr<std::unique_ptr<LocalSocket::Connection>> LocalSocket::Open()
    const {
  absl::StatusOr<sockaddr_un> addr = UnixSocketAddress(path_, "local_socket");
  if (!addr.ok()) return addr.status();
  ScopedFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return ErrnoToStatus(errno, "socket");
  if (connect(fd.get(), reinterpret_cast<const sockaddr*>(&*addr),
              sizeof(*addr)) != 0) {
    const int err = errno;
    const std::string what =
        absl::StrCat("local Manager socket ", path_, ": ", ErrnoText(err));
    if (err == EACCES || err == EPERM) {
      return absl::PermissionDeniedError(
          absl::StrCat(what,
                       " (forqd --manager_socket_mode says who may "
                       "connect)"));
    }
    return absl::UnavailableError(absl::StrCat(
        what, " (is forqd running with --manager_socket=", path_, "?)"));
  }
  auto c = std::make_unique<Connection>(std::move(fd), path_);
  v1::LocalHello hello;
  hello.set_authorization(authorization_);
  v1::LocalHelloReply reply;
  // A refused connection (forqd at its connection cap) may be closed
  // before the hello goes out: its reply is read all the same.
  const absl::Status sent = c->Send(hello);
  absl::Status s = c->Receive(&reply, rpc_timeout_);
  if (!s.ok()) return sent.ok() ? s : sent;
  if (reply.code() != 0) return StatusFromCode(reply.code(), reply.message());
  return c;
}

absl::StatusOr<v1::ManagerResult> LocalSocket::Call(const v1::ManagerCall& call,
                                                    absl::Duration wait) {
  std::unique_ptr<Connection> c;
  {
    MutexLock lock(&mu_);
    if (!idle_.empty()) {
      c = std::move(idle_.back());
      idle_.pop_back();
    }
  }
  const bool reused = c != nullptr;
  if (!reused) {
    absl::StatusOr<std::unique_ptr<Connection>> opened = Open();
    if (!opened.ok()) return opened.status();
    c = *std::move(opened);
  }
  c->request.Clear();
  v1::SessionOp* op = c->request.add_ops();
  op->set_id(1);
  *op->mutable_call() = call;
  absl::Status s = c->Send(c->request);
  if (!s.ok() && reused) {
    // forqd closed the idle connection (it restarted): nothing was read,
    // so the request goes once more on a new connection.
    absl::StatusOr<std::unique_ptr<Connection>> opened = Open();
    if (!opened.ok()) return opened.status();
    opened->get()->request.Swap(&c->request);
    c = *std::move(opened);
    s = c->Send(c->request);
  }
  if (s.ok()) {
    s = c->Receive(&c->response, wait == absl::InfiniteDuration()
                                     ? wait
                                     : wait + rpc_timeout_);
  }
  if (!s.ok()) return s;
  if (c->response.results_size() != 1) {
    return absl::InternalError(
        absl::StrCat("the local Manager socket answered ",
                     c->response.results_size(), " results for 1 operation"));
  }
  v1::SessionResult& r = *c->response.mutable_results(0);
  absl::StatusOr<v1::ManagerResult> out = TakeResult(r);
  // Id 0 with an error: the request as a whole was refused, and forqd
  // closed the connection.
  if (out.ok() || r.id() != 0) {
    MutexLock lock(&mu_);
    if (idle_.size() < kMaxIdle) idle_.push_back(std::move(c));
  }
  return out;
}

}  // namespace forq::manager_internal
