// A single-producer/single-consumer ring of length-prefixed, sequence-numbered
// frames in shared memory, one direction of the link between forqd and a
// worker. The consumer copies every header and body out of shared memory
// before using it and validates indices, lengths, versions and sequence
// numbers, so a peer that scribbles over the ring yields DataLoss, never an
// out-of-bounds access.
#ifndef FORQ_WORKER_SHM_RING_H_
#define FORQ_WORKER_SHM_RING_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <type_traits>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace forq::worker {

inline constexpr uint8_t kFrameVersion = 1;
// The inline body is a little-endian u64 size; the real body travels as a
// sealed memfd on the link's spill socket.
inline constexpr uint8_t kFrameSpilled = 0x1;
inline constexpr uint8_t kKnownFrameFlags = kFrameSpilled;

// Fixed-layout header in front of every frame; frames start 8-aligned.
struct FrameHeader {
  uint32_t length;  // inline body bytes following the header
  uint16_t type;
  uint8_t version;
  uint8_t flags;
  uint64_t seq;  // 1, 2, 3, ... per ring since the last Reset
};
static_assert(sizeof(FrameHeader) == 16);
static_assert(std::is_trivially_copyable_v<FrameHeader>);

// One ring index on its own cache line, so the producer's stores to tail and
// the consumer's stores to head do not false-share.
struct alignas(64) RingIndex {
  std::atomic<uint64_t> value;
  char padding[64 - sizeof(std::atomic<uint64_t>)];
};
static_assert(std::atomic<uint64_t>::is_always_lock_free,
              "ring indices are shared between processes");

// Shared-memory control block of one ring. Indices are byte positions that
// only grow; position p lives at data[p % capacity].
struct RingControl {
  RingIndex head;  // stored only by the consumer: bytes consumed
  RingIndex tail;  // stored only by the producer: bytes published
};
static_assert(sizeof(RingControl) == 128);
static_assert(std::is_standard_layout_v<RingControl>);

// A frame copied out of the ring.
struct Frame {
  uint16_t type = 0;
  uint8_t flags = 0;
  uint64_t seq = 0;
  std::string body;
};

// A view of one ring in shared memory plus this side's private copy of the
// index it owns. One process uses an instance either as producer (Push) or
// as consumer (Pop), never both. Thread-compatible: callers serialise access.
class ShmRing {
 public:
  static constexpr uint64_t kMinCapacity = 4096;
  static constexpr uint64_t kMaxCapacity = uint64_t{1} << 30;

  // `control` and `data` (capacity bytes) must stay mapped while the ring is
  // used. `capacity` is a power of two in [kMinCapacity, kMaxCapacity]
  // (checked: CHECK-fails otherwise, a programmer error).
  ShmRing(RingControl* control, char* data, uint64_t capacity);

  // Bytes a frame with a `body_size`-byte body occupies in the ring.
  static uint64_t FrameBytes(size_t body_size);
  // Largest body Push accepts (a quarter of the ring, so a few frames fit at
  // once); callers spill larger bodies.
  size_t max_body() const { return max_body_; }
  uint64_t capacity() const { return capacity_; }

  // Producer: true if a frame with a `body_size`-byte body fits right now.
  // Once true, it stays true until this side pushes (only the consumer moves
  // head, and only forward). DataLoss if the consumer's index is impossible.
  absl::StatusOr<bool> CanPush(size_t body_size) const;
  // Producer: appends one frame. InvalidArgument if the body exceeds
  // max_body(), ResourceExhausted if the ring is full right now, DataLoss if
  // the consumer's index in shared memory is impossible.
  absl::Status Push(uint16_t type, uint8_t flags, absl::string_view body);

  // Consumer: removes the next frame, or returns nullopt if the ring is
  // empty. DataLoss if the producer wrote anything invalid; the ring is then
  // unusable until Reset.
  absl::StatusOr<std::optional<Frame>> Pop();
  // Consumer: true if the producer has published bytes not popped yet.
  bool HasPending() const {
    // Acquire pairs with the producer's release of tail, as in Pop.
    return control_->tail.value.load(std::memory_order_acquire) != head_;
  }

  // Zeroes both shared indices and this side's state. Only while no other
  // process touches the ring (before a worker is forked).
  void Reset();

 private:
  void CopyOut(uint64_t pos, void* dst, size_t n) const;
  void CopyIn(uint64_t pos, const void* src, size_t n);

  RingControl* const control_;
  char* const data_;
  const uint64_t capacity_;
  const size_t max_body_;
  // Producer state: authoritative tail, never re-read from shared memory.
  uint64_t tail_ = 0;
  uint64_t next_seq_ = 1;
  // Consumer state: authoritative head, never re-read from shared memory.
  uint64_t head_ = 0;
  uint64_t expected_seq_ = 1;
};

}  // namespace forq::worker

#endif  // FORQ_WORKER_SHM_RING_H_
