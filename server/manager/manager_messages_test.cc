#include "server/manager/manager_messages.h"

#include <cstdint>
#include <limits>

#include "gtest/gtest.h"

namespace forq::server {
namespace {

google::protobuf::Duration MakeDuration(int64_t seconds, int32_t nanos) {
  google::protobuf::Duration d;
  d.set_seconds(seconds);
  d.set_nanos(nanos);
  return d;
}

TEST(ManagerMessagesTest, TimeoutRoundsUpToWholeMilliseconds) {
  EXPECT_EQ(DurationToCeilMs(MakeDuration(0, 1)), 1);
  EXPECT_EQ(DurationToCeilMs(MakeDuration(2, 1'000'000)), 2001);
  EXPECT_EQ(DurationToCeilMs(MakeDuration(2, 1'000'001)), 2002);
  EXPECT_EQ(DurationToCeilMs(MakeDuration(0, 0)), 0);
  EXPECT_EQ(DurationToCeilMs(MakeDuration(-1, -5)), 0);
  EXPECT_EQ(StreamTimeoutMs(false, MakeDuration(5, 0)), -1);
  EXPECT_EQ(StreamTimeoutMs(true, MakeDuration(5, 0)), 5000);
}

// A valid Duration reaches 10,000 years; its nanosecond count overflows 64
// bits past ~292 years, which made such a wait give up at once (0 ms).
TEST(ManagerMessagesTest, TimeoutBeyond292YearsWaitsThatLong) {
  constexpr int64_t kTenThousandYears = 315'576'000'000;
  EXPECT_EQ(DurationToCeilMs(MakeDuration(kTenThousandYears, 999'999'999)),
            kTenThousandYears * 1000 + 1000);
  EXPECT_EQ(StreamTimeoutMs(true, MakeDuration(9'467'280'000, 0)),
            int64_t{9'467'280'000} * 1000);
  EXPECT_GT(
      DurationToCeilMs(MakeDuration(std::numeric_limits<int64_t>::max(), 0)),
      kTenThousandYears * 1000);
}

}  // namespace
}  // namespace forq::server
