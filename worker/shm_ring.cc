#include "worker/shm_ring.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace forq::worker {
namespace {

bool IsPowerOfTwo(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

}  // namespace

ShmRing::ShmRing(RingControl* control, char* data, uint64_t capacity)
    : control_(control),
      data_(data),
      capacity_(capacity),
      max_body_(static_cast<size_t>(capacity / 4 - sizeof(FrameHeader))) {
  if (!IsPowerOfTwo(capacity) || capacity < kMinCapacity ||
      capacity > kMaxCapacity) {
    std::fprintf(stderr, "forq: bad ring capacity %llu\n",
                 static_cast<unsigned long long>(capacity));
    std::abort();
  }
}

uint64_t ShmRing::FrameBytes(size_t body_size) {
  return sizeof(FrameHeader) + ((uint64_t{body_size} + 7) & ~uint64_t{7});
}

void ShmRing::CopyOut(uint64_t pos, void* dst, size_t n) const {
  const uint64_t off = pos & (capacity_ - 1);
  const size_t first =
      static_cast<size_t>(std::min<uint64_t>(n, capacity_ - off));
  std::memcpy(dst, data_ + off, first);
  if (first < n) std::memcpy(static_cast<char*>(dst) + first, data_, n - first);
}

void ShmRing::CopyIn(uint64_t pos, const void* src, size_t n) {
  const uint64_t off = pos & (capacity_ - 1);
  const size_t first =
      static_cast<size_t>(std::min<uint64_t>(n, capacity_ - off));
  std::memcpy(data_ + off, src, first);
  if (first < n) {
    std::memcpy(data_, static_cast<const char*>(src) + first, n - first);
  }
}

absl::StatusOr<bool> ShmRing::CanPush(size_t body_size) const {
  // Acquire pairs with the consumer's release store of head: its copies out
  // of the bytes before head are finished before we overwrite them.
  const uint64_t head = control_->head.value.load(std::memory_order_acquire);
  if (head > tail_ || tail_ - head > capacity_) {
    return absl::DataLossError(
        absl::StrCat("ring head ", head, " impossible for tail ", tail_));
  }
  return capacity_ - (tail_ - head) >= FrameBytes(body_size);
}

absl::Status ShmRing::Push(uint16_t type, uint8_t flags,
                           absl::string_view body) {
  if (body.size() > max_body_) {
    return absl::InvalidArgumentError(
        absl::StrCat("frame body of ", body.size(),
                     " bytes exceeds ring limit ", max_body_));
  }
  absl::StatusOr<bool> fits = CanPush(body.size());
  if (!fits.ok()) return fits.status();
  if (!*fits) return absl::ResourceExhaustedError("ring full");
  FrameHeader header;
  std::memset(&header, 0, sizeof(header));
  header.length = static_cast<uint32_t>(body.size());
  header.type = type;
  header.version = kFrameVersion;
  header.flags = flags;
  header.seq = next_seq_;
  CopyIn(tail_, &header, sizeof(header));
  CopyIn(tail_ + sizeof(header), body.data(), body.size());
  tail_ += FrameBytes(body.size());
  ++next_seq_;
  // Release publishes the header and body written above to a consumer that
  // loads tail with acquire.
  control_->tail.value.store(tail_, std::memory_order_release);
  return absl::OkStatus();
}

absl::StatusOr<std::optional<Frame>> ShmRing::Pop() {
  // Acquire pairs with the producer's release store of tail, making the
  // frame bytes before it visible.
  const uint64_t tail = control_->tail.value.load(std::memory_order_acquire);
  if (tail == head_) return std::nullopt;
  if (tail < head_ || tail - head_ > capacity_ || (tail & 7) != 0) {
    return absl::DataLossError(
        absl::StrCat("ring tail ", tail, " impossible for head ", head_));
  }
  const uint64_t avail = tail - head_;
  if (avail < sizeof(FrameHeader)) {
    return absl::DataLossError("ring holds a partial frame header");
  }
  // Copy the header once; everything below looks only at the private copy,
  // so a peer rewriting shared memory meanwhile cannot change our decisions.
  FrameHeader header;
  CopyOut(head_, &header, sizeof(header));
  if (header.version != kFrameVersion) {
    return absl::DataLossError(
        absl::StrCat("frame version ", header.version, " != ", kFrameVersion));
  }
  if ((header.flags & ~kKnownFrameFlags) != 0) {
    return absl::DataLossError(
        absl::StrCat("unknown frame flags ", header.flags));
  }
  if (header.length > max_body_) {
    return absl::DataLossError(absl::StrCat("frame length ", header.length,
                                            " exceeds limit ", max_body_));
  }
  const uint64_t size = FrameBytes(header.length);
  if (size > avail) {
    return absl::DataLossError(absl::StrCat(
        "frame of ", size, " bytes overruns the ", avail, " published"));
  }
  if (header.seq != expected_seq_) {
    return absl::DataLossError(
        absl::StrCat("frame seq ", header.seq, ", expected ", expected_seq_));
  }
  Frame frame;
  frame.type = header.type;
  frame.flags = header.flags;
  frame.seq = header.seq;
  frame.body.resize(header.length);
  CopyOut(head_ + sizeof(header), frame.body.data(), header.length);
  head_ += size;
  ++expected_seq_;
  // Release: our reads of the frame happen before the producer may reuse
  // the space (it loads head with acquire).
  control_->head.value.store(head_, std::memory_order_release);
  return frame;
}

void ShmRing::Reset() {
  control_->head.value.store(0, std::memory_order_relaxed);
  control_->tail.value.store(0, std::memory_order_relaxed);
  tail_ = 0;
  next_seq_ = 1;
  head_ = 0;
  expected_seq_ = 1;
}

}  // namespace forq::worker
