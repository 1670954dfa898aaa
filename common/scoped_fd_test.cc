#include "common/scoped_fd.h"

#include <fcntl.h>
#include <unistd.h>

#include "gtest/gtest.h"

namespace forq {
namespace {

bool IsOpen(int fd) { return fcntl(fd, F_GETFD) != -1; }

TEST(ScopedFdTest, ClosesOnDestruction) {
  int fds[2];
  ASSERT_EQ(pipe2(fds, O_CLOEXEC), 0);
  {
    ScopedFd a(fds[0]);
    ScopedFd b(fds[1]);
    EXPECT_TRUE(IsOpen(fds[0]));
  }
  EXPECT_FALSE(IsOpen(fds[0]));
  EXPECT_FALSE(IsOpen(fds[1]));
}

TEST(ScopedFdTest, MoveTransfersOwnershipAndReleaseKeepsFdOpen) {
  int fds[2];
  ASSERT_EQ(pipe2(fds, O_CLOEXEC), 0);
  ScopedFd a(fds[0]);
  ScopedFd b(std::move(a));
  // A moved-from ScopedFd is documented as empty.
  EXPECT_FALSE(a.valid());  // NOLINT(bugprone-use-after-move)
  EXPECT_EQ(b.get(), fds[0]);
  int raw = b.release();
  EXPECT_FALSE(b.valid());
  EXPECT_TRUE(IsOpen(raw));
  close(raw);
  close(fds[1]);
}

}  // namespace
}  // namespace forq
