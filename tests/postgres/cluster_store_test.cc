// PostgresStore in cluster mode, driven without its upkeep thread so every
// step is deterministic: claims (priority, FIFO, delays on the database
// clock), the attempt fence, lease loss seen by the heartbeat, the reaper.
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include "common/mutex.h"
#include "common/notification.h"
#include "server/store/postgres_store.h"
#include "server/store/store.h"
#include "tests/testing/postgres_server.h"
#include "tests/testing/status_matchers.h"

namespace forq::server {
namespace {

using ::forq::testing::IsOk;
using ::forq::testing::PostgresServer;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::SizeIs;

PostgresServer& Server() {
  auto server = PostgresServer::Shared();
  EXPECT_THAT(server, IsOk());
  return **server;
}

std::string Query(const std::string& sql) {
  absl::StatusOr<std::string> out = Server().Query(sql);
  EXPECT_THAT(out, IsOk());
  return out.ok() ? *out : "";
}

// Records what a store reports through the WorkSource callbacks.
struct Reports {
  Mutex mu;
  std::vector<AttemptRef> lost ABSL_GUARDED_BY(mu);
  std::vector<AttemptRef> fenced ABSL_GUARDED_BY(mu);

  WorkSource::Callbacks Callbacks() {
    WorkSource::Callbacks cb;
    cb.lost = [this](const std::vector<AttemptRef>& a) {
      MutexLock lock(&mu);
      lost.insert(lost.end(), a.begin(), a.end());
    };
    cb.fenced = [this](const std::vector<AttemptRef>& a) {
      MutexLock lock(&mu);
      fenced.insert(fenced.end(), a.begin(), a.end());
    };
    return cb;
  }
};

class ClusterStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto uri = Server().NewSchemaUri("cluster");
    ASSERT_THAT(uri, IsOk());
    uri_ = *uri;
    schema_ = uri_.substr(uri_.rfind("%3D") + 3);
  }

  std::unique_ptr<PostgresStore> OpenNode(
      const std::string& name, Reports& reports,
      absl::Duration lease = absl::Milliseconds(300),
      std::vector<std::string> kinds = {}) {
    StoreOptions o;
    o.kind = uri_;
    o.postgres_uri = uri_;
    o.cluster.enabled = true;
    o.cluster.node_id = name;
    o.cluster.lease = lease;
    o.cluster.backoff_base = absl::Milliseconds(1);
    o.cluster.backoff_max = absl::Milliseconds(1);
    o.cluster.background = false;
    absl::StatusOr<std::unique_ptr<PostgresStore>> store =
        PostgresStore::Open(o);
    EXPECT_THAT(store, IsOk());
    if (!store.ok()) return nullptr;
    EXPECT_THAT((*store)->StartCluster(reports.Callbacks(), std::move(kinds)),
                IsOk());
    return std::move(*store);
  }

  static v1::Task Queued(const std::string& id, int priority = 0) {
    v1::Task t;
    t.set_id(id);
    t.set_queue("default");
    t.set_kind("echo");
    t.set_state(v1::QUEUED);
    t.set_priority(priority);
    t.set_max_attempts(5);
    return t;
  }

  static absl::Status Insert(Store& store, std::vector<v1::Task> tasks) {
    Notification done;
    absl::Status status;
    store.Insert(std::move(tasks),
                 [&](const absl::StatusOr<std::vector<InsertResult>>& r) {
                   status = r.status();
                   done.Notify();
                 });
    done.WaitForNotification();
    return status;
  }

  static absl::Status Update(Store& store, std::vector<v1::Task> tasks) {
    Notification done;
    absl::Status status;
    store.Update(std::move(tasks), [&](absl::Status s) {
      status = s;
      done.Notify();
    });
    done.WaitForNotification();
    return status;
  }

  // Reaps with `store` until `n` attempts were reaped (their leases expire
  // on the database clock), or fails after 10 s.
  static void ReapUntil(PostgresStore& store, int n) {
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    int reaped = 0;
    while (reaped < n && absl::Now() < deadline) {
      absl::StatusOr<int> r = store.ReapExpired();
      ASSERT_THAT(r, IsOk());
      reaped += *r;
      if (reaped < n) absl::SleepFor(absl::Milliseconds(20));  // poll
    }
    ASSERT_EQ(reaped, n);
  }

