// Several real forqd nodes in cluster mode on one PostgreSQL database:
// work submitted to one node runs on every node's workers, exactly once,
// and a Wait on any node returns a task another node finished.
#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include "forq/client.h"
#include "tests/postgres/cluster_nodes.h"
#include "tests/testing/status_matchers.h"

namespace forq {
namespace {

using ::forq::testing::ClusterNode;
using ::forq::testing::ClusterNodes;
using ::forq::testing::IsOk;

std::vector<v1::TaskSpec> SleepSpecs(int n, int ms) {
  std::vector<v1::TaskSpec> specs(n);
  for (v1::TaskSpec& s : specs) {
    s.set_kind("sleep");
    s.set_payload(absl::StrCat(ms));
  }
  return specs;
}

TEST(ClusterTest, TasksSubmittedToOneNodeRunOnEveryNodeExactlyOnce) {
  auto nodes = ClusterNodes::Create("spread");
  ASSERT_THAT(nodes, IsOk());
  auto a = nodes->Start("a");
  ASSERT_THAT(a, IsOk());
  auto b = nodes->Start("b");
  ASSERT_THAT(b, IsOk());

  constexpr int kTasks = 40;
  auto futures = (*a)->client->SubmitBatch(SleepSpecs(kTasks, 50));
  ASSERT_THAT(futures, IsOk());
  std::vector<std::string> ids;
  for (const TaskFuture& f : *futures) ids.push_back(f.id());
  // Waited for on node a, though node b runs about half of them.
  auto done = (*a)->client->WaitAll(ids, absl::Seconds(60));
  ASSERT_THAT(done, IsOk());
  std::map<std::string, int> by_node;
  for (const v1::Task& t : *done) {
    EXPECT_EQ(t.state(), v1::SUCCEEDED) << t.ShortDebugString();
    EXPECT_EQ(t.attempt(), 1) << t.id();
    ++by_node[nodes->NodeOfPid(t.worker_pid())];
  }
  std::cout << "tasks by node: a=" << by_node["a"] << " b=" << by_node["b"]
            << " unknown=" << by_node[""] << "\n";
  EXPECT_GT(by_node["a"], 0);
  EXPECT_GT(by_node["b"], 0);
  EXPECT_EQ(by_node["a"] + by_node["b"], kTasks);
  // Exactly once: every task ran one attempt, no event of a lost one.
  EXPECT_THAT(
      nodes->Query(absl::StrCat("SELECT count(*) FROM ", nodes->schema(),
                                ".tasks WHERE state = 3 AND attempt = 1")),
      ::testing::Eq(absl::StatusOr<std::string>(absl::StrCat(kTasks))));
}

TEST(ClusterTest, DrainedNodeLeavesItsSubmissionsToOthersAndWaitsForThem) {
  auto nodes = ClusterNodes::Create("drain");
  ASSERT_THAT(nodes, IsOk());
  auto a = nodes->Start("a");
  ASSERT_THAT(a, IsOk());
  auto b = nodes->Start("b");
  ASSERT_THAT(b, IsOk());
  auto c = nodes->Start("c");
  ASSERT_THAT(c, IsOk());
  ASSERT_THAT((*a)->client->Drain(absl::Seconds(5)), IsOk());

  auto f = (*a)->client->Submit("echo", "hello");
  ASSERT_THAT(f, IsOk());
  // Wait on c; on a too (a runs nothing while drained).
  auto on_c = (*c)->client->Wait(f->id(), absl::Seconds(20));
  ASSERT_THAT(on_c, IsOk());
  EXPECT_TRUE(on_c->done());
  EXPECT_EQ(on_c->task().state(), v1::SUCCEEDED);
  EXPECT_EQ(on_c->task().result(), "hello");
  const std::string ran_on = nodes->NodeOfPid(on_c->task().worker_pid());
  EXPECT_TRUE(ran_on == "b" || ran_on == "c") << ran_on;
  auto on_a = (*a)->client->Wait(f->id(), absl::Seconds(20));
  ASSERT_THAT(on_a, IsOk());
  EXPECT_TRUE(on_a->done());
  EXPECT_EQ(on_a->task().result(), "hello");

  // A waiter on a that is already parked when another node finishes the
  // task is woken by the notification (well before its timeout), and a
  // task waited on a node that did not run it comes back with its result.
  auto slow = (*a)->client->Submit("sleep", "300");
  ASSERT_THAT(slow, IsOk());
  const absl::Time start = absl::Now();
  auto parked = (*a)->client->Wait(slow->id(), absl::Seconds(30));
  ASSERT_THAT(parked, IsOk());
  EXPECT_TRUE(parked->done());
  EXPECT_EQ(parked->task().state(), v1::SUCCEEDED);
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
  EXPECT_NE(nodes->NodeOfPid(parked->task().worker_pid()), "a");
}

// The time a parked Wait takes to return after the task finished, on the
// node that ran it and on another node (woken by NOTIFY). Prints both
// medians; the added cross-node latency is their difference.
TEST(ClusterTest, CrossNodeWaitAddsLittleLatency) {
  auto nodes = ClusterNodes::Create("latency");
  ASSERT_THAT(nodes, IsOk());
  auto a = nodes->Start("a");
  ASSERT_THAT(a, IsOk());
  auto b = nodes->Start("b");
  ASSERT_THAT(b, IsOk());
  ASSERT_THAT((*a)->client->Drain(absl::Seconds(5)), IsOk());  // b runs all
  constexpr int kRounds = 30;
  auto measure = [&](Client& waiter) {
    std::vector<absl::Duration> lat;
    for (int i = 0; i < kRounds; ++i) {
      auto f = (*b)->client->Submit("sleep", "30");
      EXPECT_THAT(f, IsOk());
      if (!f.ok()) break;
      auto w = waiter.Wait(f->id(), absl::Seconds(20));
      const absl::Time returned = absl::Now();
      EXPECT_THAT(w, IsOk());
      if (!w.ok()) break;
      EXPECT_TRUE(w->done());
      const auto& fin = w->task().finished_at();
      const absl::Time finished =
          absl::FromUnixSeconds(fin.seconds()) + absl::Nanoseconds(fin.nanos());
      lat.push_back(returned - finished);
    }
    std::sort(lat.begin(), lat.end());
    return lat.empty() ? absl::InfiniteDuration() : lat[lat.size() / 2];
  };
  const absl::Duration same = measure(*(*b)->client);
  const absl::Duration cross = measure(*(*a)->client);
  std::cout << "Wait return after finish, p50 of " << kRounds << ": same node "
            << absl::FormatDuration(same) << ", other node "
            << absl::FormatDuration(cross) << ", added "
            << absl::FormatDuration(cross - same) << "\n";
  // Loose bound (a loaded 2-core machine); the figure is what matters.
  EXPECT_LT(cross - same, absl::Milliseconds(100));
}

TEST(ClusterTest, ClusterFlagNeedsAPostgresStore) {
  testing::ForqdOptions o;
  o.flags = {"--cluster"};
  auto p = testing::ForqdProcess::Start(o);
  EXPECT_FALSE(p.ok());
}

}  // namespace
}  // namespace forq
