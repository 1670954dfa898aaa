// kill -9 while tasks run. Of forqd: the running attempts count as
// lost, the tasks run again after the restart as attempt 2 and succeed (or
// go DEAD when no attempt is left). Of a worker (RELIABILITY T2):
// the task fails that attempt and succeeds on the next one, a new worker
// takes the slot, and the time from the kill to the new pid in GetPool is
// measured over FORQ_FAULT_LOOPS kills (default 5). No zombies stay behind.
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>

#include <iostream>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"

#include "forq/client.h"
#include "forq/v1/task.grpc.pb.h"
#include "tests/fault/fault_util.h"
#include "tests/testing/forqd_process.h"
#include "tests/testing/status_matchers.h"

namespace forq {
namespace {

using ::forq::testing::FaultLoops;
using ::forq::testing::FaultSeed;
using ::forq::testing::ForqdOptions;
using ::forq::testing::ForqdProcess;
using ::forq::testing::IsOk;
using ::forq::testing::OpenFdCount;
using ::forq::testing::Percentile;
using ::forq::testing::ProcStat;
using ::forq::testing::ReadProcStat;
using ::forq::testing::ZombieChildren;

SubmitOptions MaxAttempts(int n) {
  SubmitOptions o;
  o.max_attempts = n;
  return o;
}

std::unique_ptr<ForqdProcess> StartForqd() {
  ForqdOptions o;
  o.workers = 2;
  // RUNNING stored at dispatch: every attempt running at a kill of forqd
  // counts, whatever its age.
  o.flags = {"--retry_backoff=50ms", "--running_write_delay=0"};
  absl::StatusOr<std::unique_ptr<ForqdProcess>> p = ForqdProcess::Start(o);
  EXPECT_THAT(p, IsOk());
  return p.ok() ? std::move(*p) : nullptr;
}

std::unique_ptr<Client> Connect(const ForqdProcess& forqd) {
  absl::StatusOr<std::unique_ptr<Client>> c =
      Client::Connect({.address = forqd.grpc_address()});
  EXPECT_THAT(c, IsOk());
  return c.ok() ? std::move(*c) : nullptr;
}

// Polls until the task is RUNNING; false after `timeout`. The short Wait
// between polls returns at once if the task ends instead.
bool AwaitRunning(Client& client, const std::string& id,
                  absl::Duration timeout = absl::Seconds(30)) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    absl::StatusOr<v1::Task> t = client.Get(id);
    if (!t.ok()) return false;
    if (t->state() == v1::RUNNING) return true;
    if (IsTerminal(t->state())) return false;
    (void)client.Wait(id, absl::Milliseconds(10));
  }
  return false;
}

absl::StatusOr<v1::Task> AwaitTerminal(
    Client& client, const std::string& id,
    absl::Duration timeout = absl::Seconds(60)) {
  absl::StatusOr<v1::WaitTaskResponse> r = client.Wait(id, timeout);
  if (!r.ok()) return r.status();
  if (!r->done()) {
    return absl::DeadlineExceededError(
        absl::StrCat("task ", id, " still ", StateName(r->task().state()),
                     " after ", absl::FormatDuration(timeout)));
  }
  return r->task();
}

// The worker running `task_id`, from GetPool; nullopt if none does.
std::optional<v1::Worker> WorkerRunning(Client& client,
                                        const std::string& task_id) {
  absl::StatusOr<v1::PoolStatus> pool = client.GetPool();
  if (!pool.ok()) return std::nullopt;
  for (const v1::Worker& w : pool->workers()) {
    if (w.current_task_id() == task_id && w.pid() > 0) return w;
  }
  return std::nullopt;
}

