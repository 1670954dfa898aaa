// Move-only owner of a file descriptor.
#ifndef FORQ_COMMON_SCOPED_FD_H_
#define FORQ_COMMON_SCOPED_FD_H_

#include <utility>

namespace forq {

// Owns one fd and closes it on destruction. Thread-compatible.
class ScopedFd {
 public:
  explicit ScopedFd(int fd = -1) : fd_(fd) {}
  ScopedFd(ScopedFd&& other) noexcept : fd_(other.release()) {}
  ScopedFd& operator=(ScopedFd&& other) noexcept {
    if (this != &other) reset(other.release());
    return *this;
  }
  ScopedFd(const ScopedFd&) = delete;
  ScopedFd& operator=(const ScopedFd&) = delete;
  // Closes a valid fd_; never retries close() on EINTR.
  ~ScopedFd() { reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  // Gives up ownership without closing.
  int release() { return std::exchange(fd_, -1); }
  // Closes the current fd (if any) and takes `fd`.
  void reset(int fd = -1);

 private:
  int fd_;
};

}  // namespace forq

#endif  // FORQ_COMMON_SCOPED_FD_H_
