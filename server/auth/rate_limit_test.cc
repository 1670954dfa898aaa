#include "server/auth/rate_limit.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace forq::server {
namespace {

using ::testing::HasSubstr;

TEST(SubmitRateLimiterTest, RefillsAtTheRateUpToTheBurst) {
  SubmitRateLimiter l({.rate = 2, .burst = 4});
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  for (int i = 0; i < 4; ++i) EXPECT_TRUE(l.AdmitAt("a", 1, t0).ok()) << i;
  absl::Status s = l.AdmitAt("a", 1, t0);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr("retry in 0.500s"));
  EXPECT_TRUE(s.GetPayload(kRetryInfoUrl).has_value());
  // Another client is independent.
  EXPECT_TRUE(l.AdmitAt("b", 1, t0).ok());
  // Half a second gives one token back; a long pause no more than the burst.
  EXPECT_TRUE(l.AdmitAt("a", 1, t0 + absl::Milliseconds(500)).ok());
  EXPECT_FALSE(l.AdmitAt("a", 1, t0 + absl::Milliseconds(500)).ok());
  const absl::Time later = t0 + absl::Hours(1);
  for (int i = 0; i < 4; ++i) EXPECT_TRUE(l.AdmitAt("a", 1, later).ok()) << i;
  EXPECT_FALSE(l.AdmitAt("a", 1, later).ok());
}

TEST(SubmitRateLimiterTest, ABatchGoesIntoDebt) {
  SubmitRateLimiter l({.rate = 10, .burst = 5});
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  EXPECT_TRUE(l.AdmitAt("a", 100, t0).ok());
  // 5 - 100 = -95 tokens; 5 s later -45: one token back after 4.6 s more.
  absl::Status s = l.AdmitAt("a", 1, t0 + absl::Seconds(5));
  EXPECT_THAT(s.message(), HasSubstr("retry in 4.600s"));
  EXPECT_FALSE(l.AdmitAt("a", 1, t0 + absl::Seconds(9)).ok());
  EXPECT_TRUE(l.AdmitAt("a", 1, t0 + absl::Milliseconds(9700)).ok());
}

TEST(SubmitRateLimiterTest, ClientsAreBounded) {
  SubmitRateLimiter l({.rate = 1, .burst = 1, .max_clients = 3});
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  for (int i = 0; i < 10; ++i) {
    (void)l.AdmitAt(std::to_string(i), 1, t0);
  }
  EXPECT_LE(l.clients(), 4u);  // 3 + the shared overflow bucket
  // Once their buckets refilled, old clients make room for new ones.
  EXPECT_TRUE(l.AdmitAt("new", 1, t0 + absl::Seconds(5)).ok());
  EXPECT_LE(l.clients(), 4u);
}

TEST(SubmitRateLimiterTest, DisabledAtRateZero) {
  SubmitRateLimiter l({.rate = 0, .burst = 0});
  for (int i = 0; i < 1000; ++i) EXPECT_TRUE(l.Admit("a", 1000).ok());
  EXPECT_EQ(l.clients(), 0u);
}

TEST(RateLimitedGrpcStatusTest, CarriesRetryInfoAsAnErrorDetail) {
  SubmitRateLimiter l({.rate = 1, .burst = 1});
  ASSERT_TRUE(l.Admit("a", 1).ok());
  absl::Status s = l.Admit("a", 1);
  grpc::Status g = RateLimitedGrpcStatus(s);
  EXPECT_EQ(g.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(g.error_message(), std::string(s.message()));
  EXPECT_THAT(g.error_details(), HasSubstr(std::string(kRetryInfoUrl)));
  EXPECT_TRUE(
      RateLimitedGrpcStatus(absl::NotFoundError("x")).error_details().empty());
}

}  // namespace
}  // namespace forq::server
