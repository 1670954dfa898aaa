#include "worker/channel.h"

#include <errno.h>
#include <unistd.h>

#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"

#include "worker/spill.h"

namespace forq::worker {
namespace {

void WriteEventFd(int fd) {
  uint64_t one = 1;
  // EAGAIN means the counter is saturated: the reader will wake anyway.
  ssize_t n;
  do {
    n = write(fd, &one, sizeof(one));
  } while (n < 0 && errno == EINTR);
}

}  // namespace

Channel::Channel(ShmRing tx, ShmRing rx, ChannelFds fds,
                 uint64_t max_spill_bytes)
    : tx_(tx), rx_(rx), fds_(fds), max_spill_bytes_(max_spill_bytes) {}

absl::Status Channel::Send(uint16_t type, absl::string_view body, bool wake) {
  if (body.size() <= tx_.max_body()) {
    absl::Status s = tx_.Push(type, 0, body);
    if (s.ok() && wake) WakePeerIfWaiting();
    return s;
  }
  // Check ring space before sending the fd: a spill fd must never be queued
  // without its frame, or the peer would pair later frames with wrong fds.
  char size_field[sizeof(uint64_t)];
  const uint64_t size = body.size();
  std::memcpy(size_field, &size, sizeof(size));
  absl::StatusOr<bool> fits = tx_.CanPush(sizeof(size_field));
  if (!fits.ok()) return fits.status();
  if (!*fits) return absl::ResourceExhaustedError("ring full");
  if (absl::Status s = SendSpill(fds_.spill_sock, body); !s.ok()) return s;
  // Cannot fail now: only we produce, and the consumer only frees space.
  absl::Status s = tx_.Push(type, kFrameSpilled,
                            absl::string_view(size_field, sizeof(size_field)));
  if (s.ok() && wake) WakePeerIfWaiting();
  return s;
}

void Channel::WakePeerIfWaiting() {
  if (peer_waiting_ != nullptr) {
    // Orders our tail store before the flag load; the peer stores its flag
    // and fences before re-checking our tail, so one of us sees the other.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (peer_waiting_->load(std::memory_order_relaxed) == 0) return;
  }
  WakePeer();
}

absl::StatusOr<std::optional<Message>> Channel::Receive() {
  absl::StatusOr<std::optional<Frame>> frame = rx_.Pop();
  if (!frame.ok()) return frame.status();
  if (!frame->has_value()) return std::nullopt;
  Frame& f = **frame;
  Message m;
  m.type = f.type;
  if ((f.flags & kFrameSpilled) == 0) {
    m.body = std::move(f.body);
    return m;
  }
  if (f.body.size() != sizeof(uint64_t)) {
    return absl::DataLossError(
        absl::StrCat("spilled frame with a ", f.body.size(), "-byte body"));
  }
  uint64_t size;
  std::memcpy(&size, f.body.data(), sizeof(size));
  absl::StatusOr<std::string> body =
      ReceiveSpill(fds_.spill_sock, size, max_spill_bytes_);
  if (!body.ok()) return body.status();
  m.body = std::move(*body);
  return m;
}

void Channel::ClearWake() {
  uint64_t count;
  ssize_t n;
  do {
    n = read(fds_.own_wake_fd, &count, sizeof(count));
  } while (n < 0 && errno == EINTR);
}

void Channel::WakePeer() { WriteEventFd(fds_.peer_wake_fd); }

void Channel::WakeSelf() { WriteEventFd(fds_.own_wake_fd); }

void Channel::Reset() {
  tx_.Reset();
  rx_.Reset();
  DrainSpillSocket(fds_.spill_sock);
  ClearWake();
}

}  // namespace forq::worker
