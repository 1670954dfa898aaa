#include "common/scoped_fd.h"

#include <unistd.h>

namespace forq {

void ScopedFd::reset(int fd) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

}  // namespace forq
