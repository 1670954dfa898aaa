#include "server/scheduler/task_proto.h"

#include "gtest/gtest.h"

namespace forq::server {
namespace {

google::protobuf::Duration MakeDuration(int64_t seconds, int32_t nanos) {
  google::protobuf::Duration d;
  d.set_seconds(seconds);
  d.set_nanos(nanos);
  return d;
}

TEST(TaskProtoTest, DurationConvertsBothWays) {
  EXPECT_EQ(FromProto(MakeDuration(1, 500'000'000)), absl::Milliseconds(1500));
  EXPECT_EQ(FromProto(MakeDuration(-2, -1)),
            -absl::Seconds(2) - absl::Nanoseconds(1));
  EXPECT_EQ(FromProto(ToProto(absl::Milliseconds(2500))),
            absl::Milliseconds(2500));
}

// Valid Durations reach 10,000 years; their nanosecond count overflows 64
// bits past ~292 years and used to come out negative ("timeout must not be
// negative" for a 300-year task timeout).
TEST(TaskProtoTest, DurationBeyond292YearsDoesNotOverflow) {
  constexpr int64_t kTenThousandYears = 315'576'000'000;
  EXPECT_EQ(FromProto(MakeDuration(kTenThousandYears, 0)),
            absl::Seconds(kTenThousandYears));
  EXPECT_EQ(FromProto(MakeDuration(-kTenThousandYears, 0)),
            -absl::Seconds(kTenThousandYears));
  const absl::Duration three_hundred_years =
      FromProto(MakeDuration(9'467'280'000, 999'999'999));
  EXPECT_GT(three_hundred_years, absl::Hours(24 * 365) * 299);
  // Back to protobuf it saturates at the largest nanosecond count.
  EXPECT_GT(FromProto(ToProto(three_hundred_years)),
            absl::Hours(24 * 365) * 292);
}

}  // namespace
}  // namespace forq::server
