#include "worker/spill.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/str_cat.h"

#include "common/errno_status.h"
#include "common/scoped_fd.h"

namespace forq::worker {
namespace {

// Room for a few fds so that a peer sending more than one is detected (and
// the extras closed) instead of silently truncated.
constexpr int kMaxFdsPerMessage = 8;

absl::Status WriteAll(int fd, absl::string_view data) {
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = write(fd, data.data() + off, data.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoToStatus(errno, "write spill");
    }
    off += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

// Receives one message; returns the fds it carried (all owned by the
// caller) and whether control data was truncated.
ssize_t RecvFds(int sock, std::vector<ScopedFd>* fds, bool* truncated,
                int flags) {
  char byte;
  iovec iov{&byte, 1};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)];
  msghdr msg;
  std::memset(&msg, 0, sizeof(msg));
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n;
  do {
    n = recvmsg(sock, &msg, flags | MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return n;
  *truncated = (msg.msg_flags & MSG_CTRUNC) != 0;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr;
       c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      fds->emplace_back(fd);
    }
  }
  return n;
}

}  // namespace

absl::Status SendSpill(int sock, absl::string_view body) {
  ScopedFd fd(memfd_create("forq-spill", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd.valid()) return ErrnoToStatus(errno, "memfd_create spill");
  if (ftruncate(fd.get(), static_cast<off_t>(body.size())) != 0) {
    return ErrnoToStatus(errno, "ftruncate spill");
  }
  if (auto s = WriteAll(fd.get(), body); !s.ok()) return s;
  // Sealed so the receiver can read without the sender changing or
  // truncating the data underneath it.
  if (fcntl(fd.get(), F_ADD_SEALS,
            F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) != 0) {
    return ErrnoToStatus(errno, "seal spill");
  }
  char byte = 's';
  iovec iov{&byte, 1};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
  std::memset(control, 0, sizeof(control));
  msghdr msg;
  std::memset(&msg, 0, sizeof(msg));
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  const int raw = fd.get();
  std::memcpy(CMSG_DATA(c), &raw, sizeof(int));
  ssize_t n;
  do {
    n = sendmsg(sock, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN) {
      return absl::ResourceExhaustedError("spill socket full");
    }
    return ErrnoToStatus(errno, "send spill fd");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReceiveSpill(int sock, uint64_t size,
                                         uint64_t max_size) {
  std::vector<ScopedFd> fds;
  bool truncated = false;
  ssize_t n = RecvFds(sock, &fds, &truncated, MSG_DONTWAIT);
  if (n < 0) {
    return absl::DataLossError(
        absl::StrCat("spilled frame without a spill fd (errno ", errno, ")"));
  }
  if (n == 0 && fds.empty()) {
    return absl::DataLossError("spill socket closed");
  }
  if (truncated || fds.size() != 1) {
    return absl::DataLossError(
        absl::StrCat("spill message carried ", fds.size(), " fds"));
  }
  if (size > max_size) {
    return absl::DataLossError(
        absl::StrCat("spill of ", size, " bytes exceeds limit ", max_size));
  }
  const int fd = fds[0].get();
  const int seals = fcntl(fd, F_GET_SEALS);
  constexpr int kRequired = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE;
  if (seals < 0 || (seals & kRequired) != kRequired) {
    return absl::DataLossError("spill fd is not a sealed memfd");
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) ||
      static_cast<uint64_t>(st.st_size) < size) {
    return absl::DataLossError("spill fd smaller than its frame says");
  }
  std::string body(size, '\0');
  uint64_t off = 0;
  while (off < size) {
    ssize_t r =
        pread(fd, body.data() + off, size - off, static_cast<off_t>(off));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return absl::DataLossError("short read of spill fd");
    off += static_cast<uint64_t>(r);
  }
  return body;
}

void DrainSpillSocket(int sock) {
  while (true) {
    std::vector<ScopedFd> fds;
    bool truncated = false;
    if (RecvFds(sock, &fds, &truncated, MSG_DONTWAIT) <= 0 && fds.empty()) {
      return;
    }
  }
}

}  // namespace forq::worker
