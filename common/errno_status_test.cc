#include "common/errno_status.h"

#include <errno.h>

#include "gtest/gtest.h"

namespace forq {
namespace {

TEST(ErrnoToStatusTest, MapsCommonErrnosToMeaningfulCodes) {
  EXPECT_EQ(ErrnoToStatus(ENOENT, "open x").code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(ErrnoToStatus(ENOSPC, "write").code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(ErrnoToStatus(EINVAL, "mmap").code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ErrnoToStatus(EIO, "fsync").code(), absl::StatusCode::kInternal);
}

TEST(ErrnoToStatusTest, MessageNamesTheOperation) {
  absl::Status s = ErrnoToStatus(ENOENT, "open /nope");
  EXPECT_EQ(s.message(), "open /nope: No such file or directory");
}

}  // namespace
}  // namespace forq
