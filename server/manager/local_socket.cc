#include "server/manager/local_socket.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "google/protobuf/io/zero_copy_stream_impl.h"
#include "spdlog/spdlog.h"

#include "api/delimited_io.h"
#include "common/errno_status.h"
#include "server/auth/token_auth.h"
#include "server/manager/manager_messages.h"
#include "server/metrics/metrics.h"

namespace forq::server {
namespace {

// Shown in token errors, as a gRPC method would be.
constexpr char kWhat[] = "the local Manager socket";

// A hello is a token: far below this.
constexpr size_t kMaxHelloBytes = 64 << 10;
// Operations of one request (as in flight on the Session stream).
constexpr int kMaxOps = 100000;
// How long a new connection may take to send its hello.
constexpr int kHelloTimeoutSeconds = 10;

// The answers of one request, filled by the operations' callbacks.
struct Answers {
  Mutex mu;
  CondVar cv;
  v1::SessionResponse response ABSL_GUARDED_BY(mu);
  int missing ABSL_GUARDED_BY(mu) = 0;
};

// Removes a socket file nobody listens on (left by a forqd that was
// killed); refuses to touch anything else.
absl::Status ClearStale(const std::string& path, const sockaddr_un& addr) {
  struct stat st {};
  if (lstat(path.c_str(), &st) != 0) {
    const int err = errno;
    if (err == ENOENT) return absl::OkStatus();
    return ErrnoToStatus(err, absl::StrCat("--manager_socket: ", path));
  }
  if (!S_ISSOCK(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--manager_socket: ", path, " exists and is not a socket"));
  }
  ScopedFd probe(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!probe.valid()) return ErrnoToStatus(errno, "socket");
  if (connect(probe.get(), reinterpret_cast<const sockaddr*>(&addr),
              sizeof(addr)) == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("--manager_socket: another process listens on ", path));
  }
  if (unlink(path.c_str()) != 0) {
    return ErrnoToStatus(errno, absl::StrCat("removing stale ", path));
  }
  return absl::OkStatus();
}

// True when the client hung up (or sent a request before its answer, which
// the protocol does not allow).
bool HungUp(int fd) {
  pollfd p{fd, POLLIN | POLLRDHUP, 0};
  const int n = poll(&p, 1, 0);
  if (n <= 0) return false;
  return p.revents != 0;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ManagerLocalSocket>> ManagerLocalSocket::Listen(
    ManagerRouter& core, LocalSocketOptions options) {
  absl::StatusOr<sockaddr_un> addr =
      UnixSocketAddress(options.path, "--manager_socket");
  if (!addr.ok()) return addr.status();
  absl::Status s = ClearStale(options.path, *addr);
  if (!s.ok()) return s;
  ScopedFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return ErrnoToStatus(errno, "socket");
  if (bind(fd.get(), reinterpret_cast<const sockaddr*>(&*addr),
           sizeof(*addr)) != 0) {
    return ErrnoToStatus(errno,
                         absl::StrCat("--manager_socket: bind ", options.path));
  }
  // Before listen(): nobody can connect while the file still has the
  // umask's wider bits.
  if (chmod(options.path.c_str(), options.mode) != 0 ||
      listen(fd.get(), 128) != 0) {
    const int err = errno;
    unlink(options.path.c_str());
    return ErrnoToStatus(err, absl::StrCat("--manager_socket: ", options.path));
  }
  ScopedFd stop(eventfd(0, EFD_CLOEXEC));
  if (!stop.valid()) {
    const int err = errno;
    unlink(options.path.c_str());
    return ErrnoToStatus(err, "eventfd");
  }
  std::unique_ptr<ManagerLocalSocket> sock(new ManagerLocalSocket(
      core, std::move(options), std::move(fd), std::move(stop)));
  sock->acceptor_ = std::thread([p = sock.get()] { p->AcceptLoop(); });
  return sock;
}

ManagerLocalSocket::ManagerLocalSocket(ManagerRouter& core,
                                       LocalSocketOptions options,
                                       ScopedFd listener, ScopedFd stop)
    : core_(core),
      options_(std::move(options)),
      listener_(std::move(listener)),
      stop_(std::move(stop)) {}

ManagerLocalSocket::~ManagerLocalSocket() { Stop(); }

void ManagerLocalSocket::Stop() {
  std::list<std::unique_ptr<Connection>> all;
  {
    MutexLock lock(&mu_);
    if (stopped_) return;
    stopped_ = true;
  }
  const uint64_t one = 1;
  (void)!write(stop_.get(), &one, sizeof(one));
  if (acceptor_.joinable()) acceptor_.join();
  {
    MutexLock lock(&mu_);
    all.swap(connections_);
  }
  // Wakes each connection's read or hang-up check.
  for (const auto& c : all) shutdown(c->fd.get(), SHUT_RDWR);
  for (const auto& c : all) c->thread.join();
  unlink(options_.path.c_str());
}

size_t ManagerLocalSocket::ReapLocked() {
  for (auto it = connections_.begin(); it != connections_.end();) {
    if ((*it)->done.load()) {
      (*it)->thread.join();
      it = connections_.erase(it);
    } else {
      ++it;
    }
  }
  return connections_.size();
}

void ManagerLocalSocket::CountOpen(int delta) {
  const int open = open_.fetch_add(delta) + delta;
  if (options_.metrics != nullptr) {
    options_.metrics->SetManagerLocalConnections(open);
  }
}

void ManagerLocalSocket::AcceptLoop() {
  for (;;) {
    pollfd p[2] = {{listener_.get(), POLLIN, 0}, {stop_.get(), POLLIN, 0}};
    if (poll(p, 2, -1) < 0) continue;  // EINTR
    if (p[1].revents != 0) return;
    ScopedFd fd(accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!fd.valid()) {
      const int err = errno;
      if (err == EINTR || err == ECONNABORTED || err == EAGAIN) continue;
      // Out of descriptors: say so, and let connections close before the
      // next attempt instead of spinning.
      spdlog::warn("local Manager socket: accept: {}", ErrnoText(err));
      pollfd wait{stop_.get(), POLLIN, 0};
      (void)poll(&wait, 1, 100);
      continue;
    }
    MutexLock lock(&mu_);
    if (ReapLocked() >= options_.max_connections) {
      v1::LocalHelloReply refuse;
      refuse.set_code(static_cast<int>(absl::StatusCode::kResourceExhausted));
      refuse.set_message(
          absl::StrCat("the local Manager socket serves at most ",
                       options_.max_connections, " connections"));
      (void)WriteDelimited(fd.get(), refuse);
      continue;
    }
    auto c = std::make_unique<Connection>();
    c->fd = std::move(fd);
    Connection* raw = c.get();
    CountOpen(1);
    c->thread = std::thread([this, raw] {
      Serve(raw->fd.get());
      // The client sees the end now; the descriptor stays open (and its
      // number unused) until the connection is reaped, so Stop cannot
      // shut down a descriptor reused by someone else.
      shutdown(raw->fd.get(), SHUT_RDWR);
      CountOpen(-1);
      raw->done.store(true);
    });
    connections_.push_back(std::move(c));
  }
}

void ManagerLocalSocket::Serve(int fd) {
  google::protobuf::io::FileInputStream in(fd);
  v1::LocalHello hello;
  // A connection that never says hello does not keep its thread.
  timeval limit{kHelloTimeoutSeconds, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof(limit));
  absl::StatusOr<bool> got = ReadDelimited(&in, kMaxHelloBytes, &hello);
  if (!got.ok() || !*got) return;
  limit = timeval{0, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof(limit));
  const absl::Status auth =
      options_.tokens == nullptr
          ? absl::OkStatus()
          : options_.tokens->Authorize(hello.authorization(), Role::kSubmit,
                                       kWhat);
  v1::LocalHelloReply welcome;
  welcome.set_code(static_cast<int>(auth.code()));
  welcome.set_message(std::string(auth.message()));
  if (!WriteDelimited(fd, welcome).ok() || !auth.ok()) return;
  // The tokens the hello was checked against; after a reload (SIGHUP) the
  // next request checks the token again, as every gRPC call would.
  uint64_t tokens_seen =
      options_.tokens == nullptr ? 0 : options_.tokens->generation();

  ManagerCallOrigin origin;
  origin.authorization = hello.authorization();
  v1::SessionRequest request;
  for (;;) {
    got = ReadDelimited(&in, options_.max_message_bytes, &request);
    if (got.ok() && !*got) return;  // the client closed
    v1::SessionResponse response;
    if (got.ok() && options_.tokens != nullptr &&
        options_.tokens->generation() != tokens_seen) {
      tokens_seen = options_.tokens->generation();
      const absl::Status again = options_.tokens->Authorize(
          hello.authorization(), Role::kSubmit, kWhat);
      if (!again.ok()) got = again;
    }
    if (got.ok() && request.ops_size() > kMaxOps) {
      got = absl::ResourceExhaustedError(
          absl::StrCat(request.ops_size(),
                       " operations in one request; the limit is ", kMaxOps));
    }
    if (!got.ok()) {
      // Say why, then close (after bytes that do not parse nothing more
      // can be read in step).
      ToSessionResult(0, got.status(), response.add_results());
      (void)WriteDelimited(fd, response);
      return;
    }
    if (!Run(fd, origin, request, &response)) return;
    if (!WriteDelimited(fd, response).ok()) return;
  }
}

bool ManagerLocalSocket::Run(int fd, const ManagerCallOrigin& origin,
                             const v1::SessionRequest& request,
                             v1::SessionResponse* response) {
  const int n = request.ops_size();
  // Shared with the operations' callbacks, which may run on other threads
  // (a parked operation) and, for a client gone, after this returns.
  auto answers = std::make_shared<Answers>();
  {
    MutexLock lock(&answers->mu);
    for (int i = 0; i < n; ++i) answers->response.add_results();
    answers->missing = n;
  }
  auto answer = [answers](int i, uint64_t id,
                          absl::StatusOr<worker::ManagerReply> r) {
    MutexLock lock(&answers->mu);
    ToSessionResult(id, std::move(r), answers->response.mutable_results(i));
    if (--answers->missing == 0) answers->cv.SignalAll();
  };
  std::vector<uint64_t> parked;
  {
    // The request's changes go to the store as one group commit.
    const ManagerRouter::WriteHold hold(core_, n > 1);
    for (int i = 0; i < n; ++i) {
      const v1::SessionOp& op = request.ops(i);
      absl::StatusOr<worker::ManagerRequest> req =
          op.cancel()
              ? absl::InvalidArgumentError(
                    "cancel: a local socket connection carries one request "
                    "at a time; there is nothing to cancel")
              : FromCall(op.call(), StreamTimeoutMs(op.call().has_timeout(),
                                                    op.call().timeout()));
      if (!req.ok()) {
        answer(i, op.id(), req.status());
        continue;
      }
      const uint64_t waiter = core_.Execute(
          *std::move(req),
          [answer, i, id = op.id()](absl::StatusOr<worker::ManagerReply> r) {
            answer(i, id, std::move(r));
          },
          "", origin);
      if (waiter != 0) parked.push_back(waiter);
    }
  }
  // Most operations answer inline. A parked one: wait for it while
  // checking that the client is still there.
  bool client_gone = false;
  answers->mu.Lock();
  while (answers->missing > 0) {
    if (client_gone) {
      answers->cv.Wait(&answers->mu);
      continue;
    }
    if (!answers->cv.WaitWithTimeout(&answers->mu,
                                     absl::Milliseconds(kHangupCheckMs))) {
      continue;  // signalled
    }
    answers->mu.Unlock();
    client_gone = HungUp(fd);
    if (client_gone) {
      for (uint64_t w : parked) core_.Cancel(w);
    }
    answers->mu.Lock();
  }
  if (!client_gone) response->Swap(&answers->response);
  answers->mu.Unlock();
  return !client_gone;
}

}  // namespace forq::server