  std::string uri_;
  std::string schema_;
};

TEST_F(ClusterStoreTest, ClaimsByPriorityThenFifoAndHonoursDelays) {
  Reports reports;
  auto a = OpenNode("a", reports);
  ASSERT_NE(a, nullptr);
  v1::Task delayed = Queued("t0", 5);
  absl::Time later = absl::Now() + absl::Hours(1);
  delayed.mutable_not_before()->set_seconds(absl::ToUnixSeconds(later));
  ASSERT_THAT(Insert(*a, {Queued("t1"), Queued("t2", 3), Queued("t3"),
                          Queued("t4", 3), delayed}),
              IsOk());
  auto claimed = a->Claim(3);
  ASSERT_THAT(claimed, IsOk());
  std::vector<std::string> ids;
  for (const v1::Task& t : *claimed) {
    ids.push_back(t.id());
    EXPECT_EQ(t.attempt(), 1);
  }
  EXPECT_THAT(ids, ElementsAre("t2", "t4", "t1"));
  claimed = a->Claim(10);
  ASSERT_THAT(claimed, IsOk());
  ASSERT_THAT(*claimed, SizeIs(1));  // t0 waits an hour
  EXPECT_EQ((*claimed)[0].id(), "t3");
  EXPECT_EQ(Query(absl::StrCat(
                "SELECT string_agg(owner_node || ':' || attempt, ',') FROM ",
                schema_, ".tasks WHERE state = 2")),
            "a:1,a:1,a:1,a:1");
}

// Nodes may run different handlers: a node claims only the kinds it
// registered, passing over others (which stay QUEUED for a node that runs
// them), and learns the kinds the other live nodes run.
TEST_F(ClusterStoreTest, ANodeClaimsOnlyItsKindsAndKnowsTheOthers) {
  Reports ra, rg;
  auto a = OpenNode("a", ra, absl::Seconds(10), {"echo", "sleep"});
  ASSERT_NE(a, nullptr);
  auto g = OpenNode("g", rg, absl::Seconds(10), {"gpu.render"});
  ASSERT_NE(g, nullptr);
  auto of_kind = [](const std::string& id, std::string kind, int priority = 0) {
    v1::Task t = Queued(id, priority);
    t.set_kind(std::move(kind));
    return t;
  };
  ASSERT_THAT(Insert(*a, {of_kind("x1", "gpu.render", 9), of_kind("e1", "echo"),
                          of_kind("x2", "gpu.render", 9),
                          of_kind("s1", "sleep"), of_kind("e2", "echo")}),
              IsOk());
  auto ids_of = [](const absl::StatusOr<std::vector<v1::Task>>& tasks) {
    std::vector<std::string> ids;
    if (tasks.ok()) {
      for (const v1::Task& t : *tasks) ids.push_back(t.id());
    }
    return ids;
  };
  auto claimed = a->Claim(10);
  ASSERT_THAT(claimed, IsOk());
  EXPECT_THAT(ids_of(claimed), ElementsAre("e1", "e2", "s1"));
  EXPECT_EQ(Query(absl::StrCat("SELECT string_agg(id, ',' ORDER BY id) FROM ",
                               schema_, ".tasks WHERE state = 1")),
            "x1,x2");
  claimed = g->Claim(10);
  ASSERT_THAT(claimed, IsOk());
  EXPECT_THAT(ids_of(claimed), ElementsAre("x1", "x2"));
  // a registered before g: it learns g's kinds at its next count.
  ASSERT_THAT(a->Heartbeat(), IsOk());
  EXPECT_TRUE(a->OtherNodeRuns("gpu.render"));
  EXPECT_FALSE(a->OtherNodeRuns("echo"));  // only a runs it
  EXPECT_TRUE(g->OtherNodeRuns("echo"));
  EXPECT_TRUE(g->OtherNodeRuns("sleep"));
  EXPECT_FALSE(g->OtherNodeRuns("gpu.render"));
  EXPECT_FALSE(g->OtherNodeRuns("nobody.runs.this"));
}

