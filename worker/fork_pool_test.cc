#include "worker/fork_pool.h"

#include <dirent.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include "common/mutex.h"
#include "common/notification.h"
#include "tests/testing/status_matchers.h"
#include "worker/fork_pool_testing.h"

namespace forq::worker {
namespace {

using fork_pool_testing::ForkPoolTest;
using fork_pool_testing::kWait;
using fork_pool_testing::Options;
using fork_pool_testing::Recorder;
using ::forq::testing::IsOk;
using ::forq::testing::StatusIs;
using ::testing::HasSubstr;

TEST_F(ForkPoolTest, RunsEachBuiltin) {
  StartPool(Options(2));
  Outcome o = RunAndWait("echo", "hello");
  EXPECT_EQ(o.kind, OutcomeKind::kSucceeded) << o.status;
  EXPECT_EQ(o.result, "hello");
  EXPECT_GT(o.worker_pid, 0);

  o = RunAndWait("sleep", "20");
  EXPECT_EQ(o.kind, OutcomeKind::kSucceeded) << o.status;
  EXPECT_GE(o.runtime, absl::Milliseconds(20));

  o = RunAndWait("sha256", "abc");
  EXPECT_EQ(o.result,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  o = RunAndWait("primes", "1000");
  EXPECT_EQ(o.result, "168");

  o = RunAndWait("fail", "boom");
  EXPECT_EQ(o.kind, OutcomeKind::kHandlerError);
  EXPECT_THAT(o.status,
              StatusIs(absl::StatusCode::kFailedPrecondition, "boom"));

  o = RunAndWait("flaky", "2");
  EXPECT_EQ(o.kind, OutcomeKind::kHandlerError);
  EXPECT_THAT(o.status, StatusIs(absl::StatusCode::kUnavailable));

  o = RunAndWait("no.such.kind", "");
  EXPECT_EQ(o.kind, OutcomeKind::kUnknownKind);
  EXPECT_THAT(o.status, StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(ForkPoolTest, EightTasksOnTwoWorkers) {
  StartPool(Options(2));
  int dispatched = 0, done = 0;
  std::vector<int> pids;
  while (done < 8) {
    while (dispatched < 8 && pool_->IdleCount() > 0) {
      Assignment a;
      a.task_id = absl::StrCat("p", dispatched);
      a.kind = "primes";
      a.payload = "20000";
      ASSERT_THAT(pool_->Dispatch(std::move(a)), IsOk());
      ++dispatched;
    }
    std::optional<Outcome> o = rec_.NextOutcome();
    ASSERT_TRUE(o.has_value());
    EXPECT_EQ(o->kind, OutcomeKind::kSucceeded);
    EXPECT_EQ(o->result, "2262");
    pids.push_back(o->worker_pid);
    ++done;
  }
  std::sort(pids.begin(), pids.end());
  pids.erase(std::unique(pids.begin(), pids.end()), pids.end());
  EXPECT_EQ(pids.size(), 2u);
}

TEST_F(ForkPoolTest, CrashIsSignaledAndWorkerRespawns) {
  StartPool(Options(1));
  const int old_pid = pool_->Workers()[0].pid;
  Outcome o = RunAndWait("crash", "");
  EXPECT_EQ(o.kind, OutcomeKind::kSignaled);
  EXPECT_EQ(o.signal, SIGABRT);
  EXPECT_EQ(o.task_id, "t1");
  ASSERT_TRUE(rec_.NthExit(1).has_value());
  EXPECT_EQ(rec_.exits()[0].reason, "crash");
  EXPECT_EQ(rec_.exits()[0].pid, old_pid);
  o = RunAndWait("echo", "after");
  EXPECT_EQ(o.kind, OutcomeKind::kSucceeded);
  EXPECT_NE(o.worker_pid, old_pid);
  EXPECT_EQ(pool_->Workers()[0].restarts, 1u);
}

TEST_F(ForkPoolTest, KillNineOfBusyWorkerFailsExactlyThatAttempt) {
  StartPool(Options(2));
  Run("victim", "sleep", "60000", absl::InfiniteDuration(), /*attempt=*/3);
  Run("bystander", "sleep", "300");
  const int pid = PidRunning("victim");
  ASSERT_GT(pid, 0);
  const absl::Time killed_at = absl::Now();
  ASSERT_EQ(kill(pid, SIGKILL), 0);
  std::optional<Outcome> o = rec_.NextOutcome();
  ASSERT_TRUE(o.has_value());
  EXPECT_EQ(o->task_id, "victim");
  EXPECT_EQ(o->attempt, 3);
  EXPECT_EQ(o->kind, OutcomeKind::kSignaled);
  EXPECT_EQ(o->signal, SIGKILL);
  EXPECT_EQ(o->worker_pid, pid);
  ASSERT_TRUE(rec_.NthExit(1).has_value());
  EXPECT_EQ(rec_.exits()[0].reason, "killed");
  // The replacement comes up and the bystander is unaffected.
  std::optional<Outcome> b = rec_.NextOutcome();
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(b->task_id, "bystander");
  EXPECT_EQ(b->kind, OutcomeKind::kSucceeded);
  ASSERT_TRUE(WaitIdle(2));
  const absl::Duration respawn = absl::Now() - killed_at;
  EXPECT_LT(respawn, absl::Seconds(2));
  for (const WorkerInfo& w : pool_->Workers()) {
    EXPECT_NE(w.pid, pid);
    EXPECT_GT(w.pid, 0);
    EXPECT_EQ(w.parent_pid, pool_->supervisor_pid());
  }
}

TEST_F(ForkPoolTest, HardTimeoutKillsHangingTask) {
  StartPool(Options(1));
  const absl::Time start = absl::Now();
  Outcome o = RunAndWait("hang", "", absl::Milliseconds(300));
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(o.kind, OutcomeKind::kTimeout);
  EXPECT_THAT(o.status, StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_GE(took, absl::Milliseconds(300));
  EXPECT_LT(took, absl::Milliseconds(300 + 1000));
  ASSERT_TRUE(rec_.NthExit(1).has_value());
  EXPECT_EQ(rec_.exits()[0].reason, "timeout");
  ASSERT_TRUE(WaitIdle(1));
  EXPECT_EQ(RunAndWait("echo", "x").kind, OutcomeKind::kSucceeded);
}

TEST_F(ForkPoolTest, CancelOfSleepingTaskIsCancelled) {
  StartPool(Options(1));
  Run("c1", "sleep", "60000");
  pool_->Cancel("c1", 1);
  std::optional<Outcome> o = rec_.NextOutcome();
  ASSERT_TRUE(o.has_value());
  EXPECT_EQ(o->kind, OutcomeKind::kCancelled);
  EXPECT_THAT(o->status, StatusIs(absl::StatusCode::kCancelled));
  // sleep notices ctx.cancelled(): the worker survives.
  EXPECT_EQ(rec_.exit_count(), 0u);
  EXPECT_EQ(RunAndWait("echo", "y").kind, OutcomeKind::kSucceeded);
}

TEST_F(ForkPoolTest, CancelEscalatesToKillAfterGrace) {
  ForkPoolOptions options = Options(1);
  options.cancel_grace = absl::Milliseconds(200);
  StartPool(options);
  Run("g1", "hang", "ignore-cancel");
  const absl::Time start = absl::Now();
  pool_->Cancel("g1", 1);
  std::optional<Outcome> o = rec_.NextOutcome();
  ASSERT_TRUE(o.has_value());
  EXPECT_EQ(o->kind, OutcomeKind::kCancelled);
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(200));
  ASSERT_TRUE(rec_.NthExit(1).has_value());
  EXPECT_EQ(rec_.exits()[0].reason, "killed");
}

TEST_F(ForkPoolTest, RecyclesAfterMaxTasksPerChild) {
  ForkPoolOptions options = Options(1);
  options.max_tasks_per_child = 2;
  StartPool(options);
  const int pid1 = RunAndWait("echo", "1").worker_pid;
  EXPECT_EQ(RunAndWait("echo", "2").worker_pid, pid1);
  const int pid2 = RunAndWait("echo", "3").worker_pid;
  EXPECT_NE(pid2, pid1);
  ASSERT_TRUE(rec_.NthExit(1).has_value());
  EXPECT_EQ(rec_.exits()[0].reason, "recycle");
}

TEST_F(ForkPoolTest, MemoryLimitKillsBusyWorkerAndRecyclesIdleOne) {
  ForkPoolOptions options = Options(1);
  options.max_worker_rss_bytes = 1 << 20;  // any worker is bigger than this
  StartPool(options);
  Outcome o = RunAndWait("sleep", "5000");
  EXPECT_EQ(o.kind, OutcomeKind::kOutOfMemory);
  EXPECT_THAT(o.status, StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_LT(o.runtime, absl::Seconds(2));
  ASSERT_TRUE(rec_.NthExit(1).has_value());
  EXPECT_EQ(rec_.exits()[0].reason, "memory");
  // A task that finishes before the check still succeeds; the worker is
  // then recycled between tasks.
  o = RunAndWait("echo", "quick");
  EXPECT_EQ(o.kind, OutcomeKind::kSucceeded);
  ASSERT_TRUE(rec_.NthExit(2).has_value());
  EXPECT_EQ(rec_.exits()[1].reason, "memory");
}

TEST_F(ForkPoolTest, LargePayloadAndResultUseSpillPath) {
  ForkPoolOptions options = Options(1);
  options.ring_bytes = 64 << 10;
  StartPool(options);
  std::string big(4 << 20, 'x');
  for (size_t i = 0; i < big.size(); i += 4093) big[i] = static_cast<char>(i);
  Outcome o = RunAndWait("echo", big);
  ASSERT_EQ(o.kind, OutcomeKind::kSucceeded) << o.status;
  EXPECT_EQ(o.result.size(), big.size());
  EXPECT_TRUE(o.result == big);
}

TEST_F(ForkPoolTest, ProgressIsReported) {
  StartPool(Options(1));
  Outcome o = RunAndWait("sleep", "700");
  EXPECT_EQ(o.kind, OutcomeKind::kSucceeded);
  EXPECT_GE(rec_.progress(), 1);
}

TEST_F(ForkPoolTest, SupervisorDeathFailsRunningAttempts) {
  StartPool(Options(1));
  Run("orphan", "sleep", "60000");
  ASSERT_EQ(kill(pool_->supervisor_pid(), SIGKILL), 0);
  std::optional<Outcome> o = rec_.NextOutcome();
  ASSERT_TRUE(o.has_value());
  EXPECT_EQ(o->task_id, "orphan");
  EXPECT_EQ(o->kind, OutcomeKind::kWorkerLost);
  Assignment a;
  a.task_id = "late";
  a.kind = "echo";
  EXPECT_THAT(pool_->Dispatch(a), StatusIs(absl::StatusCode::kUnavailable));
}

// True if `pid` exits within `timeout` (pidfd works for non-children too).
bool WaitForExit(int pid, absl::Duration timeout) {
  int fd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  if (fd < 0) return errno == ESRCH;
  pollfd p{fd, POLLIN, 0};
  int r = poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(timeout)));
  close(fd);
  return r == 1;
}

TEST_F(ForkPoolTest, WorkersDieWithTheSupervisor) {
  StartPool(Options(2));
  std::vector<int> pids;
  for (const WorkerInfo& w : pool_->Workers()) pids.push_back(w.pid);
  ASSERT_EQ(kill(pool_->supervisor_pid(), SIGKILL), 0);
  for (int pid : pids) EXPECT_TRUE(WaitForExit(pid, absl::Seconds(5))) << pid;
}

TEST(ForkPoolHygieneTest, WorkersDoNotInheritOtherFds) {
  // A listening socket without CLOEXEC, as a careless server might have.
  int listener = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(listener, 0);
  ASSERT_EQ(listen(listener, 1), 0);
  struct stat st;
  ASSERT_EQ(fstat(listener, &st), 0);
  const std::string leaked = absl::StrCat("socket:[", st.st_ino, "]");
  ForkPoolOptions options = Options(1);
  FORQ_ASSERT_OK_AND_ASSIGN(std::unique_ptr<WorkerPool> pool,
                            CreateForkPool(options));
  Notification idle;
  PoolCallbacks cb;
  cb.on_worker_idle = [&] {
    if (!idle.HasBeenNotified()) idle.Notify();
  };
  ASSERT_THAT(pool->Start(cb), IsOk());
  ASSERT_TRUE(idle.WaitForNotificationWithTimeout(kWait));
  for (int pid : {pool->Workers()[0].pid, pool->supervisor_pid()}) {
    const std::string dir = absl::StrCat("/proc/", pid, "/fd");
    DIR* d = opendir(dir.c_str());
    ASSERT_NE(d, nullptr);
    int count = 0;
    while (dirent* e = readdir(d)) {
      if (e->d_name[0] == '.') continue;
      ++count;
      char target[256] = {};
      if (readlink(absl::StrCat(dir, "/", e->d_name).c_str(), target,
                   sizeof(target) - 1) < 0) {
        continue;  // closed since readdir
      }
      EXPECT_NE(leaked, target) << "pid " << pid << " inherited the listener";
    }
    closedir(d);
    // Worker: 0-2, two eventfds, spill socket. Supervisor: 0-2, two pipes,
    // signalfd, and the worker-side fds of each slot (4).
    EXPECT_LE(count, pid == pool->supervisor_pid() ? 10 : 6) << "pid " << pid;
  }
  pool->Shutdown();
  close(listener);
}

TEST_F(ForkPoolTest, ShutdownIsIdempotentAndRefusesWork) {
  StartPool(Options(2));
  const int sup = pool_->supervisor_pid();
  pool_->Shutdown();
  pool_->Shutdown();
  EXPECT_NE(kill(sup, 0), 0);  // reaped: no zombie left
  Assignment a;
  a.task_id = "x";
  a.kind = "echo";
  EXPECT_THAT(pool_->Dispatch(a), StatusIs(absl::StatusCode::kUnavailable));
}

TEST_F(ForkPoolTest, LoadsPluginAndRunsItsHandler) {
  ForkPoolOptions options = Options(1);
  options.plugins = {FORQ_EXAMPLE_PLUGIN_PATH};
  StartPool(options);
  Outcome o = RunAndWait("example.reverse", "abc");
  EXPECT_EQ(o.kind, OutcomeKind::kSucceeded) << o.status;
  EXPECT_EQ(o.result, "cba");
  // Kinds() lists built-ins and plugin kinds, so forqd can refuse others.
  std::vector<std::string> kinds = pool_->Kinds();
  EXPECT_THAT(kinds, ::testing::Contains("example.reverse"));
  EXPECT_THAT(kinds, ::testing::Contains("primes"));
  EXPECT_THAT(kinds, ::testing::Not(::testing::Contains("no.such.kind")));
}

TEST(ForkPoolPluginTest, BadPluginIsInvalidArgument) {
  ForkPoolOptions options = Options(1);
  options.plugins = {"/nonexistent/plugin.so"};
  EXPECT_THAT(CreateForkPool(options),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("/nonexistent/plugin.so")));
  // A loadable library without the entry point.
  options.plugins = {"libm.so.6"};
  EXPECT_THAT(CreateForkPool(options),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("forq_register_handlers")));
}

TEST_F(ForkPoolTest, CallRoundTripWithReplyFromAnotherThread) {
  // No built-in handler calls; the example plugin's "example.call" does.
  ForkPoolOptions options = Options(1);
  options.plugins = {FORQ_EXAMPLE_PLUGIN_PATH};
  StartPool(options);
  Run("caller", "example.call", "ping");
  std::optional<Recorder::Call> call = rec_.TakeCall();
  ASSERT_TRUE(call.has_value());
  EXPECT_EQ(call->task_id, "caller");
  EXPECT_EQ(call->request, "ping");
  std::thread replier([reply = call->reply] { reply(std::string("pong")); });
  replier.join();
  std::optional<Outcome> o = rec_.NextOutcome();
  ASSERT_TRUE(o.has_value());
  EXPECT_EQ(o->kind, OutcomeKind::kSucceeded) << o->status;
  EXPECT_EQ(o->result, "pong");
}

TEST_F(ForkPoolTest, CallErrorReplyReachesHandler) {
  ForkPoolOptions options = Options(1);
  options.plugins = {FORQ_EXAMPLE_PLUGIN_PATH};
  StartPool(options);
  Run("caller", "example.call", "ping");
  std::optional<Recorder::Call> call = rec_.TakeCall();
  ASSERT_TRUE(call.has_value());
  call->reply(absl::NotFoundError("no such object"));
  std::optional<Outcome> o = rec_.NextOutcome();
  ASSERT_TRUE(o.has_value());
  EXPECT_EQ(o->kind, OutcomeKind::kHandlerError);
  EXPECT_THAT(o->status,
              StatusIs(absl::StatusCode::kNotFound, "no such object"));
}

TEST_F(ForkPoolTest, CancelWakesHandlerBlockedInCall) {
  ForkPoolOptions options = Options(1);
  options.plugins = {FORQ_EXAMPLE_PLUGIN_PATH};
  StartPool(options);
  Run("caller", "example.call", "never answered");
  std::optional<Recorder::Call> call = rec_.TakeCall();
  ASSERT_TRUE(call.has_value());
  pool_->Cancel("caller", 1);
  std::optional<Outcome> o = rec_.NextOutcome();
  ASSERT_TRUE(o.has_value());
  EXPECT_EQ(o->kind, OutcomeKind::kCancelled);
  EXPECT_EQ(rec_.exit_count(), 0u);      // returned within the grace period
  call->reply(std::string("too late"));  // dropped, harmless
  EXPECT_EQ(RunAndWait("echo", "z").kind, OutcomeKind::kSucceeded);
}

// A worker that scribbles over its completion ring is killed and reported
// as a protocol violation; forqd keeps serving, and the other worker's
// task is unaffected.
TEST_F(ForkPoolTest, CorruptCompletionRingKillsOnlyThatWorker) {
  ForkPoolOptions options = Options(2);
  options.plugins = {FORQ_EVIL_PLUGIN_PATH};
  StartPool(options);
  const char* modes[] = {"tail", "unaligned", "length",
                         "seq",  "type",      "random"};
  int iterations = 0;
  for (int round = 0; round < 5; ++round) {
    for (const char* mode : modes) {
      ++iterations;
      const std::string evil_id = absl::StrCat("evil-", iterations);
      const std::string good_id = absl::StrCat("good-", iterations);
      ASSERT_TRUE(WaitIdle(2));
      Run(good_id, "sleep", "30");
      Run(evil_id, "evil.scribble", mode, absl::Seconds(10));
      for (int k = 0; k < 2; ++k) {
        std::optional<Outcome> o = rec_.NextOutcome();
        ASSERT_TRUE(o.has_value());
        if (o->task_id == evil_id) {
          EXPECT_EQ(o->kind, OutcomeKind::kProtocolViolation)
              << mode << ": " << o->status;
        } else {
          EXPECT_EQ(o->task_id, good_id);
          EXPECT_EQ(o->kind, OutcomeKind::kSucceeded);
        }
      }
    }
  }
  ASSERT_TRUE(rec_.NthExit(iterations).has_value());
  EXPECT_EQ(rec_.exit_count(), static_cast<size_t>(iterations));
  for (const WorkerExit& x : rec_.exits()) EXPECT_EQ(x.reason, "protocol");
  ASSERT_TRUE(WaitIdle(2));
  EXPECT_EQ(RunAndWait("echo", "still serving").result, "still serving");
}

TEST(ForkPoolOptionsTest, RejectsBadOptions) {
  ForkPoolOptions o;
  o.workers = 1;
  o.ring_bytes = 5000;
  EXPECT_THAT(CreateForkPool(o), StatusIs(absl::StatusCode::kInvalidArgument));
  o.ring_bytes = 1 << 16;
  o.exec_allow = {"bin/echo"};
  EXPECT_THAT(CreateForkPool(o), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(DefaultWorkerCountTest, IsPositive) { EXPECT_GE(DefaultWorkerCount(), 1); }

}  // namespace
}  // namespace forq::worker