// WorkerRunning, polled every millisecond until `deadline`.
std::optional<v1::Worker> AwaitWorkerRunning(Client& client,
                                             const std::string& task_id,
                                             absl::Time deadline) {
  std::optional<v1::Worker> w;
  while (!(w = WorkerRunning(client, task_id)) && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  return w;
}

// Polls the pool until `killed`'s slot shows a new live pid, with more
// restarts. There is no pool event stream, so this is a poll with a bound;
// 1 ms sets the resolution.
void AwaitReplacement(Client& client, const v1::Worker& killed,
                      absl::Time killed_at, const ForqdProcess& forqd) {
  bool replaced = false;
  while (absl::Now() < killed_at + absl::Seconds(10)) {
    absl::StatusOr<v1::PoolStatus> p = client.GetPool();
    ASSERT_THAT(p, IsOk());
    for (const v1::Worker& x : p->workers()) {
      if (x.slot() == killed.slot() && x.pid() > 0 && x.pid() != killed.pid() &&
          x.state() != v1::RESPAWNING) {
        replaced = true;
        EXPECT_GT(x.restarts(), killed.restarts());
      }
    }
    if (replaced) break;
    absl::SleepFor(absl::Milliseconds(1));
  }
  ASSERT_TRUE(replaced) << "slot " << killed.slot()
                        << " not respawned in 10 s\n"
                        << forqd.LogTail();
}

// The pool is whole: two live workers, children of the supervisor.
void ExpectPoolWhole(Client& client, int supervisor) {
  absl::StatusOr<v1::PoolStatus> pool = client.GetPool();
  ASSERT_THAT(pool, IsOk());
  ASSERT_EQ(pool->workers_size(), 2);
  for (const v1::Worker& w : pool->workers()) {
    ProcStat st;
    ASSERT_TRUE(ReadProcStat(w.pid(), &st)) << "worker " << w.pid();
    EXPECT_EQ(st.ppid, supervisor);
    EXPECT_NE(st.state, 'Z');
  }
}

// The supervisor's zombie children once reaping (asynchronous) had up to
// 2 s, or until neither it nor forqd had any.
std::vector<int> ZombiesAfterReaping(int supervisor, int forqd_pid) {
  std::vector<int> zombies = ZombieChildren(supervisor);
  const absl::Time deadline = absl::Now() + absl::Seconds(2);
  while ((!zombies.empty() || !ZombieChildren(forqd_pid).empty()) &&
         absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(10));
    zombies = ZombieChildren(supervisor);
  }
  return zombies;
}

TEST(RunningKillTest, TasksRunningWhenForqdIsKilledRunAgainAsAttemptTwo) {
  const int loops = FaultLoops(2);
  const uint64_t seed = FaultSeed();
  std::cout << "seed " << seed << ", loops " << loops << std::endl;
  std::mt19937_64 rng(seed);
  std::unique_ptr<ForqdProcess> forqd = StartForqd();
  ASSERT_NE(forqd, nullptr);

  for (int loop = 0; loop < loops; ++loop) {
    std::unique_ptr<Client> client = Connect(*forqd);
    ASSERT_NE(client, nullptr);
    // One per worker, so both are RUNNING at the kill.
    std::vector<std::string> ids;
    for (int i = 0; i < 2; ++i) {
      absl::StatusOr<TaskFuture> f = client->Submit("sleep", "1000");
      ASSERT_THAT(f, IsOk());
      ids.push_back(f->id());
    }
    for (const std::string& id : ids) {
      ASSERT_TRUE(AwaitRunning(*client, id)) << id << "\n" << forqd->LogTail();
    }
    // A random moment inside the running attempts (not synchronisation).
    absl::SleepFor(absl::Milliseconds(100 + rng() % 500));
    client.reset();
    ASSERT_THAT(forqd->Kill(SIGKILL), IsOk());
    ASSERT_THAT(forqd->Restart(), IsOk()) << forqd->LogTail();

    client = Connect(*forqd);
    ASSERT_NE(client, nullptr);
    for (const std::string& id : ids) {
      absl::StatusOr<v1::Task> t = AwaitTerminal(*client, id);
      ASSERT_THAT(t, IsOk()) << forqd->LogTail();
      EXPECT_EQ(t->state(), v1::SUCCEEDED) << t->DebugString();
      EXPECT_EQ(t->attempt(), 2) << t->DebugString();
      EXPECT_EQ(t->result(), "1000");
    }
  }
  if (HasFailure()) ADD_FAILURE() << "forqd log tail:\n" << forqd->LogTail();
}

