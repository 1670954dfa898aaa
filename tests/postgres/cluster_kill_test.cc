// Faults of cluster nodes on one PostgreSQL database: kill -9 of a node
// with running attempts (the others' reaper re-runs them, nothing lost or
// completed twice), and a node stopped past its lease whose late
// completions are refused by the attempt fence.
#include <signal.h>

#include <array>
#include <atomic>
#include <map>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include "common/mutex.h"
#include "forq/client.h"
#include "tests/fault/fault_util.h"
#include "tests/postgres/cluster_nodes.h"
#include "tests/postgres/tcp_proxy.h"
#include "tests/testing/await_task.h"
#include "tests/testing/status_matchers.h"

namespace forq {
namespace {

using ::forq::testing::AwaitAll;
using ::forq::testing::AwaitWait;
using ::forq::testing::ClusterNode;
using ::forq::testing::ClusterNodes;
using ::forq::testing::IsOk;
using ::forq::testing::SleepSpecs;

// Polls the query until it returns `want` or 20 s pass.
std::string AwaitQuery(const ClusterNodes& nodes, const std::string& sql,
                       const std::string& want) {
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  std::string last;
  while (absl::Now() < deadline) {
    absl::StatusOr<std::string> got = nodes.Query(sql);
    if (got.ok()) last = *got;
    if (last == want) return last;
    // Poll interval: each query is a new PostgreSQL connection.
    absl::SleepFor(absl::Milliseconds(100));
  }
  return last;
}

// forq_store_fenced_completions_total of a node (0 if not yet exported).
double FencedCompletions(const ClusterNode& node) {
  auto r = testing::RunCommand(
      {"/usr/bin/curl", "-sf",
       absl::StrCat("http://", node.process->http_address(), "/metrics")});
  if (!r.ok() || r->exit_code != 0) return -1;
  for (absl::string_view line : absl::StrSplit(r->out, '\n')) {
    if (absl::ConsumePrefix(&line, "forq_store_fenced_completions_total ")) {
      double v = 0;
      if (absl::SimpleAtod(line, &v)) return v;
    }
  }
  return 0;
}

TEST(ClusterKillTest, KilledNodesRunningTasksFinishElsewhereExactlyOnce) {
  auto nodes = ClusterNodes::Create("kill");
  ASSERT_THAT(nodes, IsOk());
  auto started = nodes->StartNodes({"a", "b"}, "2s");
  ASSERT_THAT(started, IsOk());
  auto [a, b] = *started;
  ASSERT_THAT(b->client->Drain(absl::Seconds(5)), IsOk());

  // Two tasks: both run on a (b is drained), so b has a worker free for
  // each once their leases expire.
  auto futures = a->client->SubmitBatch(SleepSpecs(2, 1500));
  ASSERT_THAT(futures, IsOk());
  std::vector<std::string> ids;
  for (const TaskFuture& f : *futures) ids.push_back(f.id());
  // Both claimed by a (normally at once; one after the other if a worker
  // of a was not idle yet).
  const std::string claimed_by_a = absl::StrCat(
      "SELECT count(*) FROM ", nodes->schema(),
      ".tasks WHERE state = 2 AND owner_node = 'a' AND attempt = 1");
  ASSERT_NE(AwaitQuery(*nodes, claimed_by_a, "2"), "0")
      << "node a:\n"
      << a->process->LogTail(60);
  auto lost_ids = nodes->Query(absl::StrCat(
      "SELECT string_agg(id, ',' ORDER BY id) FROM ", nodes->schema(),
      ".tasks WHERE state = 2 AND owner_node = 'a'"));
  ASSERT_THAT(lost_ids, IsOk());
  const std::set<std::string> lost =
      absl::StrSplit(*lost_ids, ',', absl::SkipEmpty());
  ASSERT_FALSE(lost.empty());

  ASSERT_THAT(a->process->Kill(SIGKILL), IsOk());
  const absl::Time killed = absl::Now();
  ASSERT_THAT(b->client->Resume(), IsOk());

  auto done = AwaitAll(*b->client, ids, absl::Seconds(60));
  ASSERT_THAT(done, IsOk());
  int succeeded = 0;
  absl::Duration worst_restart;
  for (const v1::Task& t : *done) {
    EXPECT_EQ(t.state(), v1::SUCCEEDED) << t.ShortDebugString();
    succeeded += t.state() == v1::SUCCEEDED;
    EXPECT_EQ(nodes->NodeOfPid(t.worker_pid()), "b") << t.id();
    if (lost.count(t.id()) > 0) {
      // Attempt 1 died with node a; attempt 2 ran on b.
      EXPECT_EQ(t.attempt(), 2) << t.id();
      const absl::Time started =
          absl::FromUnixSeconds(t.started_at().seconds()) +
          absl::Nanoseconds(t.started_at().nanos());
      worst_restart = std::max(worst_restart, started - killed);
    } else {
      EXPECT_EQ(t.attempt(), 1) << t.id();
    }
  }
  std::cout << "acknowledged " << ids.size() << ", succeeded " << succeeded
            << ", lost " << ids.size() - succeeded
            << "; lost attempts restarted on b within "
            << absl::FormatDuration(worst_restart)
            << " of the kill (lease 2s)\n";
  EXPECT_LE(worst_restart, absl::Seconds(3));  // lease + 1 s
  // The history names the lost attempts.
  std::string history;
  for (const std::string& id : lost) {
    absl::StrAppend(&history, history.empty() ? "" : ",", id, ":1:a:LOST");
  }
  EXPECT_THAT(nodes->Query(absl::StrCat(
                  "SELECT string_agg(task_id || ':' || attempt || ':' || "
                  "node_id || ':' || reason, ',' ORDER BY task_id) FROM ",
                  nodes->schema(), ".task_events")),
              ::testing::Eq(absl::StatusOr<std::string>(history)));
}

TEST(ClusterKillTest, NodeStoppedPastItsLeaseHasItsCompletionsRefused) {
  auto nodes = ClusterNodes::Create("stop");
  ASSERT_THAT(nodes, IsOk());
  auto started = nodes->StartNodes({"a", "b"}, "2s");
  ASSERT_THAT(started, IsOk());
  auto [a, b] = *started;
  ASSERT_THAT(b->client->Drain(absl::Seconds(5)), IsOk());

  auto futures = a->client->SubmitBatch(SleepSpecs(1, 1500));
  ASSERT_THAT(futures, IsOk());
  std::vector<std::string> ids;
  for (const TaskFuture& f : *futures) ids.push_back(f.id());
  // Running in a worker of a (claimed alone is not enough: a claimed
  // attempt that never started has no completion to refuse).
  bool running = false;
  const absl::Time until = absl::Now() + absl::Seconds(20);
  while (!running && absl::Now() < until) {
    auto pool = a->client->GetPool();
    ASSERT_THAT(pool, IsOk());
    for (const v1::Worker& w : pool->workers()) {
      running = running || w.current_task_id() == ids[0];
    }
    if (!running) absl::SleepFor(absl::Milliseconds(50));  // poll interval
  }
  ASSERT_TRUE(running) << "node a:\n" << a->process->LogTail(60);

  // a's workers keep running and finish their attempts while a itself is
  // stopped; b takes the tasks over once the leases expire.
  ASSERT_EQ(kill(a->process->pid(), SIGSTOP), 0);
  ASSERT_THAT(b->client->Resume(), IsOk());
  auto done = AwaitAll(*b->client, ids, absl::Seconds(60));
  ASSERT_THAT(done, IsOk());
  for (const v1::Task& t : *done) {
    EXPECT_EQ(t.state(), v1::SUCCEEDED);
    EXPECT_EQ(t.attempt(), 2);
    EXPECT_EQ(nodes->NodeOfPid(t.worker_pid()), "b");
  }
  ASSERT_EQ(kill(a->process->pid(), SIGCONT), 0);

  // a now reports its finished attempt: refused.
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  double fenced = 0;
  while (absl::Now() < deadline && (fenced = FencedCompletions(*a)) < 1) {
    absl::SleepFor(absl::Milliseconds(50));  // poll interval
  }
  std::cout << "node a: forq_store_fenced_completions_total " << fenced << "\n";
  EXPECT_EQ(fenced, 1);
  // Each task keeps exactly the one result of attempt 2, seen from a too.
  for (const std::string& id : ids) {
    auto t = a->client->Get(id);
    ASSERT_THAT(t, IsOk());
    EXPECT_EQ(t->state(), v1::SUCCEEDED);
    EXPECT_EQ(t->attempt(), 2);
    EXPECT_EQ(nodes->NodeOfPid(t->worker_pid()), "b");
  }
}

// kill -9 of one node of three while several threads submit to all three:
// every acknowledged task ends SUCCEEDED exactly once, and every extra
// attempt is a recorded LOST one. FORQ_FAULT_LOOPS loops (1 by default;
// `make test-fault` runs 30).
TEST(ClusterKillTest, KillOneOfThreeNodesUnderSubmitLoadLosesNothing) {
  const int loops = testing::FaultLoops(1);
  const uint64_t seed = testing::FaultSeed();
  std::mt19937_64 rng(seed);
  std::cout << "seed " << seed << " (FORQ_FAULT_SEED replays it)\n";
  for (int loop = 0; loop < loops; ++loop) {
    auto nodes = ClusterNodes::Create("load");
    ASSERT_THAT(nodes, IsOk());
    auto started = nodes->StartNodes({"a", "b", "c"}, "2s");
    ASSERT_THAT(started, IsOk());
    const std::array<ClusterNode*, 3> n = *started;
    const int victim = static_cast<int>(rng() % 3);
    const absl::Duration kill_after =
        absl::Milliseconds(300 + static_cast<int>(rng() % 1200));
    std::atomic<bool> killed{false};
    std::atomic<bool> stop{false};
    Mutex mu;
    std::vector<std::string> acked;  // guarded by mu
    std::atomic<int> refused{0};
    std::vector<std::thread> submitters;
    submitters.reserve(4);
    for (int t = 0; t < 4; ++t) {
      submitters.emplace_back([&, t] {
        int target = t % 3;
        while (!stop.load()) {
          if (killed.load() && target == victim) target = (target + 1) % 3;
          auto f = n[target]->client->Submit("sleep", "50");
          if (f.ok()) {
            MutexLock lock(&mu);
            acked.push_back(f->id());
          } else {
            ++refused;  // not acknowledged: the node went away
            target = (target + 1) % 3;
          }
          // Load shaping (about 100 tasks/s in all), not synchronisation.
          absl::SleepFor(absl::Milliseconds(40));
        }
      });
    }
    absl::SleepFor(kill_after);
    ASSERT_THAT(n[victim]->process->Kill(SIGKILL), IsOk());
    killed = true;
    absl::SleepFor(absl::Milliseconds(1500));
    stop = true;
    for (std::thread& t : submitters) t.join();

    ClusterNode* survivor = n[(victim + 1) % 3];
    std::vector<std::string> ids;
    {
      MutexLock lock(&mu);
      ids = acked;
    }
    auto done = AwaitAll(*survivor->client, ids, absl::Seconds(60));
    ASSERT_THAT(done, IsOk()) << "loop " << loop;
    auto events = nodes->Query(
        absl::StrCat("SELECT string_agg(task_id, ',') FROM ", nodes->schema(),
                     ".task_events WHERE reason = 'LOST'"));
    ASSERT_THAT(events, IsOk());
    std::map<std::string, int> lost_attempts;
    for (absl::string_view id :
         absl::StrSplit(*events, ',', absl::SkipEmpty())) {
      ++lost_attempts[std::string(id)];
    }
    int succeeded = 0, rerun = 0;
    for (const v1::Task& t : *done) {
      EXPECT_EQ(t.state(), v1::SUCCEEDED) << t.ShortDebugString();
      succeeded += t.state() == v1::SUCCEEDED;
      // One attempt, plus one per attempt lost with the killed node.
      EXPECT_EQ(t.attempt(), 1 + lost_attempts[t.id()]) << t.id();
      rerun += t.attempt() > 1;
    }
    std::cout << "loop " << loop << ": killed node " << n[victim]->name
              << " after " << absl::FormatDuration(kill_after)
              << "; acknowledged " << ids.size() << ", lost "
              << ids.size() - succeeded << ", re-run after LOST " << rerun
              << ", refused while down " << refused.load() << "\n";
    EXPECT_EQ(static_cast<size_t>(succeeded), ids.size());
  }
}

// Node a reaches the database through a proxy; stopping the proxy cuts it
// off. a fences itself within lease/2 (its running attempt is stopped) and
// b takes the task over once the lease expires.
TEST(ClusterKillTest, NodeCutOffFromTheDatabaseFencesItselfAndOthersTakeOver) {
  auto nodes = ClusterNodes::Create("partition");
  ASSERT_THAT(nodes, IsOk());
  auto proxy = testing::TcpProxy::Start(nodes->server().port());
  ASSERT_THAT(proxy, IsOk());
  auto a = nodes->Start(
      "a", "2s",
      {absl::StrCat("--store=", nodes->UriViaPort((*proxy)->port()))});
  ASSERT_THAT(a, IsOk());
  auto b = nodes->Start("b", "2s");
  ASSERT_THAT(b, IsOk());
  ASSERT_THAT((*b)->client->Drain(absl::Seconds(5)), IsOk());
  auto f = (*a)->client->Submit("sleep", "5000");
  ASSERT_THAT(f, IsOk());
  auto running_on_a = [&]() -> absl::StatusOr<bool> {
    auto pool = (*a)->client->GetPool();
    if (!pool.ok()) return pool.status();
    for (const v1::Worker& w : pool->workers()) {
      if (w.current_task_id() == f->id()) return true;
    }
    return false;
  };
  absl::Time until = absl::Now() + absl::Seconds(20);
  absl::StatusOr<bool> running = false;
  while (running.ok() && !*running && absl::Now() < until) {
    absl::SleepFor(absl::Milliseconds(50));  // poll interval
    running = running_on_a();
  }
  ASSERT_THAT(running, IsOk());
  ASSERT_TRUE(*running) << (*a)->process->LogTail(40);

  (*proxy)->Stop();
  const absl::Time cut = absl::Now();
  until = cut + absl::Seconds(20);
  while (running.ok() && *running && absl::Now() < until) {
    absl::SleepFor(absl::Milliseconds(20));  // poll interval
    running = running_on_a();
  }
  ASSERT_THAT(running, IsOk());
  const absl::Duration stopped_after = absl::Now() - cut;
  EXPECT_FALSE(*running);
  std::cout
      << "node a cut off: its attempt stopped after "
      << absl::FormatDuration(stopped_after)
      << " (lease 2s: self-fence at lease/2, then --cancel_grace 200ms)\n";
  // lease/2 + cancel grace + polling and a loaded machine's slack.
  EXPECT_LE(stopped_after, absl::Milliseconds(2000));

  ASSERT_THAT((*b)->client->Resume(), IsOk());
  auto done = AwaitWait(*(*b)->client, f->id(), absl::Seconds(30));
  ASSERT_THAT(done, IsOk());
  EXPECT_TRUE(done->done());
  EXPECT_EQ(done->task().state(), v1::SUCCEEDED);
  EXPECT_EQ(done->task().attempt(), 2);
  EXPECT_EQ(nodes->NodeOfPid(done->task().worker_pid()), "b");
}

// PostgreSQL stopped (-m immediate, like a crash) and started again while
// two threads submit to two nodes: submits fail with UNAVAILABLE while it
// is down, the nodes reconnect by themselves, and every acknowledged task
// ends SUCCEEDED. Runs last: it restarts the shared test server.
TEST(ClusterKillTest, ZDatabaseRestartUnderLoadLosesNothing) {
  auto nodes = ClusterNodes::Create("pgrestart");
  ASSERT_THAT(nodes, IsOk());
  auto started = nodes->StartNodes({"a", "b"}, "2s");
  ASSERT_THAT(started, IsOk());
  const std::array<ClusterNode*, 2> n = *started;
  std::atomic<bool> stop{false};
  std::atomic<bool> restarted{false};
  std::atomic<int> unavailable{0}, other_errors{0}, acked_after{0};
  Mutex mu;
  std::vector<std::string> acked;  // guarded by mu
  std::vector<std::thread> submitters;
  submitters.reserve(2);
  for (int t = 0; t < 2; ++t) {
    submitters.emplace_back([&, t] {
      while (!stop.load()) {
        auto f = n[t]->client->Submit("sleep", "20");
        if (f.ok()) {
          MutexLock lock(&mu);
          acked.push_back(f->id());
          if (restarted.load()) ++acked_after;
        } else if (f.status().code() == absl::StatusCode::kUnavailable) {
          ++unavailable;
        } else {
          ++other_errors;
          ADD_FAILURE() << f.status();
        }
        // Load shaping, not synchronisation.
        absl::SleepFor(absl::Milliseconds(20));
      }
    });
  }
  absl::SleepFor(absl::Milliseconds(500));
  ASSERT_THAT(nodes->server().StopImmediate(), IsOk());
  absl::SleepFor(absl::Seconds(1));  // the outage
  ASSERT_THAT(nodes->server().StartAgain(), IsOk());
  restarted = true;
  // Until both nodes acknowledge again (they reconnect by themselves).
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (acked_after.load() < 20 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(50));  // poll interval
  }
  stop = true;
  for (std::thread& t : submitters) t.join();
  EXPECT_GE(acked_after.load(), 20);

  std::vector<std::string> ids;
  {
    MutexLock lock(&mu);
    ids = acked;
  }
  auto done = AwaitAll(*n[0]->client, ids, absl::Seconds(90));
  ASSERT_THAT(done, IsOk()) << n[0]->process->LogTail(40);
  int succeeded = 0;
  for (const v1::Task& t : *done) {
    EXPECT_EQ(t.state(), v1::SUCCEEDED) << t.ShortDebugString();
    succeeded += t.state() == v1::SUCCEEDED;
  }
  std::cout << "database restart: acknowledged " << ids.size() << ", lost "
            << ids.size() - succeeded << ", UNAVAILABLE while down "
            << unavailable.load() << ", acknowledged after restart "
            << acked_after.load() << "\n";
  EXPECT_GT(unavailable.load(), 0);
  EXPECT_EQ(other_errors.load(), 0);
  EXPECT_EQ(static_cast<size_t>(succeeded), ids.size());
}

}  // namespace
}  // namespace forq