TEST_F(ClusterStoreTest, ReadEndedReturnsOnlyEndedAndUnknownTasks) {
  Reports reports;
  auto a = OpenNode("a", reports);
  ASSERT_NE(a, nullptr);
  ASSERT_THAT(Insert(*a, {Queued("q"), Queued("r"), Queued("s")}), IsOk());
  auto claimed = a->Claim(1);  // q: RUNNING
  ASSERT_THAT(claimed, IsOk());
  ASSERT_THAT(*claimed, SizeIs(1));
  v1::Task done = Queued("s");
  done.set_state(v1::SUCCEEDED);
  done.set_result("out");
  ASSERT_THAT(Update(*a, {done}), IsOk());
  auto ended = a->ReadEnded({"q", "r", "s", "nope"});
  ASSERT_THAT(ended, IsOk());
  ASSERT_THAT(ended->terminal, SizeIs(1));
  EXPECT_EQ(ended->terminal[0].id(), "s");
  EXPECT_EQ(ended->terminal[0].state(), v1::SUCCEEDED);
  EXPECT_EQ(ended->terminal[0].result(), "out");
  EXPECT_THAT(ended->unknown, ElementsAre("nope"));
}

TEST_F(ClusterStoreTest, TwoNodesNeverClaimTheSameTask) {
  Reports ra, rb;
  auto a = OpenNode("a", ra);
  auto b = OpenNode("b", rb);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  std::vector<v1::Task> tasks;
  tasks.reserve(200);
  for (int i = 0; i < 200; ++i) tasks.push_back(Queued(absl::StrCat("t", i)));
  ASSERT_THAT(Insert(*a, tasks), IsOk());
  std::vector<std::string> got_a, got_b;
  std::thread ta([&] {
    for (;;) {
      auto c = a->Claim(7);
      if (!c.ok() || c->empty()) return;
      for (const v1::Task& t : *c) got_a.push_back(t.id());
    }
  });
  for (;;) {
    auto c = b->Claim(5);
    ASSERT_THAT(c, IsOk());
    if (c->empty()) break;
    for (const v1::Task& t : *c) got_b.push_back(t.id());
  }
  ta.join();
  std::set<std::string> all(got_a.begin(), got_a.end());
  all.insert(got_b.begin(), got_b.end());
  EXPECT_EQ(got_a.size() + got_b.size(), 200u);
  EXPECT_EQ(all.size(), 200u);
}

// A give-back (QUEUED at the attempt before the claimed one) can be
// claimed again by the same node, at the same attempt number, right after
// it commits. The release of the old claim must not take the new one with
// it: the new attempt's completion is written, not refused.
TEST_F(ClusterStoreTest, GiveBackClaimedAgainAtOnceKeepsTheNewClaim) {
  Reports ra;
  auto a = OpenNode("a", ra);
  ASSERT_NE(a, nullptr);
  ASSERT_THAT(Insert(*a, {Queued("t1")}), IsOk());
  auto first = a->Claim(1);
  ASSERT_THAT(first, IsOk());
  ASSERT_THAT(*first, SizeIs(1));
  ASSERT_EQ((*first)[0].attempt(), 1);

  // The re-claim happens between the give-back's commit and the writer's
  // bookkeeping of it.
  absl::StatusOr<std::vector<v1::Task>> again;
  bool claimed = false;
  a->SetAfterCommitHookForTest([&] {
    if (claimed) return;
    claimed = true;
    again = a->Claim(1);
  });
  v1::Task back = (*first)[0];
  back.set_state(v1::QUEUED);
  back.set_attempt(0);
  ASSERT_THAT(Update(*a, {back}), IsOk());
  ASSERT_TRUE(claimed);
  ASSERT_THAT(again, IsOk());
  ASSERT_THAT(*again, SizeIs(1));
  EXPECT_EQ((*again)[0].attempt(), 1);

  v1::Task done = (*again)[0];
  done.set_state(v1::SUCCEEDED);
  done.set_result("ok");
  done.mutable_finished_at()->set_seconds(absl::ToUnixSeconds(absl::Now()));
  EXPECT_THAT(Update(*a, {done}), IsOk());
  EXPECT_EQ(a->fenced_writes(), 0);
  auto stored = a->Get("t1");
  ASSERT_THAT(stored, IsOk());
  EXPECT_EQ(stored->state(), v1::SUCCEEDED);
  EXPECT_EQ(stored->result(), "ok");
}

