// Shared memory for one worker slot: a sealed memfd mapped MAP_SHARED, and
// the fixed layout inside it (control block, submission ring, completion
// ring). memfd rather than /dev/shm, which containers cap at 64 MiB.
#ifndef FORQ_WORKER_SHM_REGION_H_
#define FORQ_WORKER_SHM_REGION_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

#include "common/scoped_fd.h"
#include "worker/shm_ring.h"

namespace forq::worker {

inline constexpr uint32_t kSlotMagic = 0x71726f66;  // "forq"
inline constexpr uint32_t kSlotVersion = 2;

// First page of a slot region. Each field has one writer: forqd writes the
// header, cancel_seq, revoked_upto and forqd_waiting; the worker writes
// started_seq and worker_waiting. forqd never trusts what the worker wrote
// beyond comparing it with what it knows (an impossible value only costs
// that worker its life).
struct SlotControl {
  uint32_t magic;
  uint32_t version;
  uint64_t ring_bytes;
  // Sequence number of the assignment forqd wants cancelled (0 = none).
  // forqd stores with release after deciding; the worker loads with acquire
  // (it only compares the value, so relaxed would do; acquire is cheap).
  alignas(64) std::atomic<uint64_t> cancel_seq;
  // Assignments with task_seq <= revoked_upto that the worker has not
  // started must be skipped (answered kSkipped). forqd stores it, then
  // loads started_seq; the worker stores started_seq, then loads it; both
  // pairs are separated by a seq_cst fence (Dekker), so at least one side
  // sees the other's store: an assignment forqd sees as not started is never
  // run. Only grows.
  alignas(64) std::atomic<uint64_t> revoked_upto;
  // 1 while forqd's event loop may be asleep: the worker writes its wake-up
  // eventfd only then. forqd stores 1, fences, re-checks the completion
  // ring before sleeping; the worker pushes, fences, then loads this.
  alignas(64) std::atomic<uint32_t> forqd_waiting;
  // Worker-written: the task_seq of the last assignment it took (ran or
  // skipped), stored before it decides.
  alignas(64) std::atomic<uint64_t> started_seq;
  // Worker-written: 1 while it may be asleep waiting for frames; forqd
  // writes the worker's eventfd only then (same handshake as forqd_waiting).
  alignas(64) std::atomic<uint32_t> worker_waiting;
};
static_assert(std::is_standard_layout_v<SlotControl>);
static_assert(sizeof(SlotControl) <= 4096);

// Offsets inside a slot region of `ring_bytes` per ring.
struct SlotLayout {
  static constexpr size_t kControlOffset = 0;
  static constexpr size_t kSubmissionControlOffset = 4096;
  static constexpr size_t kCompletionControlOffset = 4096 + sizeof(RingControl);
  static constexpr size_t kDataOffset = 8192;
  static size_t TotalBytes(uint64_t ring_bytes) {
    return kDataOffset + 2 * ring_bytes;
  }
  static size_t SubmissionDataOffset() { return kDataOffset; }
  static size_t CompletionDataOffset(uint64_t ring_bytes) {
    return kDataOffset + ring_bytes;
  }
};

// Move-only owner of a MAP_SHARED mapping of a memfd (munmaps on
// destruction) and, for the creator, of the memfd itself. Thread-compatible.
class ShmRegion {
 public:
  // Creates a memfd of `bytes` bytes, seals its size (F_SEAL_SHRINK |
  // F_SEAL_GROW | F_SEAL_SEAL, so a worker's ftruncate fails with EPERM) and
  // maps it read-write. Errors carry the failing syscall's errno.
  static absl::StatusOr<ShmRegion> Create(absl::string_view name, size_t bytes);
  // Maps an existing memfd read-write; FailedPrecondition if it is smaller
  // than `bytes`. Does not take ownership of `fd`.
  static absl::StatusOr<ShmRegion> Map(int fd, size_t bytes);

  // An empty region (maps nothing).
  ShmRegion() = default;
  ShmRegion(ShmRegion&& other) noexcept;
  ShmRegion& operator=(ShmRegion&& other) noexcept;
  ShmRegion(const ShmRegion&) = delete;
  ShmRegion& operator=(const ShmRegion&) = delete;
  ~ShmRegion();

  char* data() const { return data_; }
  size_t size() const { return size_; }
  // The memfd (-1 for a region made by Map).
  int fd() const { return fd_.get(); }
  // Closes the memfd; the mapping stays.
  void CloseFd() { fd_.reset(); }

 private:
  ShmRegion(ScopedFd fd, char* data, size_t size)
      : fd_(std::move(fd)), data_(data), size_(size) {}
  void Unmap();

  ScopedFd fd_;
  char* data_ = nullptr;
  size_t size_ = 0;
};

// Typed pointers into a mapped slot region.
struct SlotView {
  SlotControl* control;
  RingControl* submission_control;
  char* submission_data;
  RingControl* completion_control;
  char* completion_data;
};
SlotView ViewSlot(char* base, uint64_t ring_bytes);

}  // namespace forq::worker

#endif  // FORQ_WORKER_SHM_REGION_H_
