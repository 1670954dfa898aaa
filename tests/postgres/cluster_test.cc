// Several real forqd nodes in cluster mode on one PostgreSQL database:
// work submitted to one node runs on every node's workers, exactly once,
// and a Wait on any node returns a task another node finished.
#include <algorithm>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"

#include "forq/client.h"
#include "forq/v1/task.grpc.pb.h"
#include "tests/postgres/cluster_nodes.h"
#include "tests/testing/await_task.h"
#include "tests/testing/run_budget.h"
#include "tests/testing/run_timer.h"
#include "tests/testing/status_matchers.h"

namespace forq {
namespace {

using ::forq::testing::AwaitAll;
using ::forq::testing::AwaitWait;
using ::forq::testing::ClusterNode;
using ::forq::testing::ClusterNodes;
using ::forq::testing::IsOk;
using ::forq::testing::RunBudget;
using ::forq::testing::RunTimer;
using ::forq::testing::RunWatchdog;
using ::forq::testing::SleepSpecs;

TEST(ClusterTest, TasksSubmittedToOneNodeRunOnEveryNodeExactlyOnce) {
  auto nodes = ClusterNodes::Create("spread");
  ASSERT_THAT(nodes, IsOk());
  auto started = nodes->StartNodes({"a", "b"});
  ASSERT_THAT(started, IsOk());
  auto [a, b] = *started;

  // a takes what its workers have room for at once and queues the rest
  // for both; at 100 ms a task, a alone would need 2 s for them, so b
  // claims some unless it is stalled that long.
  constexpr int kTasks = 40;
  auto futures = a->client->SubmitBatch(SleepSpecs(kTasks, 100));
  ASSERT_THAT(futures, IsOk());
  std::vector<std::string> ids;
  for (const TaskFuture& f : *futures) ids.push_back(f.id());
  // Waited for on node a, though node b runs about half of them.
  auto done = AwaitAll(*a->client, ids, absl::Seconds(60));
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

std::vector<v1::TaskSpec> EchoSpecs(int n) {
  std::vector<v1::TaskSpec> specs(n);
  for (int i = 0; i < n; ++i) {
    specs[i].set_kind("echo");
    specs[i].set_payload(absl::StrCat(i));
  }
  return specs;
}

absl::Time StartedAt(const v1::Task& t) {
  return absl::FromUnixSeconds(t.started_at().seconds()) +
         absl::Nanoseconds(t.started_at().nanos());
}

// A node takes at insert only what its workers and buffer have room for;
// the rest of a large batch waits in the shared queue. A batch submitted
// after it must not pass those: it waits its turn in the shared queue too.
TEST(ClusterTest, TasksLeftInTheSharedQueueRunBeforeLaterSubmissions) {
  auto nodes = ClusterNodes::Create("fifo");
  ASSERT_THAT(nodes, IsOk());
  // No assignment queued behind a busy worker (--prefetch=0): one taken
  // back for the other worker starts after later ones, by design.
  auto a = nodes->Start("a", "10s", {"--prefetch=0"});
  ASSERT_THAT(a, IsOk());
  // Once a task has run, the node has looked at the shared queue and found
  // it empty: it takes what is submitted to it at insert.
  auto warm = (*a)->client->Submit("echo", "warm");
  ASSERT_THAT(warm, IsOk());
  auto warmed = AwaitWait(*(*a)->client, warm->id(), absl::Seconds(20));
  ASSERT_THAT(warmed, IsOk());
  ASSERT_TRUE(warmed->done());
  // More than a node takes at insert (room + 2,000 when it is alone).
  auto first = (*a)->client->SubmitBatch(EchoSpecs(3000));
  ASSERT_THAT(first, IsOk());
  auto later = (*a)->client->SubmitBatch(EchoSpecs(20));
  ASSERT_THAT(later, IsOk());
  std::vector<std::string> first_ids, later_ids;
  for (const TaskFuture& f : *first) first_ids.push_back(f.id());
  for (const TaskFuture& f : *later) later_ids.push_back(f.id());
  auto first_done = AwaitAll(*(*a)->client, first_ids, absl::Seconds(60));
  ASSERT_THAT(first_done, IsOk());
  auto later_done = AwaitAll(*(*a)->client, later_ids, absl::Seconds(60));
  ASSERT_THAT(later_done, IsOk());
  absl::Time later_first = absl::InfiniteFuture();
  for (const v1::Task& t : *later_done) {
    ASSERT_EQ(t.state(), v1::SUCCEEDED) << t.ShortDebugString();
    later_first = std::min(later_first, StartedAt(t));
  }
  int passed = 0;
  for (const v1::Task& t : *first_done) {
    ASSERT_EQ(t.state(), v1::SUCCEEDED) << t.ShortDebugString();
    passed += StartedAt(t) > later_first ? 1 : 0;
  }
  std::cout << "tasks of the first batch started after the later batch: "
            << passed << "\n";
  EXPECT_EQ(passed, 0);
}

TEST(ClusterTest, DrainedNodeLeavesItsSubmissionsToOthersAndWaitsForThem) {
  auto nodes = ClusterNodes::Create("drain");
  ASSERT_THAT(nodes, IsOk());
  auto started = nodes->StartNodes({"a", "b", "c"});
  ASSERT_THAT(started, IsOk());
  auto [a, b, c] = *started;
  ASSERT_THAT(a->client->Drain(absl::Seconds(5)), IsOk());

  auto f = a->client->Submit("echo", "hello");
  ASSERT_THAT(f, IsOk());
  // Wait on c; on a too (a runs nothing while drained).
  auto on_c = AwaitWait(*c->client, f->id(), absl::Seconds(20));
  ASSERT_THAT(on_c, IsOk());
  EXPECT_TRUE(on_c->done());
  EXPECT_EQ(on_c->task().state(), v1::SUCCEEDED);
  EXPECT_EQ(on_c->task().result(), "hello");
  const std::string ran_on = nodes->NodeOfPid(on_c->task().worker_pid());
  EXPECT_TRUE(ran_on == "b" || ran_on == "c") << ran_on;
  auto on_a = AwaitWait(*a->client, f->id(), absl::Seconds(20));
  ASSERT_THAT(on_a, IsOk());
  EXPECT_TRUE(on_a->done());
  EXPECT_EQ(on_a->task().result(), "hello");

  // A waiter on a that is already parked when another node finishes the
  // task is woken by the notification (well before its timeout), and a
  // task waited on a node that did not run it comes back with its result.
  // Both bounds count time in which the test ran (RunTimer).
  auto slow = a->client->Submit("sleep", "300");
  ASSERT_THAT(slow, IsOk());
  RunTimer timer;
  auto parked = AwaitWait(*a->client, slow->id(), absl::Seconds(30));
  ASSERT_THAT(parked, IsOk());
  EXPECT_TRUE(parked->done());
  EXPECT_EQ(parked->task().state(), v1::SUCCEEDED);
  EXPECT_LT(timer.Elapsed(), absl::Seconds(10));
  EXPECT_NE(nodes->NodeOfPid(parked->task().worker_pid()), "a");
}

// A Map through a node whose workers take nothing: its inputs go to the
// shared queue, another node runs them, and the results come back through
// the first node in input order; a bad input fails alone.
TEST(ClusterTest, MapThroughADrainedNodeRunsOnAnotherInOrder) {
  auto nodes = ClusterNodes::Create("map");
  ASSERT_THAT(nodes, IsOk());
  auto started = nodes->StartNodes({"a", "b"});
  ASSERT_THAT(started, IsOk());
  auto [a, b] = *started;
  ASSERT_THAT(a->client->Drain(absl::Seconds(5)), IsOk());

  std::vector<MapInput> inputs;
  inputs.reserve(20);
  for (int i = 0; i < 20; ++i) inputs.emplace_back(absl::StrCat("in", i));
  inputs[7] = MapInput("no such kind!", "x");
  std::vector<MapItem> items;
  MapStream stream = a->client->Map("echo", inputs);
  for (const MapItem& r : stream) items.push_back(r);
  ASSERT_THAT(stream.status(), IsOk());
  ASSERT_EQ(items.size(), inputs.size());
  for (size_t i = 0; i < items.size(); ++i) {
    EXPECT_EQ(items[i].index, i);
    if (i == 7) {
      EXPECT_EQ(items[i].status.code(), absl::StatusCode::kInvalidArgument)
          << items[i].status;
      continue;
    }
    ASSERT_TRUE(items[i].ok()) << i << ": " << items[i].status;
    EXPECT_EQ(items[i].result, absl::StrCat("in", i));
    auto task = b->client->Get(items[i].task_id);
    ASSERT_THAT(task, IsOk());
    EXPECT_EQ(nodes->NodeOfPid(task->worker_pid()), "b") << i;
  }
}

// `n` tasks of the example plugin's "example.reverse", payloads `prefix`
// followed by the task's number.
std::vector<v1::TaskSpec> ReverseSpecs(int n, absl::string_view prefix) {
  std::vector<v1::TaskSpec> specs(n);
  for (int i = 0; i < n; ++i) {
    specs[i].set_kind("example.reverse");
    specs[i].set_payload(absl::StrCat(prefix, i));
  }
  return specs;
}

// Submits `specs` through `client` and waits there for all of them.
absl::StatusOr<std::vector<v1::Task>> RunAll(
    Client& client, const std::vector<v1::TaskSpec>& specs) {
  auto futures = client.SubmitBatch(specs);
  if (!futures.ok()) return futures.status();
  std::vector<std::string> ids;
  for (const TaskFuture& f : *futures) ids.push_back(f.id());
  return AwaitAll(client, ids, absl::Seconds(60));
}

// Nodes may run different handlers: here only node a loads the example
// plugin. A node claims only the kinds its workers run, so a task of a kind
// node b lacks waits in the shared queue for a instead of failing on b
// (UNKNOWN_KIND), while the kinds both run still spread over both nodes;
// and b accepts that kind for a.
TEST(ClusterTest, ANodeClaimsOnlyTheKindsItsWorkersRun) {
  auto nodes = ClusterNodes::Create("kinds");
  ASSERT_THAT(nodes, IsOk());
  auto a = nodes->Start("a", "10s", {"--plugin=" FORQ_EXAMPLE_PLUGIN_PATH});
  ASSERT_THAT(a, IsOk());
  auto b = nodes->Start("b");
  ASSERT_THAT(b, IsOk());
  // A reverse ran on a, with the right result.
  auto ran_on_a = [&](const v1::Task& t) {
    EXPECT_EQ(t.state(), v1::SUCCEEDED) << t.ShortDebugString();
    EXPECT_EQ(t.result(),
              std::string(t.payload().rbegin(), t.payload().rend()));
    EXPECT_EQ(nodes->NodeOfPid(t.worker_pid()), "a") << t.ShortDebugString();
  };
  // a takes what its workers have room for at insert; the rest of the
  // sleeps (a needs 2 s for all of them) and the reverses behind them go
  // to the shared queue, where the idle b claims.
  std::vector<v1::TaskSpec> specs = SleepSpecs(40, 100);
  for (v1::TaskSpec& s : ReverseSpecs(20, "abc")) specs.push_back(s);
  auto done = RunAll(*(*a)->client, specs);
  ASSERT_THAT(done, IsOk());
  std::map<std::string, int> sleeps_by_node;
  for (const v1::Task& t : *done) {
    if (t.kind() == "example.reverse") {
      ran_on_a(t);
    } else {
      EXPECT_EQ(t.state(), v1::SUCCEEDED) << t.ShortDebugString();
      ++sleeps_by_node[nodes->NodeOfPid(t.worker_pid())];
    }
  }
  std::cout << "sleeps by node: a=" << sleeps_by_node["a"]
            << " b=" << sleeps_by_node["b"] << "\n";
  EXPECT_GT(sleeps_by_node["b"], 0);

  // b takes a kind only a runs (behind a load balancer a client cannot
  // pick the node), and leaves it to a through the shared queue.
  auto through_b = RunAll(*(*b)->client, ReverseSpecs(5, "via b "));
  ASSERT_THAT(through_b, IsOk());
  for (const v1::Task& t : *through_b) ran_on_a(t);
  // A kind no live node runs is refused, as on a single node.
  auto unknown = (*b)->client->Submit("no.such.kind", "x");
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(unknown.status().message()),
              ::testing::HasSubstr("no live node of the cluster runs it"));
}

// The time a parked Wait takes to return after the task finished, on the
// node that ran it and on another node (woken by NOTIFY). Prints both
// medians; the added cross-node latency is their difference.
TEST(ClusterTest, CrossNodeWaitAddsLittleLatency) {
  auto nodes = ClusterNodes::Create("latency");
  ASSERT_THAT(nodes, IsOk());
  auto started = nodes->StartNodes({"a", "b"});
  ASSERT_THAT(started, IsOk());
  auto [a, b] = *started;
  ASSERT_THAT(a->client->Drain(absl::Seconds(5)), IsOk());  // b runs all
  constexpr int kRounds = 30;
  auto measure = [&, &submitter = *b->client](Client& waiter) {
    std::vector<absl::Duration> lat;
    for (int i = 0; i < kRounds; ++i) {
      auto f = submitter.Submit("sleep", "30");
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
  const absl::Duration same = measure(*b->client);
  const absl::Duration cross = measure(*a->client);
  std::cout << "Wait return after finish, p50 of " << kRounds << ": same node "
            << absl::FormatDuration(same) << ", other node "
            << absl::FormatDuration(cross) << ", added "
            << absl::FormatDuration(cross - same) << "\n";
  // Loose bound (a loaded 2-core machine); the figure is what matters.
  EXPECT_LT(cross - same, absl::Milliseconds(100));
}

// Polls until a worker of `node` runs task `id` (or the test ran 20 s).
bool AwaitRunningOn(ClusterNode& node, const std::string& id) {
  RunBudget run(absl::Seconds(20));
  while (run.NextSlice()) {
    auto pool = node.client->GetPool();
    if (pool.ok()) {
      for (const v1::Worker& w : pool->workers()) {
        if (w.current_task_id() == id) return true;
      }
    }
    absl::SleepFor(absl::Milliseconds(20));  // poll interval
  }
  return false;
}

// A task running on node a is cancelled through node b: b records the
// request in the store and notifies a, whose attempt stops at once; the
// task ends CANCELLED, seen from either node.
TEST(ClusterTest, CancelThroughAnotherNodeStopsTheRunningAttempt) {
  auto nodes = ClusterNodes::Create("cancel");
  ASSERT_THAT(nodes, IsOk());
  auto started = nodes->StartNodes({"a", "b"});
  ASSERT_THAT(started, IsOk());
  auto [a, b] = *started;
  ASSERT_THAT(b->client->Drain(absl::Seconds(5)), IsOk());  // a runs it
  auto f = a->client->Submit("sleep", "30000");
  ASSERT_THAT(f, IsOk());
  ASSERT_TRUE(AwaitRunningOn(*a, f->id())) << a->process->LogTail(40);

  RunTimer asked;  // time in which the test ran since the Cancel
  auto cancelled = b->client->Cancel(f->id());
  ASSERT_THAT(cancelled, IsOk());
  EXPECT_EQ(cancelled->state(), v1::RUNNING);
  EXPECT_TRUE(cancelled->cancel_requested());
  auto w = AwaitWait(*b->client, f->id(), absl::Seconds(20));
  ASSERT_THAT(w, IsOk());
  ASSERT_TRUE(w->done()) << a->process->LogTail(40);
  const absl::Duration took = asked.Elapsed();
  EXPECT_EQ(w->task().state(), v1::CANCELLED) << w->task().ShortDebugString();
  EXPECT_EQ(w->task().attempt(), 1);
  EXPECT_EQ(nodes->NodeOfPid(w->task().worker_pid()), "a");
  std::cout << "cancel through another node: CANCELLED after "
            << absl::FormatDuration(took) << "\n";
  // The 30 s sleep was stopped, not waited out.
  EXPECT_LT(took, absl::Seconds(10));
  auto again = b->client->Cancel(f->id());
  EXPECT_EQ(again.status().code(), absl::StatusCode::kFailedPrecondition)
      << again.status();
  auto on_a = a->client->Get(f->id());
  ASSERT_THAT(on_a, IsOk());
  EXPECT_EQ(on_a->state(), v1::CANCELLED);
}

// A task queued in the shared store (every node drained) is cancelled
// through a node that never held it: CANCELLED at once, and never run.
TEST(ClusterTest, CancelOfATaskQueuedInTheSharedStore) {
  auto nodes = ClusterNodes::Create("cancelq");
  ASSERT_THAT(nodes, IsOk());
  auto started = nodes->StartNodes({"a", "b"});
  ASSERT_THAT(started, IsOk());
  auto [a, b] = *started;
  ASSERT_THAT(a->client->Drain(absl::Seconds(5)), IsOk());
  ASSERT_THAT(b->client->Drain(absl::Seconds(5)), IsOk());
  auto f = a->client->Submit("echo", "never");
  ASSERT_THAT(f, IsOk());
  auto cancelled = b->client->Cancel(f->id());
  ASSERT_THAT(cancelled, IsOk());
  EXPECT_EQ(cancelled->state(), v1::CANCELLED);
  EXPECT_EQ(cancelled->error().message(), "cancelled before it ran");
  auto w = AwaitWait(*a->client, f->id(), absl::Seconds(10));
  ASSERT_THAT(w, IsOk());
  ASSERT_TRUE(w->done());
  EXPECT_EQ(w->task().state(), v1::CANCELLED);

  // With both nodes claiming again, a later task runs; the cancelled one
  // stays as it was.
  ASSERT_THAT(a->client->Resume(), IsOk());
  ASSERT_THAT(b->client->Resume(), IsOk());
  auto later = a->client->Submit("echo", "later");
  ASSERT_THAT(later, IsOk());
  auto done = AwaitWait(*b->client, later->id(), absl::Seconds(20));
  ASSERT_THAT(done, IsOk());
  EXPECT_EQ(done->task().state(), v1::SUCCEEDED);
  auto t = b->client->Get(f->id());
  ASSERT_THAT(t, IsOk());
  EXPECT_EQ(t->state(), v1::CANCELLED);
  EXPECT_EQ(t->attempt(), 0);
}

// A Watch through a node that does not run the task: the progress events
// of the node that runs it, then the terminal state with the result; a
// queue watch there sees them too.
TEST(ClusterTest, WatchThroughAnotherNodeSeesTheEventsOfARemoteTask) {
  auto nodes = ClusterNodes::Create("watch");
  ASSERT_THAT(nodes, IsOk());
  auto started = nodes->StartNodes({"a", "b"});
  ASSERT_THAT(started, IsOk());
  auto [a, b] = *started;
  ASSERT_THAT(a->client->Drain(absl::Seconds(5)), IsOk());  // b runs it
  auto stub = v1::TaskService::NewStub(a->client->channel());

  // The queue watch starts first, so it is in place before the task.
  grpc::ClientContext queue_ctx;
  v1::WatchRequest all;
  all.set_queue("*");
  auto queue_reader = stub->Watch(&queue_ctx, all);
  auto f = b->client->Submit("sleep", "1500");
  ASSERT_THAT(f, IsOk());
  int queue_progress = 0;
  v1::TaskState queue_last = v1::TASK_STATE_UNSPECIFIED;
  std::thread queue_thread([&] {
    v1::TaskEvent e;
    while (queue_reader->Read(&e)) {
      if (e.task().id() != f->id()) continue;
      if (e.type() == v1::TaskEvent::PROGRESS) ++queue_progress;
      if (e.type() == v1::TaskEvent::STATE) queue_last = e.task().state();
      if (queue_last == v1::SUCCEEDED) queue_ctx.TryCancel();
    }
  });

  grpc::ClientContext ctx;
  // Both streams end by themselves; still open after 30 s of time in which
  // the test ran, they are cancelled (and the test fails).
  RunWatchdog watchdog(absl::Seconds(30), [&] {
    queue_ctx.TryCancel();
    ctx.TryCancel();
  });
  v1::WatchRequest req;
  req.set_task_id(f->id());
  auto reader = stub->Watch(&ctx, req);
  v1::TaskEvent e;
  std::vector<v1::TaskEvent> events;
  while (reader->Read(&e)) events.push_back(e);
  EXPECT_TRUE(reader->Finish().ok());
  queue_thread.join();
  (void)queue_reader->Finish();

  int progress = 0;
  for (const v1::TaskEvent& ev : events) {
    EXPECT_EQ(ev.task().id(), f->id());
    if (ev.type() == v1::TaskEvent::PROGRESS) {
      ++progress;
      EXPECT_EQ(ev.task().progress_message(), "sleeping");
    }
  }
  std::cout << "watch through the other node: " << events.size() << " events, "
            << progress << " progress; queue watch " << queue_progress
            << " progress\n";
  ASSERT_GE(events.size(), 2u);
  // Starts with the task as it was, ends (by itself) with its result.
  EXPECT_EQ(events.front().type(), v1::TaskEvent::STATE);
  EXPECT_EQ(events.back().type(), v1::TaskEvent::STATE);
  EXPECT_EQ(events.back().task().state(), v1::SUCCEEDED);
  EXPECT_EQ(events.back().task().result(), "1500");
  EXPECT_GE(progress, 1);
  EXPECT_GE(queue_progress, 1);
  EXPECT_EQ(queue_last, v1::SUCCEEDED);
}

TEST(ClusterTest, ClusterFlagNeedsAPostgresStore) {
  testing::ForqdOptions o;
  o.flags = {"--cluster"};
  auto p = testing::ForqdProcess::Start(o);
  EXPECT_FALSE(p.ok());
}

}  // namespace
}  // namespace forq
