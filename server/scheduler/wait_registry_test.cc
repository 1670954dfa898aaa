#include "server/scheduler/wait_registry.h"

#include "gtest/gtest.h"

namespace forq::server {
namespace {

const absl::Time kT0 = absl::FromUnixSeconds(1000);

WaitRegistry::Done Count(int* n) {
  return [n](const absl::StatusOr<v1::Task>&, bool) { ++*n; };
}

TEST(WaitRegistryTest, TakeTaskReturnsItsWaitsAndLeavesNoDeadlines) {
  WaitRegistry r;
  int a = 0, b = 0;
  r.Add("a", kT0 + absl::Seconds(5), Count(&a));
  r.Add("a", kT0 + absl::Seconds(9), Count(&a));
  r.Add("b", kT0 + absl::Seconds(1), Count(&b));
  EXPECT_EQ(r.size(), 3u);
  EXPECT_EQ(r.deadlines(), 3u);
  for (auto& done : r.TakeTask("a")) done(v1::Task(), true);
  EXPECT_EQ(a, 2);
  EXPECT_EQ(r.size(), 1u);
  EXPECT_EQ(r.deadlines(), 1u);
  EXPECT_EQ(r.NextDeadline(), kT0 + absl::Seconds(1));
  EXPECT_TRUE(r.TakeTask("a").empty());
}

TEST(WaitRegistryTest, TakeExpiredIsEarliestFirstAndOnlyDue) {
  WaitRegistry r;
  int n = 0;
  r.Add("late", kT0 + absl::Seconds(10), Count(&n));
  r.Add("early", kT0 + absl::Seconds(1), Count(&n));
  r.Add("mid", kT0 + absl::Seconds(5), Count(&n));
  r.Add("never", absl::InfiniteFuture(), Count(&n));
  auto due = r.TakeExpired(kT0 + absl::Seconds(5));
  ASSERT_EQ(due.size(), 2u);
  EXPECT_EQ(due[0].first, "early");
  EXPECT_EQ(due[1].first, "mid");
  EXPECT_EQ(r.size(), 2u);
  EXPECT_EQ(r.NextDeadline(), kT0 + absl::Seconds(10));
  // A wait without a deadline only leaves through its task or TakeAll.
  EXPECT_TRUE(r.TakeExpired(absl::InfiniteFuture() - absl::Seconds(1)).size() ==
              1);
  EXPECT_EQ(r.TakeTask("never").size(), 1u);
  EXPECT_EQ(r.size(), 0u);
  EXPECT_EQ(r.NextDeadline(), absl::InfiniteFuture());
}

TEST(WaitRegistryTest, RemoveDropsOnceAndOnlyThatWait) {
  WaitRegistry r;
  int n = 0;
  const uint64_t h1 = r.Add("t", kT0 + absl::Seconds(1), Count(&n));
  const uint64_t h2 = r.Add("t", kT0 + absl::Seconds(1), Count(&n));
  EXPECT_NE(h1, 0u);
  EXPECT_NE(h1, h2);
  EXPECT_TRUE(r.Remove(h1));
  EXPECT_FALSE(r.Remove(h1));
  EXPECT_EQ(r.deadlines(), 1u);
  auto left = r.TakeTask("t");
  ASSERT_EQ(left.size(), 1u);
  EXPECT_FALSE(r.Remove(h2));
  EXPECT_EQ(r.deadlines(), 0u);
}

TEST(WaitRegistryTest, TakeAllEmptiesEverything) {
  WaitRegistry r;
  int n = 0;
  r.Add("x", kT0, Count(&n));
  r.Add("y", absl::InfiniteFuture(), Count(&n));
  EXPECT_EQ(r.TakeAll().size(), 2u);
  EXPECT_EQ(r.size(), 0u);
  EXPECT_EQ(r.deadlines(), 0u);
  EXPECT_TRUE(r.TakeTask("x").empty());
}

}  // namespace
}  // namespace forq::server