TEST_F(ClusterStoreTest, LateCompletionOfAReclaimedAttemptIsRefused) {
  Reports ra, rb;
  auto a = OpenNode("a", ra);
  auto b = OpenNode("b", rb);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  ASSERT_THAT(Insert(*a, {Queued("t1")}), IsOk());
  auto mine = a->Claim(1);
  ASSERT_THAT(mine, IsOk());
  ASSERT_THAT(*mine, SizeIs(1));
  // Node a stops heart-beating: b's reaper takes the task back, b runs it.
  ReapUntil(*b, 1);
  auto theirs = b->Claim(1);
  ASSERT_THAT(theirs, IsOk());
  ASSERT_THAT(*theirs, SizeIs(1));
  EXPECT_EQ((*theirs)[0].attempt(), 2);
  EXPECT_EQ((*theirs)[0].error().reason(), v1::WORKER_LOST);
  EXPECT_THAT((*theirs)[0].error().message(), HasSubstr("lease expired"));

  // a's late completion: the call succeeds, the write is refused.
  v1::Task late = (*mine)[0];
  late.set_state(v1::SUCCEEDED);
  late.set_result("from a");
  late.mutable_finished_at()->set_seconds(absl::ToUnixSeconds(absl::Now()));
  ASSERT_THAT(Update(*a, {late}), IsOk());
  EXPECT_EQ(a->fenced_writes(), 1);
  {
    MutexLock lock(&ra.mu);
    ASSERT_THAT(ra.fenced, SizeIs(1));
    EXPECT_EQ(ra.fenced[0].task_id, "t1");
    EXPECT_EQ(ra.fenced[0].attempt, 1);
  }
  auto stored = b->Get("t1");
  ASSERT_THAT(stored, IsOk());
  // b's claim: RUNNING at attempt 2 (read from the row's columns; no
  // RUNNING record is written), and no result.
  EXPECT_EQ(stored->state(), v1::RUNNING);
  EXPECT_EQ(stored->attempt(), 2);
  EXPECT_EQ(stored->result(), "");

  // b's completion of the current attempt is the one that counts.
  v1::Task current = (*theirs)[0];
  current.set_state(v1::SUCCEEDED);
  current.set_result("from b");
  current.mutable_finished_at()->set_seconds(absl::ToUnixSeconds(absl::Now()));
  ASSERT_THAT(Update(*b, {current}), IsOk());
  EXPECT_EQ(b->fenced_writes(), 0);
  stored = a->Get("t1");
  ASSERT_THAT(stored, IsOk());
  EXPECT_EQ(stored->state(), v1::SUCCEEDED);
  EXPECT_EQ(stored->result(), "from b");
  EXPECT_EQ(stored->attempt(), 2);
  // A second late write changes nothing either.
  ASSERT_THAT(Update(*a, {late}), IsOk());
  stored = a->Get("t1");
  ASSERT_THAT(stored, IsOk());
  EXPECT_EQ(stored->result(), "from b");
  // The lost attempt is in the history.
  EXPECT_EQ(Query(absl::StrCat(
                "SELECT string_agg(node_id || ':' || attempt || ':' || "
                "reason, ',') FROM ",
                schema_, ".task_events WHERE task_id = 't1'")),
            "a:1:LOST");
}

TEST_F(ClusterStoreTest, HeartbeatExtendsLeasesAndReportsLostOnes) {
  Reports ra, rb;
  auto a = OpenNode("a", ra);
  auto b = OpenNode("b", rb);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  ASSERT_THAT(Insert(*a, {Queued("t1")}), IsOk());
  ASSERT_THAT(a->Claim(1), IsOk());
  ASSERT_THAT(a->Heartbeat(), IsOk());
  {
    MutexLock lock(&ra.mu);
    EXPECT_THAT(ra.lost, IsEmpty());
  }
  ReapUntil(*b, 1);
  ASSERT_THAT(a->Heartbeat(), IsOk());
  MutexLock lock(&ra.mu);
  ASSERT_THAT(ra.lost, SizeIs(1));
  EXPECT_EQ(ra.lost[0].task_id, "t1");
  EXPECT_EQ(ra.lost[0].attempt, 1);
}

