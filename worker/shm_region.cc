#include "worker/shm_region.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>
#include <utility>

#include "absl/strings/str_cat.h"

#include "common/errno_status.h"

namespace forq::worker {

absl::StatusOr<ShmRegion> ShmRegion::Create(absl::string_view name,
                                            size_t bytes) {
  ScopedFd fd(
      memfd_create(std::string(name).c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd.valid()) return ErrnoToStatus(errno, "memfd_create");
  if (ftruncate(fd.get(), static_cast<off_t>(bytes)) != 0) {
    return ErrnoToStatus(errno, "ftruncate shm region");
  }
  if (fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) !=
      0) {
    return ErrnoToStatus(errno, "seal shm region");
  }
  void* p =
      mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  if (p == MAP_FAILED) return ErrnoToStatus(errno, "mmap shm region");
  return ShmRegion(std::move(fd), static_cast<char*>(p), bytes);
}

absl::StatusOr<ShmRegion> ShmRegion::Map(int fd, size_t bytes) {
  struct stat st;
  if (fstat(fd, &st) != 0) return ErrnoToStatus(errno, "fstat shm region");
  if (static_cast<uint64_t>(st.st_size) < bytes) {
    return absl::FailedPreconditionError(
        absl::StrCat("shm region is ", st.st_size, " bytes, need ", bytes));
  }
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return ErrnoToStatus(errno, "mmap shm region");
  return ShmRegion(ScopedFd(), static_cast<char*>(p), bytes);
}

ShmRegion::ShmRegion(ShmRegion&& other) noexcept
    : fd_(std::move(other.fd_)),
      data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)) {}

ShmRegion& ShmRegion::operator=(ShmRegion&& other) noexcept {
  if (this != &other) {
    Unmap();
    fd_ = std::move(other.fd_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

ShmRegion::~ShmRegion() { Unmap(); }

void ShmRegion::Unmap() {
  if (data_ != nullptr) munmap(data_, size_);
  data_ = nullptr;
  size_ = 0;
}

SlotView ViewSlot(char* base, uint64_t ring_bytes) {
  SlotView v;
  v.control = reinterpret_cast<SlotControl*>(base + SlotLayout::kControlOffset);
  v.submission_control = reinterpret_cast<RingControl*>(
      base + SlotLayout::kSubmissionControlOffset);
  v.submission_data = base + SlotLayout::SubmissionDataOffset();
  v.completion_control = reinterpret_cast<RingControl*>(
      base + SlotLayout::kCompletionControlOffset);
  v.completion_data = base + SlotLayout::CompletionDataOffset(ring_bytes);
  return v;
}

}  // namespace forq::worker
