// The spill path for frame bodies too large for a ring: the body goes into a
// sealed memfd whose descriptor travels over the slot's unix socket, and the
// ring carries only its size. Order on the wire is the order of spilled
// frames in the ring, so the receiver takes exactly one fd per spilled frame.
#ifndef FORQ_WORKER_SPILL_H_
#define FORQ_WORKER_SPILL_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace forq::worker {

// Writes `body` into a new memfd, seals it against writes and resizing, and
// sends the descriptor over `sock` (a SOCK_SEQPACKET unix socket) without
// blocking. ResourceExhausted if the socket buffer is full.
absl::Status SendSpill(int sock, absl::string_view body);

// Receives one descriptor from `sock` without blocking and reads `size`
// bytes from it. DataLoss unless exactly one fd arrives, it is a memfd
// sealed against write/shrink/grow, and it holds at least `size` bytes;
// DataLoss also if `size` exceeds `max_size`. Every received fd is closed.
absl::StatusOr<std::string> ReceiveSpill(int sock, uint64_t size,
                                         uint64_t max_size);

// Discards everything queued on `sock` (closing received fds). Used when a
// worker is replaced, so the next one starts with an empty socket.
void DrainSpillSocket(int sock);

}  // namespace forq::worker

#endif  // FORQ_WORKER_SPILL_H_