TEST_F(ClusterStoreTest, HeartbeatWritesOnlyLeasesDueSoonAndKeepsThemAll) {
  constexpr absl::Duration kLease = absl::Seconds(1);
  Reports ra, rb;
  auto a = OpenNode("a", ra, kLease);
  auto b = OpenNode("b", rb, kLease);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  ASSERT_THAT(Insert(*a, {Queued("t1")}), IsOk());
  ASSERT_THAT(a->Claim(1), IsOk());
  const std::string lease = absl::StrCat("SELECT lease_until::text FROM ",
                                         schema_, ".tasks WHERE id = 't1'");
  const std::string claimed = Query(lease);
  // A lease just taken is not written again.
  ASSERT_THAT(a->Heartbeat(), IsOk());
  EXPECT_EQ(Query(lease), claimed);
  // Heart-beaten every 50 ms for 2.5 leases, it never expires.
  const absl::Time end = absl::Now() + 5 * kLease / 2;
  while (absl::Now() < end) {
    ASSERT_THAT(a->Heartbeat(), IsOk());
    absl::StatusOr<int> reaped = b->ReapExpired();
    ASSERT_THAT(reaped, IsOk());
    ASSERT_EQ(*reaped, 0);
    absl::SleepFor(absl::Milliseconds(50));  // the heartbeat's period
  }
  EXPECT_NE(Query(lease), claimed);
  MutexLock lock(&ra.mu);
  EXPECT_THAT(ra.lost, IsEmpty());
}

TEST_F(ClusterStoreTest, ANodeKnowsWhetherItIsAlone) {
  // A lease long enough for a loaded machine to open the second node
  // within it.
  constexpr absl::Duration kLease = absl::Seconds(2);
  Reports ra, rb;
  auto a = OpenNode("a", ra, kLease);
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->HoldAlone(), kLease / 10);
  ASSERT_THAT(a->Heartbeat(), IsOk());
  auto b = OpenNode("b", rb, kLease);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->HoldAlone(), absl::ZeroDuration());
  // a (no upkeep thread, so no notification) learns it at its heartbeat.
  ASSERT_THAT(a->Heartbeat(), IsOk());
  EXPECT_EQ(a->HoldAlone(), absl::ZeroDuration());
  b.reset();
  // b's heartbeat stops: a lease later a is alone again.
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (a->HoldAlone() == absl::ZeroDuration() && absl::Now() < deadline) {
    ASSERT_THAT(a->Heartbeat(), IsOk());
    absl::SleepFor(absl::Milliseconds(50));  // poll
  }
  EXPECT_EQ(a->HoldAlone(), kLease / 10);
}

TEST_F(ClusterStoreTest, LastAttemptLostGoesDead) {
  Reports ra, rb;
  auto a = OpenNode("a", ra);
  auto b = OpenNode("b", rb);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  v1::Task t = Queued("t1");
  t.set_max_attempts(1);
  ASSERT_THAT(Insert(*a, {t}), IsOk());
  ASSERT_THAT(a->Claim(1), IsOk());
  ReapUntil(*b, 1);
  auto stored = b->Get("t1");
  ASSERT_THAT(stored, IsOk());
  EXPECT_EQ(stored->state(), v1::DEAD);
  EXPECT_EQ(stored->error().reason(), v1::WORKER_LOST);
  auto none = b->Claim(1);
  ASSERT_THAT(none, IsOk());
  EXPECT_THAT(*none, IsEmpty());
}

TEST_F(ClusterStoreTest, SingleNodeStoreAndClusterNodesExcludeEachOther) {
  Reports ra;
  auto a = OpenNode("a", ra);
  ASSERT_NE(a, nullptr);
  StoreOptions single;
  single.kind = uri_;
  EXPECT_THAT(OpenStore(single),
              ::forq::testing::StatusIs(absl::StatusCode::kFailedPrecondition,
                                        HasSubstr("in use")));
  a->Close();
  a.reset();
  auto s = OpenStore(single);
  ASSERT_THAT(s, IsOk());
  Reports rb;
  StoreOptions node;
  node.kind = uri_;
  node.postgres_uri = uri_;
  node.cluster.enabled = true;
  node.cluster.background = false;
  EXPECT_THAT(PostgresStore::Open(node),
              ::forq::testing::StatusIs(absl::StatusCode::kFailedPrecondition,
                                        HasSubstr("single-node forqd")));
}

}  // namespace
}  // namespace forq::server
