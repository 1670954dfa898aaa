// Test helper: a TCP proxy on 127.0.0.1 (kernel-chosen port) that forwards
// every connection to a target port, until Stop() closes the listener and
// every forwarded connection: the network partition between a forqd node
// and its database.
#ifndef FORQ_TESTS_POSTGRES_TCP_PROXY_H_
#define FORQ_TESTS_POSTGRES_TCP_PROXY_H_

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

#include "common/mutex.h"

namespace forq::testing {

// Thread-safe.
class TcpProxy {
 public:
  static absl::StatusOr<std::unique_ptr<TcpProxy>> Start(int target_port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return absl::InternalError("socket");
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    if (bind(fd, reinterpret_cast<sockaddr*>(&addr), len) != 0 ||
        listen(fd, 64) != 0 ||
        getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      close(fd);
      return absl::InternalError("bind/listen");
    }
    auto proxy = std::unique_ptr<TcpProxy>(new TcpProxy(fd, target_port));
    proxy->port_ = ntohs(addr.sin_port);
    proxy->accept_thread_ = std::thread([p = proxy.get()] { p->AcceptLoop(); });
    return proxy;
  }
  ~TcpProxy() {
    Stop();
    for (std::thread& t : pumps_) t.join();
    MutexLock lock(&mu_);
    for (int fd : fds_) close(fd);
  }
  TcpProxy(const TcpProxy&) = delete;
  TcpProxy& operator=(const TcpProxy&) = delete;

  int port() const { return port_; }

  // Cuts every connection and refuses new ones. Idempotent.
  void Stop() {
    if (stopped_.exchange(true)) return;
    shutdown(listen_fd_, SHUT_RDWR);
    if (accept_thread_.joinable()) accept_thread_.join();
    close(listen_fd_);
    MutexLock lock(&mu_);
    for (int fd : fds_) shutdown(fd, SHUT_RDWR);
  }

 private:
  TcpProxy(int fd, int target) : listen_fd_(fd), target_port_(target) {}

  void AcceptLoop() {
    while (!stopped_.load()) {
      int client = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (client < 0) return;
      int server = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_in addr{};
      addr.sin_family = AF_INET;
      addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      addr.sin_port = htons(static_cast<uint16_t>(target_port_));
      if (server < 0 || connect(server, reinterpret_cast<sockaddr*>(&addr),
                                sizeof(addr)) != 0) {
        close(client);
        if (server >= 0) close(server);
        continue;
      }
      {
        MutexLock lock(&mu_);
        fds_.push_back(client);
        fds_.push_back(server);
      }
      pumps_.emplace_back([client, server] { Pump(client, server); });
    }
  }

  // Copies both ways until either side closes or is shut down.
  static void Pump(int a, int b) {
    char buf[16384];
    pollfd fds[2] = {{a, POLLIN, 0}, {b, POLLIN, 0}};
    for (;;) {
      if (poll(fds, 2, -1) < 0) break;
      bool done = false;
      for (int i = 0; i < 2 && !done; ++i) {
        if (fds[i].revents == 0) continue;
        ssize_t n = read(fds[i].fd, buf, sizeof(buf));
        if (n <= 0) {
          done = true;
          break;
        }
        const int out = fds[1 - i].fd;
        for (ssize_t off = 0; off < n;) {
          ssize_t w = write(out, buf + off, static_cast<size_t>(n - off));
          if (w <= 0) {
            done = true;
            break;
          }
          off += w;
        }
      }
      if (done) break;
    }
    shutdown(a, SHUT_RDWR);
    shutdown(b, SHUT_RDWR);
  }

  const int listen_fd_;
  const int target_port_;
  int port_ = 0;
  std::atomic<bool> stopped_{false};
  std::thread accept_thread_;
  std::vector<std::thread> pumps_;  // accept thread, then the destructor
  Mutex mu_;
  std::vector<int> fds_ ABSL_GUARDED_BY(mu_);
};

}  // namespace forq::testing

#endif  // FORQ_TESTS_POSTGRES_TCP_PROXY_H_