// Submit with `wait` acknowledges a task with its answer. A task that
// finishes within the wait is written once, finished; one that does not is
// stored before the answer says it is unfinished, so that answer survives
// kill -9 like any acknowledgement.
TEST(RunningKillTest, UnfinishedAnswerOfSubmitWithWaitSurvivesKill) {
  std::unique_ptr<ForqdProcess> forqd = StartForqd();
  ASSERT_NE(forqd, nullptr);
  std::unique_ptr<Client> client = Connect(*forqd);
  ASSERT_NE(client, nullptr);
  auto stub = v1::TaskService::NewStub(client->channel());
  v1::SubmitRequest req;
  req.mutable_task()->set_kind("sleep");
  req.mutable_task()->set_payload("1500");
  req.mutable_wait()->set_nanos(30'000'000);
  v1::SubmitResponse resp;
  {
    grpc::ClientContext ctx;
    grpc::Status s = stub->Submit(&ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  ASSERT_FALSE(resp.done());
  const std::string id = resp.task().id();
  ASSERT_FALSE(id.empty());
  stub.reset();
  client.reset();
  ASSERT_THAT(forqd->Kill(SIGKILL), IsOk());
  ASSERT_THAT(forqd->Restart(), IsOk()) << forqd->LogTail();
  client = Connect(*forqd);
  ASSERT_NE(client, nullptr);
  absl::StatusOr<v1::Task> t = AwaitTerminal(*client, id);
  ASSERT_THAT(t, IsOk()) << forqd->LogTail();
  EXPECT_EQ(t->state(), v1::SUCCEEDED) << t->DebugString();
  EXPECT_EQ(t->result(), "1500");
}

TEST(RunningKillTest, RunningTaskWithoutAttemptsLeftIsDeadAfterForqdKill) {
  std::unique_ptr<ForqdProcess> forqd = StartForqd();
  ASSERT_NE(forqd, nullptr);
  std::unique_ptr<Client> client = Connect(*forqd);
  ASSERT_NE(client, nullptr);
  absl::StatusOr<TaskFuture> last =
      client->Submit("sleep", "1000", MaxAttempts(1));
  ASSERT_THAT(last, IsOk());
  absl::StatusOr<TaskFuture> spare =
      client->Submit("sleep", "1000", MaxAttempts(2));
  ASSERT_THAT(spare, IsOk());
  ASSERT_TRUE(AwaitRunning(*client, last->id()));
  ASSERT_TRUE(AwaitRunning(*client, spare->id()));
  absl::SleepFor(absl::Milliseconds(200));  // into the attempt
  client.reset();
  ASSERT_THAT(forqd->Kill(SIGKILL), IsOk());
  ASSERT_THAT(forqd->Restart(), IsOk()) << forqd->LogTail();

  client = Connect(*forqd);
  ASSERT_NE(client, nullptr);
  absl::StatusOr<v1::Task> dead = AwaitTerminal(*client, last->id());
  ASSERT_THAT(dead, IsOk()) << forqd->LogTail();
  EXPECT_EQ(dead->state(), v1::DEAD) << dead->DebugString();
  EXPECT_EQ(dead->attempt(), 1);
  EXPECT_EQ(dead->error().reason(), v1::WORKER_LOST) << dead->DebugString();
  absl::StatusOr<v1::Task> ok = AwaitTerminal(*client, spare->id());
  ASSERT_THAT(ok, IsOk());
  EXPECT_EQ(ok->state(), v1::SUCCEEDED) << ok->DebugString();
  EXPECT_EQ(ok->attempt(), 2);
  if (HasFailure()) ADD_FAILURE() << "forqd log tail:\n" << forqd->LogTail();
}

TEST(RunningKillTest, WorkerKilledMidTaskIsReplacedAndTaskSucceedsOnRetry) {
  const int kills = FaultLoops(5);
  std::unique_ptr<ForqdProcess> forqd = StartForqd();
  ASSERT_NE(forqd, nullptr);
  std::unique_ptr<Client> client = Connect(*forqd);
  ASSERT_NE(client, nullptr);

  // Warm up (first dispatch, first connection) before taking the fd baseline.
  absl::StatusOr<TaskFuture> warm = client->Submit("echo", "warm");
  ASSERT_THAT(warm, IsOk());
  ASSERT_THAT(AwaitTerminal(*client, warm->id()), IsOk());
  absl::StatusOr<v1::PoolStatus> pool = client->GetPool();
  ASSERT_THAT(pool, IsOk());
  const int supervisor = pool->supervisor_pid();
  ASSERT_GT(supervisor, 0);
  const int fds_before = OpenFdCount(forqd->pid());

  std::vector<absl::Duration> respawn;
  std::vector<std::string> ids;
  std::vector<int> killed_pids;
  for (int k = 0; k < kills; ++k) {
    absl::StatusOr<TaskFuture> f =
        client->Submit("sleep", "3000", MaxAttempts(2));
    ASSERT_THAT(f, IsOk());
    ids.push_back(f->id());
    // The retries of the tasks killed so far (3 s each, two workers) can be
    // ahead of it: a kind this long waits in forqd's queue for an idle
    // worker, so it turns RUNNING only once they are done.
    const absl::Duration backlog = absl::Seconds(3) * k;
    ASSERT_TRUE(AwaitRunning(*client, f->id(), absl::Seconds(30) + backlog))
        << forqd->LogTail();
    // RUNNING comes with the dispatch, which may also hand the task to a
    // worker still busy with an earlier one.
    std::optional<v1::Worker> w = AwaitWorkerRunning(
        *client, f->id(), absl::Now() + absl::Seconds(10) + backlog);
    ASSERT_TRUE(w.has_value()) << "no worker reports task " << f->id();
    ProcStat st;
    ASSERT_TRUE(ReadProcStat(w->pid(), &st));
    EXPECT_EQ(st.ppid, supervisor) << "worker " << w->pid();
    EXPECT_EQ(w->parent_pid(), supervisor);

    ASSERT_EQ(kill(w->pid(), SIGKILL), 0);
    const absl::Time killed_at = absl::Now();
    killed_pids.push_back(w->pid());
    AwaitReplacement(*client, *w, killed_at, *forqd);
    if (HasFatalFailure()) return;
    respawn.push_back(absl::Now() - killed_at);
  }

  for (size_t i = 0; i < ids.size(); ++i) {
    absl::StatusOr<v1::Task> t = AwaitTerminal(*client, ids[i]);
    ASSERT_THAT(t, IsOk()) << forqd->LogTail();
    EXPECT_EQ(t->state(), v1::SUCCEEDED) << t->DebugString();
    // attempts = kills + 1 for every affected task.
    EXPECT_EQ(t->attempt(), 2) << t->DebugString();
    // Not on the worker killed under it (a later kill may hit the one it
    // finished on, so only its own kill counts).
    EXPECT_NE(t->worker_pid(), killed_pids[i]);
  }

  ExpectPoolWhole(*client, supervisor);
  if (HasFatalFailure()) return;
  const std::vector<int> zombies =
      ZombiesAfterReaping(supervisor, forqd->pid());
  EXPECT_THAT(zombies, ::testing::IsEmpty()) << "zombie workers";
  EXPECT_THAT(ZombieChildren(forqd->pid()), ::testing::IsEmpty());
  const int fds_after = OpenFdCount(forqd->pid());

  std::cout << "worker respawn (kill -9 -> new pid in GetPool) over " << kills
            << " kills: p50 " << absl::FormatDuration(Percentile(respawn, 50))
            << ", p99 " << absl::FormatDuration(Percentile(respawn, 99))
            << ", max " << absl::FormatDuration(Percentile(respawn, 100))
            << "; tasks SUCCEEDED on attempt 2: " << ids.size() << "; zombies "
            << zombies.size() << "; forqd fds " << fds_before << " -> "
            << fds_after << std::endl;
  EXPECT_LE(Percentile(respawn, 100), absl::Milliseconds(500));
  EXPECT_LE(fds_after - fds_before, 2);
  if (HasFailure()) ADD_FAILURE() << "forqd log tail:\n" << forqd->LogTail();
}

}  // namespace
}  // namespace forq
