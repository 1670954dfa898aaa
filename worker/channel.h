// One end of the link between forqd and a worker: frames out on one ring,
// frames in on the other, eventfd wake-ups, and the spill socket for bodies
// too large for a ring. The same class serves both ends.
#ifndef FORQ_WORKER_CHANNEL_H_
#define FORQ_WORKER_CHANNEL_H_

#include <atomic>
#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

#include "worker/shm_ring.h"

namespace forq::worker {

// A complete message received from the peer.
struct Message {
  uint16_t type = 0;
  std::string body;
};

// Borrowed fds used by a Channel; all must outlive it.
struct ChannelFds {
  int peer_wake_fd = -1;  // eventfd the peer waits on; we write it after Send
  int own_wake_fd = -1;   // eventfd we wait on
  int spill_sock = -1;    // SOCK_SEQPACKET unix socket to the peer
};

// Thread-compatible; forqd serialises each slot's channel under its mutex,
// a worker uses its channel from its only thread.
class Channel {
 public:
  // `tx` is the ring this side produces into, `rx` the one it consumes.
  // Spilled bodies larger than `max_spill_bytes` are refused as DataLoss.
  Channel(ShmRing tx, ShmRing rx, ChannelFds fds, uint64_t max_spill_bytes);
  Channel(const Channel&) = delete;
  Channel& operator=(const Channel&) = delete;

  // Sends one message (inline, or through the spill path when larger than
  // the ring allows) and, if `wake`, wakes the peer (see
  // SetPeerWaitingFlag). ResourceExhausted if the ring or spill socket is
  // full right now (nothing was sent); DataLoss if the peer corrupted the
  // ring's consumer index.
  absl::Status Send(uint16_t type, absl::string_view body, bool wake = true);
  // Wakes the peer if it may be asleep (always, without a waiting flag).
  void WakePeerIfWaiting();
  // Takes the next message, or nullopt if none is pending. DataLoss if the
  // peer wrote anything invalid (the link is then unusable until Reset).
  absl::StatusOr<std::optional<Message>> Receive();

  // From now on Send wakes the peer only while `*peer_waiting` is non-zero
  // (the peer's "I may sleep" flag in shared memory; see SlotControl).
  // `peer_waiting` must outlive the channel. Without it, every Send wakes.
  void SetPeerWaitingFlag(std::atomic<uint32_t>* peer_waiting) {
    peer_waiting_ = peer_waiting;
  }
  // True if a message (or part of one) is waiting in the receive ring.
  bool HasPending() const { return rx_.HasPending(); }

  // Clears pending wake-ups on own_wake_fd (call before draining Receive,
  // so a wake-up for a message sent meanwhile is not lost).
  void ClearWake();
  // Writes one wake-up to the peer.
  void WakePeer();
  // Writes one wake-up to ourselves (to resume draining later).
  void WakeSelf();
  // Resets both rings and discards queued spill fds. Only while the peer
  // process is gone.
  void Reset();

  size_t max_inline_body() const { return tx_.max_body(); }
  int own_wake_fd() const { return fds_.own_wake_fd; }
  int spill_sock() const { return fds_.spill_sock; }

 private:
  ShmRing tx_;
  ShmRing rx_;
  const ChannelFds fds_;
  const uint64_t max_spill_bytes_;
  std::atomic<uint32_t>* peer_waiting_ = nullptr;
};

}  // namespace forq::worker

#endif  // FORQ_WORKER_CHANNEL_H_
