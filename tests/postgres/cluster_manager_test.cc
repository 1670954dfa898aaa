// Manager objects across cluster nodes: three real forqd nodes on one
// PostgreSQL database serve ONE set of Manager objects. One node owns them
// (docs/cluster.md, "Manager objects"); the others forward their clients'
// and tasks' calls to it. A lock held through one node blocks an acquire
// through another, a queue put through one is got through another, tasks
// on a non-owner node share a lock and a counter with clients, and when
// the owner is killed another node serves the persisted objects.
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <future>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"

#include "forq/client.h"
#include "forq/manager.h"
#include "forq/v1/manager.grpc.pb.h"
#include "tests/postgres/cluster_nodes.h"
#include "tests/testing/await_task.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace forq {
namespace {

using ::forq::testing::AwaitAll;
using ::forq::testing::AwaitOwner;
using ::forq::testing::AwaitWait;
using ::forq::testing::ClusterNode;
using ::forq::testing::ClusterNodes;
using ::forq::testing::IsOk;
using ::forq::testing::OwnerNode;

// Awaits a node answering Manager calls (it has learned the owner).
absl::Status AwaitServing(Manager& m,
                          absl::Duration timeout = absl::Seconds(20)) {
  const absl::Time give_up = absl::Now() + timeout;
  absl::Status last;
  while (absl::Now() < give_up) {
    absl::StatusOr<int64_t> n = m.dict("probe").Len();
    if (n.ok()) return absl::OkStatus();
    last = n.status();
    if (!absl::IsUnavailable(last)) return last;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return last;
}

// Starts a, b and c; a owns the Manager (it started alone).
struct Three {
  std::unique_ptr<ClusterNodes> nodes;
  ClusterNode* a = nullptr;
  ClusterNode* b = nullptr;
  ClusterNode* c = nullptr;
};

absl::StatusOr<Three> StartThree(const std::string& prefix) {
  absl::StatusOr<ClusterNodes> nodes = ClusterNodes::Create(prefix);
  if (!nodes.ok()) return nodes.status();
  Three t;
  t.nodes = std::make_unique<ClusterNodes>(*std::move(nodes));
  absl::StatusOr<ClusterNode*> a = t.nodes->Start("a");
  if (!a.ok()) return a.status();
  t.a = *a;
  if (!AwaitOwner(*t.nodes, "a")) {
    return absl::DeadlineExceededError("node a did not take the Manager");
  }
  auto started = t.nodes->StartNodes({"b", "c"});
  if (!started.ok()) return started.status();
  t.b = (*started)[0];
  t.c = (*started)[1];
  return t;
}

TEST(ClusterManagerTest, LockViaOneNodeBlocksAcquireViaAnotherQueueCrosses) {
  auto t = StartThree("mgrlock");
  ASSERT_THAT(t, IsOk());
  Manager via_a(*t->a->client);
  Manager via_b(*t->b->client);
  Manager via_c(*t->c->client);
  for (Manager* m : {&via_a, &via_b, &via_c}) {
    ASSERT_THAT(AwaitServing(*m), IsOk());
  }

  // A lock held through a (the owner) blocks an acquire through b.
  auto held = via_a.lock("shared").Acquire(absl::Seconds(5));
  ASSERT_THAT(held, IsOk());
  ASSERT_TRUE(held->acquired);
  std::future<absl::StatusOr<LockGrant>> waiting = std::async(
      std::launch::async,
      [&] { return via_b.lock("shared").Acquire(absl::Seconds(60)); });
  // b's acquire is parked on the owner: the lock shows one waiter, seen
  // through c.
  int64_t waiters = 0;
  for (absl::Time give_up = absl::Now() + absl::Seconds(20);
       absl::Now() < give_up && waiters != 1;) {
    auto objects = via_c.ListObjects("shared");
    ASSERT_THAT(objects, IsOk());
    for (const v1::ObjectInfo& o : objects->objects()) {
      if (o.name() == "shared") waiters = o.waiters();
    }
    if (waiters != 1) absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_EQ(waiters, 1);
  EXPECT_EQ(waiting.wait_for(std::chrono::milliseconds(300)),
            std::future_status::timeout)
      << "the acquire through b returned while a held the lock";
  // Released through a: b gets it, with a larger fencing token.
  ASSERT_THAT(via_a.lock("shared").Release(), IsOk());
  ASSERT_EQ(waiting.wait_for(std::chrono::seconds(20)),
            std::future_status::ready);
  auto granted = waiting.get();
  ASSERT_THAT(granted, IsOk());
  EXPECT_TRUE(granted->acquired);
  EXPECT_GT(granted->token, held->token);
  // And now a cannot take it (b holds it) until b releases.
  auto try_a = via_a.lock("shared").Acquire(absl::ZeroDuration());
  ASSERT_THAT(try_a, IsOk());
  EXPECT_FALSE(try_a->acquired);
  ASSERT_THAT(via_b.lock("shared").Release(), IsOk());

  // A queue put through a is got through c, and one through c by b: one
  // queue, whichever node.
  ASSERT_THAT(via_a.queue("jobs").Put("from-a"), IsOk());
  EXPECT_THAT(via_c.queue("jobs").Get(absl::Seconds(5)),
              ::testing::Eq(absl::StatusOr<std::string>("from-a")));
  // A get parked through b before the put through c.
  std::future<absl::StatusOr<std::string>> parked_get =
      std::async(std::launch::async,
                 [&] { return via_b.queue("jobs").Get(absl::Seconds(30)); });
  ASSERT_THAT(via_c.queue("jobs").Put("from-c"), IsOk());
  ASSERT_EQ(parked_get.wait_for(std::chrono::seconds(20)),
            std::future_status::ready);
  EXPECT_THAT(parked_get.get(),
              ::testing::Eq(absl::StatusOr<std::string>("from-c")));
  auto size = via_a.queue("jobs").Size();
  ASSERT_THAT(size, IsOk());
  EXPECT_EQ(size->size(), 0);

  // A dict written through b reads back through c and a.
  ASSERT_THAT(via_b.dict("cfg").Set("k", "v"), IsOk());
  EXPECT_THAT(via_c.dict("cfg").Get("k"),
              ::testing::Eq(absl::StatusOr<std::string>("v")));
  EXPECT_THAT(via_a.dict("cfg").Get("k"),
              ::testing::Eq(absl::StatusOr<std::string>("v")));

  // What forwarding costs here: sequential dict gets through the owner
  // and through a forwarding node (printed for docs/cluster.md).
  auto p50 = [](Manager& m) {
    std::vector<absl::Duration> took;
    for (int i = 0; i < 200; ++i) {
      const absl::Time start = absl::Now();
      EXPECT_THAT(m.dict("cfg").Get("k"), IsOk());
      took.push_back(absl::Now() - start);
    }
    std::sort(took.begin(), took.end());
    return took[took.size() / 2];
  };
  std::cout << "dict get p50: through the owner " << p50(via_a)
            << ", forwarded through b " << p50(via_b) << "\n";

  // A Watch through c (relayed from the owner) sees a change made through
  // b.
  auto stub = v1::ManagerService::NewStub(grpc::CreateChannel(
      t->c->process->grpc_address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext watch_ctx;
  watch_ctx.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(30));
  v1::ManagerWatchRequest watch;
  watch.set_name("cfg");
  std::unique_ptr<grpc::ClientReader<v1::ManagerEvent>> events =
      stub->Watch(&watch_ctx, watch);
  v1::ManagerEvent event;
  ASSERT_TRUE(events->Read(&event)) << events->Finish().error_message();
  EXPECT_EQ(event.op(), "snapshot");
  ASSERT_THAT(via_b.dict("cfg").Set("k", "w"), IsOk());
  ASSERT_TRUE(events->Read(&event));
  EXPECT_EQ(event.op(), "set");
  EXPECT_EQ(event.key(), "k");
  EXPECT_EQ(event.value(), "w");
  watch_ctx.TryCancel();
  events->Finish();
}

TEST(ClusterManagerTest, TasksOnANonOwnerShareALockAndCounterWithClients) {
  auto t = StartThree("mgrtask");
  ASSERT_THAT(t, IsOk());
  Manager via_a(*t->a->client);
  Manager via_c(*t->c->client);
  ASSERT_THAT(AwaitServing(via_a), IsOk());
  ASSERT_THAT(AwaitServing(via_c), IsOk());
  ASSERT_THAT(via_a.list("counter").Append("0"), IsOk());
  // Only b runs tasks; b does not own the Manager, so every call its tasks
  // make goes through b's side channel, then to a.
  ASSERT_THAT(t->a->client->Drain(absl::Seconds(5)), IsOk());
  ASSERT_THAT(t->c->client->Drain(absl::Seconds(5)), IsOk());

  constexpr int kTasks = 6;
  constexpr int kPerTask = 25;
  constexpr int kByClient = 25;
  std::vector<std::string> ids;
  for (int i = 0; i < kTasks; ++i) {
    Client& to = i % 2 == 0 ? *t->a->client : *t->c->client;
    auto f = to.Submit("mp.counter",
                       absl::StrCat("list=counter delta=1 n=", kPerTask));
    ASSERT_THAT(f, IsOk());
    ids.push_back(f->id());
  }
  // Meanwhile a client of c increments under the same lock.
  for (int i = 0; i < kByClient; ++i) {
    auto guard = via_c.lock("counter.lock").Guard();
    ASSERT_THAT(guard, IsOk());
    auto v = via_c.list("counter").Get(0);
    ASSERT_THAT(v, IsOk());
    ASSERT_THAT(via_c.list("counter").Set(0, absl::StrCat(std::stoll(*v) + 1)),
                IsOk());
  }
  auto done = AwaitAll(*t->c->client, ids, absl::Seconds(120));
  ASSERT_THAT(done, IsOk());
  for (const v1::Task& task : *done) {
    EXPECT_EQ(task.state(), v1::SUCCEEDED) << task.ShortDebugString();
    EXPECT_EQ(t->nodes->NodeOfPid(task.worker_pid()), "b") << task.id();
  }
  EXPECT_THAT(via_a.list("counter").Get(0),
              ::testing::Eq(absl::StatusOr<std::string>(
                  absl::StrCat(kTasks * kPerTask + kByClient))));
}

TEST(ClusterManagerTest, KilledOwnerIsReplacedAndPersistedObjectsSurvive) {
  auto t = StartThree("mgrkill");
  ASSERT_THAT(t, IsOk());
  ManagerOptions quick;
  quick.rpc_timeout = absl::Seconds(5);
  auto via_b = std::make_unique<Manager>(*t->b->client, quick);
  Manager via_c(*t->c->client, quick);
  ASSERT_THAT(AwaitServing(*via_b), IsOk());
  ASSERT_THAT(AwaitServing(via_c), IsOk());

  // Written through non-owners, persisted by the owner a.
  ASSERT_THAT(via_b->dict("d").Set("k", "before"), IsOk());
  ASSERT_THAT(via_c.value("v").Set("41"), IsOk());
  ASSERT_THAT(via_c.value("v").Add("1"), IsOk());
  ASSERT_THAT(via_b->queue("q").Put("item"), IsOk());
  // A lock held by b's session, which lives on a.
  auto held = via_b->lock("held").Acquire(absl::Seconds(5));
  ASSERT_THAT(held, IsOk());
  ASSERT_TRUE(held->acquired);

  ASSERT_EQ(OwnerNode(*t->nodes), "a");
  ASSERT_THAT(t->a->process->Kill(SIGKILL), IsOk());
  const absl::Time killed = absl::Now();

  // Through c: every answer is the persisted value or Unavailable (the
  // hand-over), never a wrong value or NotFound.
  std::string value;
  int unavailable = 0;
  while (absl::Now() < killed + absl::Seconds(30)) {
    absl::StatusOr<std::string> got = via_c.dict("d").Get("k");
    if (got.ok()) {
      value = *got;
      break;
    }
    ASSERT_TRUE(absl::IsUnavailable(got.status())) << got.status();
    ++unavailable;
    absl::SleepFor(absl::Milliseconds(20));
  }
  const absl::Duration handover = absl::Now() - killed;
  EXPECT_EQ(value, "before");
  // A node serves as owner once it has loaded the objects, and writes the
  // owner row just after: await the row.
  std::string new_owner = OwnerNode(*t->nodes);
  for (const absl::Time until = absl::Now() + absl::Seconds(10);
       new_owner == "a" && absl::Now() < until;
       new_owner = OwnerNode(*t->nodes)) {
    absl::SleepFor(absl::Milliseconds(20));  // poll interval
  }
  std::cout << "hand-over after kill -9 of a: " << handover << ", new owner "
            << new_owner << ", " << unavailable
            << " Unavailable answers meanwhile\n";
  EXPECT_TRUE(new_owner == "b" || new_owner == "c") << new_owner;
  EXPECT_LT(handover, absl::Seconds(15));

  EXPECT_THAT(via_c.value("v").Get(),
              ::testing::Eq(absl::StatusOr<std::string>("42")));
  EXPECT_THAT(via_c.queue("q").Get(absl::Seconds(5)),
              ::testing::Eq(absl::StatusOr<std::string>("item")));
  // The lock died with the owner that held its session (as a Python
  // manager process takes its locks with it); a new grant's token is
  // larger than any of the old owner's.
  auto again = via_c.lock("held").Acquire(absl::Seconds(5));
  ASSERT_THAT(again, IsOk());
  EXPECT_TRUE(again->acquired);
  EXPECT_GT(again->token, held->token);
  // b's old session is gone with a: its release is refused, not applied.
  EXPECT_FALSE(via_b->lock("held").Release().ok());
  via_b.reset();
}

// With --auth_tokens_file on every node: the node forwarding a call checks
// the caller's role, then vouches for it with its --cluster_token_file
// token, for clients' calls (a read token may read through it, not write)
// and its tasks' calls alike.
TEST(ClusterManagerTest, ForwardedCallsAreCheckedThenCarryTheNodesToken) {
  auto nodes = ClusterNodes::Create("mgrauth");
  ASSERT_THAT(nodes, IsOk());
  forq::testing::TempDir dir("forq-mgr-auth");
  const std::string kAdmin = "admin-token-0123456789";
  const std::string kRead = "read-token-0123456789";
  const std::string kNode = "node-token-0123456789";
  std::ofstream(dir.path() + "/tokens") << kAdmin << " admin\n"
                                        << kRead << " read\n"
                                        << kNode << " admin\n";
  std::ofstream(dir.path() + "/node-token") << kNode << "\n";
  auto start = [&](const std::string& name) {
    forq::testing::ForqdOptions o;
    o.workers = 2;
    o.flags = {
        absl::StrCat("--store=", nodes->UriViaPort(nodes->server().port())),
        "--cluster", absl::StrCat("--node_id=", name),
        absl::StrCat("--auth_tokens_file=", dir.path(), "/tokens"),
        absl::StrCat("--cluster_token_file=", dir.path(), "/node-token")};
    return forq::testing::ForqdProcess::Start(o);
  };
  auto a = start("a");
  ASSERT_THAT(a, IsOk());
  ASSERT_TRUE(AwaitOwner(*nodes, "a"));
  auto b = start("b");
  ASSERT_THAT(b, IsOk());

  auto admin_b =
      Client::Connect({.address = (*b)->grpc_address(), .token = kAdmin});
  ASSERT_THAT(admin_b, IsOk());
  auto admin_a =
      Client::Connect({.address = (*a)->grpc_address(), .token = kAdmin});
  ASSERT_THAT(admin_a, IsOk());
  Manager m_b(**admin_b);
  Manager m_a(**admin_a);
  ASSERT_THAT(AwaitServing(m_b), IsOk());
  // Written through b, read through a.
  ASSERT_THAT(m_b.list("counter").Append("0"), IsOk());
  EXPECT_THAT(m_a.list("counter").Get(0),
              ::testing::Eq(absl::StatusOr<std::string>("0")));
  // A read token may read through b (ListGet, a read method), not write.
  {
    auto stub = v1::ManagerService::NewStub(grpc::CreateChannel(
        (*b)->grpc_address(), grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer " + kRead);
    v1::ListRequest get;
    get.set_name("counter");
    get.set_index(0);
    v1::ListResponse got;
    grpc::Status s = stub->ListGet(&ctx, get, &got);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(got.value(), "0");
  }
  {
    auto stub = v1::ManagerService::NewStub(grpc::CreateChannel(
        (*b)->grpc_address(), grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer " + kRead);
    v1::ListRequest append;
    append.set_name("counter");
    append.set_value("1");
    v1::ListResponse appended;
    EXPECT_EQ(stub->ListAppend(&ctx, append, &appended).error_code(),
              grpc::StatusCode::PERMISSION_DENIED);
  }

  // The pipelined client with a read token: the Session stream needs role
  // submit, and the client says so rather than "unavailable, retry".
  {
    auto read_b =
        Client::Connect({.address = (*b)->grpc_address(), .token = kRead});
    ASSERT_THAT(read_b, IsOk());
    Manager r_b(**read_b);
    EXPECT_EQ(r_b.list("counter").Append("1").status().code(),
              absl::StatusCode::kPermissionDenied);
  }

  // A task on b (a drained) reaches the owner with b's node token.
  ASSERT_THAT((*admin_a)->Drain(absl::Seconds(5)), IsOk());
  auto f = (*admin_b)->Submit("mp.counter", "list=counter delta=1 n=10");
  ASSERT_THAT(f, IsOk());
  auto done = AwaitWait(**admin_b, f->id(), absl::Seconds(60));
  ASSERT_THAT(done, IsOk());
  EXPECT_EQ(done->task().state(), v1::SUCCEEDED)
      << done->task().ShortDebugString();
  EXPECT_THAT(m_a.list("counter").Get(0),
              ::testing::Eq(absl::StatusOr<std::string>("10")));
}

}  // namespace
}  // namespace forq
