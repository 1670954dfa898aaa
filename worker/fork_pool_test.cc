#include "worker/fork_pool.h"

#include <dirent.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#include <deque>
#include <map>
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

namespace forq::worker {
namespace {

using ::forq::testing::IsOk;
using ::forq::testing::StatusIs;
using ::testing::HasSubstr;

constexpr absl::Duration kWait = absl::Seconds(20);

// Records every callback of a pool and lets the test wait for them.
class Recorder {
 public:
  PoolCallbacks Callbacks() {
    PoolCallbacks cb;
    cb.on_outcome = [this](Outcome o) {
      MutexLock l(&mu_);
      outcomes_.push_back(std::move(o));
      cv_.SignalAll();
    };
    cb.on_progress = [this](absl::string_view, int, double f,
                            absl::string_view) {
      MutexLock l(&mu_);
      ++progress_;
      cv_.SignalAll();
    };
    cb.on_worker_idle = [this] {
      MutexLock l(&mu_);
      ++idle_events_;
      cv_.SignalAll();
    };
    cb.on_worker_exit = [this](const WorkerExit& x) {
      MutexLock l(&mu_);
      exits_.push_back(x);
      cv_.SignalAll();
    };
    cb.on_call = [this](
                     absl::string_view task_id, std::string request,
                     std::function<void(absl::StatusOr<std::string>)> reply) {
      MutexLock l(&mu_);
      calls_.push_back(
          {std::string(task_id), std::move(request), std::move(reply)});
      cv_.SignalAll();
    };
    return cb;
  }

  // Waits until `pred` holds (checked under the lock) or the deadline.
  template <typename Pred>
  bool WaitFor(Pred pred, absl::Duration timeout = kWait) {
    const absl::Time deadline = absl::Now() + timeout;
    MutexLock l(&mu_);
    while (!pred()) {
      const absl::Duration left = deadline - absl::Now();
      if (left <= absl::ZeroDuration()) return false;
      cv_.WaitWithTimeout(&mu_, left);
    }
    return true;
  }

  // Next outcome, in arrival order.
  std::optional<Outcome> NextOutcome(absl::Duration timeout = kWait) {
    if (!WaitFor(
            [&] {
              mu_.AssertHeld();
              return consumed_ < outcomes_.size();
            },
            timeout)) {
      return std::nullopt;
    }
    MutexLock l(&mu_);
    return outcomes_[consumed_++];
  }

  std::vector<WorkerExit> exits() {
    MutexLock l(&mu_);
    return exits_;
  }
  size_t exit_count() {
    MutexLock l(&mu_);
    return exits_.size();
  }
  int progress() {
    MutexLock l(&mu_);
    return progress_;
  }

  struct Call {
    std::string task_id;
    std::string request;
    std::function<void(absl::StatusOr<std::string>)> reply;
  };
  std::optional<Call> TakeCall(absl::Duration timeout = kWait) {
    if (!WaitFor(
            [&] {
              mu_.AssertHeld();
              return !calls_.empty();
            },
            timeout)) {
      return std::nullopt;
    }
    MutexLock l(&mu_);
    Call c = std::move(calls_.front());
    calls_.pop_front();
    return c;
  }

  Mutex mu_;
  CondVar cv_;
  std::vector<Outcome> outcomes_ ABSL_GUARDED_BY(mu_);
  size_t consumed_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<WorkerExit> exits_ ABSL_GUARDED_BY(mu_);
  std::deque<Call> calls_ ABSL_GUARDED_BY(mu_);
  int idle_events_ ABSL_GUARDED_BY(mu_) = 0;
  int progress_ ABSL_GUARDED_BY(mu_) = 0;
};

class ForkPoolTest : public ::testing::Test {
 protected:
  void StartPool(ForkPoolOptions options) {
    FORQ_ASSERT_OK_AND_ASSIGN(pool_, CreateForkPool(std::move(options)));
    ASSERT_THAT(pool_->Start(rec_.Callbacks()), IsOk());
    ASSERT_TRUE(WaitIdle(pool_->size()));
  }
  void TearDown() override {
    if (pool_ != nullptr) pool_->Shutdown();
  }

  bool WaitIdle(int n) {
    return rec_.WaitFor([&] { return pool_->IdleCount() >= n; });
  }

  // Dispatches when a worker is idle.
  void Run(std::string task_id, std::string kind, std::string payload,
           absl::Duration timeout = absl::InfiniteDuration(), int attempt = 1) {
    ASSERT_TRUE(WaitIdle(1));
    Assignment a;
    a.task_id = std::move(task_id);
    a.attempt = attempt;
    a.kind = std::move(kind);
    a.payload = std::move(payload);
    a.timeout = timeout;
    ASSERT_THAT(pool_->Dispatch(std::move(a)), IsOk());
  }

  Outcome RunAndWait(std::string kind, std::string payload,
                     absl::Duration timeout = absl::InfiniteDuration()) {
    Run(absl::StrCat("t", ++counter_), std::move(kind), std::move(payload),
        timeout);
    std::optional<Outcome> o = rec_.NextOutcome();
    EXPECT_TRUE(o.has_value()) << "no outcome";
    return o.value_or(Outcome{});
  }

  // pid of the worker currently running `task_id`, or 0.
  int PidRunning(absl::string_view task_id) {
    for (const WorkerInfo& w : pool_->Workers()) {
      if (w.current_task_id == task_id) return w.pid;
    }
    return 0;
  }

  Recorder rec_;
  std::unique_ptr<WorkerPool> pool_;
  int counter_ = 0;
};

ForkPoolOptions Options(int workers) {
  ForkPoolOptions o;
  o.workers = workers;
  o.cancel_grace = absl::Milliseconds(500);
  return o;
}

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

TEST_F(ForkPoolTest, DispatchWithoutIdleWorkerIsResourceExhausted) {
  ForkPoolOptions options = Options(1);
  options.prefetch = 0;
  StartPool(options);
  Run("long", "sleep", "60000");
  Assignment a;
  a.task_id = "second";
  a.kind = "echo";
  EXPECT_THAT(pool_->Dispatch(a),
              StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_EQ(pool_->IdleCount(), 0);
  EXPECT_EQ(pool_->Room(), 0);
}

Assignment Task(std::string id, std::string kind, std::string payload,
                absl::Duration timeout = absl::InfiniteDuration()) {
  Assignment a;
  a.task_id = std::move(id);
  a.kind = std::move(kind);
  a.payload = std::move(payload);
  a.timeout = timeout;
  return a;
}

TEST_F(ForkPoolTest, QueuesBehindARunningTaskUpToPrefetch) {
  ForkPoolOptions options = Options(1);
  options.prefetch = 2;
  StartPool(options);
  ASSERT_TRUE(WaitIdle(1));
  EXPECT_EQ(pool_->Room(), 3);
  // Queued this deep only once the pool knows echo is short.
  ASSERT_EQ(RunAndWait("echo", "warm").kind, OutcomeKind::kSucceeded);
  ASSERT_TRUE(WaitIdle(1));
  std::vector<Assignment> batch;
  // The first keeps the worker busy while the test dispatches more (a
  // sleep cannot end early, so no race on how fast the worker is).
  batch.push_back(Task("q0", "sleep", "2000"));
  for (int i = 1; i < 4; ++i) {
    batch.push_back(Task(absl::StrCat("q", i), "echo", absl::StrCat(i)));
  }
  // One runs, two wait in the ring, the fourth is refused and kept.
  EXPECT_EQ(pool_->DispatchMany(batch), 3u);
  EXPECT_EQ(batch[3].task_id, "q3");
  // A task with a short timeout needs an idle worker.
  EXPECT_THAT(pool_->Dispatch(Task("short", "echo", "", absl::Seconds(1))),
              StatusIs(absl::StatusCode::kResourceExhausted));
  for (int i = 0; i < 3; ++i) {
    std::optional<Outcome> o = rec_.NextOutcome();
    ASSERT_TRUE(o.has_value());
    EXPECT_EQ(o->task_id, absl::StrCat("q", i));  // in order
    EXPECT_EQ(o->kind, OutcomeKind::kSucceeded);
    if (i > 0) {
      EXPECT_EQ(o->result, absl::StrCat(i));
    }
  }
}

// A worker's queue holds about 2 ms of work: a kind whose attempts run
// 20 ms or more waits for an idle worker, one of microseconds queues up to
// the prefetch, and one the pool has not timed yet queues one deep. So a
// task submitted later never waits behind a row of long ones.
TEST_F(ForkPoolTest, QueueDepthFollowsTheKindsRunTime) {
  ForkPoolOptions options = Options(1);
  options.prefetch = 8;
  StartPool(options);
  ASSERT_EQ(RunAndWait("sleep", "30").kind, OutcomeKind::kSucceeded);
  ASSERT_EQ(RunAndWait("echo", "warm").kind, OutcomeKind::kSucceeded);
  ASSERT_TRUE(WaitIdle(1));
  ASSERT_THAT(pool_->Dispatch(Task("running", "sleep", "300")), IsOk());
  EXPECT_EQ(pool_->RoomFor("sleep"), 0);
  EXPECT_EQ(pool_->RoomFor("sha256"), 1);
  EXPECT_EQ(pool_->RoomFor("echo"), 8);
  EXPECT_THAT(pool_->Dispatch(Task("long", "sleep", "30")),
              StatusIs(absl::StatusCode::kResourceExhausted));
  ASSERT_THAT(pool_->Dispatch(Task("untimed", "sha256", "x")), IsOk());
  EXPECT_THAT(pool_->Dispatch(Task("untimed2", "sha256", "y")),
              StatusIs(absl::StatusCode::kResourceExhausted));
  for (int i = 0; i < 7; ++i) {  // with "untimed", the prefetch of 8
    ASSERT_THAT(pool_->Dispatch(Task(absl::StrCat("e", i), "echo", "x")),
                IsOk());
  }
  EXPECT_THAT(pool_->Dispatch(Task("e7", "echo", "x")),
              StatusIs(absl::StatusCode::kResourceExhausted));
  for (int i = 0; i < 9; ++i) {
    std::optional<Outcome> o = rec_.NextOutcome();
    ASSERT_TRUE(o.has_value());
    EXPECT_EQ(o->kind, OutcomeKind::kSucceeded) << o->task_id;
  }
}

// Assignments queued behind a running one can fill the ring: the rest is
// refused for now (kept by the caller), and the worker is not treated as
// broken.
TEST_F(ForkPoolTest, RingFilledByQueuedAssignmentsMeansNoRoomForNow) {
  ForkPoolOptions options = Options(1);
  options.prefetch = 64;
  options.ring_bytes = 64 << 10;  // frames over 16 KiB are spilled
  StartPool(options);
  ASSERT_EQ(RunAndWait("echo", "warm").kind, OutcomeKind::kSucceeded);
  ASSERT_TRUE(WaitIdle(1));
  std::vector<Assignment> batch;
  batch.push_back(Task("head", "sleep", "300"));
  for (int i = 0; i < 12; ++i) {
    batch.push_back(
        Task(absl::StrCat("p", i), "echo", std::string(12 << 10, 'a' + i)));
  }
  const size_t sent = pool_->DispatchMany(batch);
  EXPECT_GT(sent, 2u);
  EXPECT_LT(sent, batch.size());
  for (size_t i = 0; i < sent; ++i) {
    std::optional<Outcome> o = rec_.NextOutcome();
    ASSERT_TRUE(o.has_value());
    EXPECT_EQ(o->kind, OutcomeKind::kSucceeded) << o->task_id << o->status;
    if (i > 0) {
      EXPECT_EQ(o->result.size(), size_t{12 << 10});
    }
  }
  EXPECT_EQ(rec_.exit_count(), 0u);
  // The refused ones go once there is room, as many as the ring holds.
  batch.erase(batch.begin(), batch.begin() + sent);
  while (!batch.empty()) {
    ASSERT_TRUE(WaitIdle(1));
    const size_t more = pool_->DispatchMany(batch);
    ASSERT_GT(more, 0u);
    for (size_t i = 0; i < more; ++i) {
      std::optional<Outcome> o = rec_.NextOutcome();
      ASSERT_TRUE(o.has_value());
      EXPECT_EQ(o->kind, OutcomeKind::kSucceeded) << o->task_id << o->status;
    }
    batch.erase(batch.begin(), batch.begin() + more);
  }
  EXPECT_EQ(rec_.exit_count(), 0u);
}

TEST_F(ForkPoolTest, IdleWorkerTakesOverWhatWaitsBehindALongTask) {
  ForkPoolOptions options = Options(2);
  options.prefetch = 4;
  StartPool(options);
  ASSERT_TRUE(WaitIdle(2));
  // Both workers busy, then one assignment queued behind each.
  ASSERT_THAT(pool_->Dispatch(Task("long", "sleep", "20000")), IsOk());
  ASSERT_THAT(pool_->Dispatch(Task("short", "sleep", "200")), IsOk());
  ASSERT_THAT(pool_->Dispatch(Task("behind-long", "echo", "a")), IsOk());
  ASSERT_THAT(pool_->Dispatch(Task("behind-short", "echo", "b")), IsOk());
  // "short" and what follows it finish; that worker is then idle while
  // "behind-long" waits behind a 20 s task: it must be given back unrun.
  std::map<std::string, OutcomeKind> seen;
  while (seen.size() < 3) {
    std::optional<Outcome> o = rec_.NextOutcome();
    ASSERT_TRUE(o.has_value()) << "nothing given back";
    ASSERT_NE(o->task_id, "long") << "waited for the long task";
    seen[o->task_id] = o->kind;
  }
  EXPECT_EQ(seen["short"], OutcomeKind::kSucceeded);
  EXPECT_EQ(seen["behind-short"], OutcomeKind::kSucceeded);
  EXPECT_EQ(seen["behind-long"], OutcomeKind::kRevoked);
  EXPECT_EQ(PidRunning("behind-long"), 0);
}

TEST_F(ForkPoolTest, CancelOfAQueuedAssignmentNeverRunsIt) {
  ForkPoolOptions options = Options(1);
  options.prefetch = 2;
  StartPool(options);
  ASSERT_TRUE(WaitIdle(1));
  ASSERT_THAT(pool_->Dispatch(Task("first", "sleep", "300")), IsOk());
  ASSERT_THAT(pool_->Dispatch(Task("queued", "crash", "")), IsOk());
  pool_->Cancel("queued", 1);
  std::map<std::string, OutcomeKind> seen;
  while (seen.size() < 2) {
    std::optional<Outcome> o = rec_.NextOutcome();
    ASSERT_TRUE(o.has_value());
    seen[o->task_id] = o->kind;
  }
  EXPECT_EQ(seen["queued"], OutcomeKind::kCancelled);
  // "first" ran, or (if the worker had not taken it yet) came back unrun.
  EXPECT_THAT(seen["first"],
              ::testing::AnyOf(OutcomeKind::kSucceeded, OutcomeKind::kRevoked));
  // Had "queued" (crash) run, its worker would have died.
  EXPECT_EQ(rec_.exit_count(), 0u);
}

TEST_F(ForkPoolTest, CrashGivesBackWhatWaitedBehindIt) {
  ForkPoolOptions options = Options(1);
  options.prefetch = 2;
  StartPool(options);
  ASSERT_EQ(RunAndWait("echo", "warm").kind, OutcomeKind::kSucceeded);
  ASSERT_TRUE(WaitIdle(1));
  std::vector<Assignment> batch;
  batch.push_back(Task("boom", "crash", ""));
  batch.push_back(Task("next1", "echo", "1"));
  batch.push_back(Task("next2", "echo", "2"));
  ASSERT_EQ(pool_->DispatchMany(batch), 3u);
  std::map<std::string, OutcomeKind> seen;
  while (seen.size() < 3) {
    std::optional<Outcome> o = rec_.NextOutcome();
    ASSERT_TRUE(o.has_value());
    seen[o->task_id] = o->kind;
  }
  EXPECT_EQ(seen["boom"], OutcomeKind::kSignaled);
  EXPECT_EQ(seen["next1"], OutcomeKind::kRevoked);
  EXPECT_EQ(seen["next2"], OutcomeKind::kRevoked);
}

TEST_F(ForkPoolTest, CrashIsSignaledAndWorkerRespawns) {
  StartPool(Options(1));
  const int old_pid = pool_->Workers()[0].pid;
  Outcome o = RunAndWait("crash", "");
  EXPECT_EQ(o.kind, OutcomeKind::kSignaled);
  EXPECT_EQ(o.signal, SIGABRT);
  EXPECT_EQ(o.task_id, "t1");
  ASSERT_TRUE(rec_.WaitFor([&] {
    rec_.mu_.AssertHeld();
    return !rec_.exits_.empty();
  }));
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
  ASSERT_TRUE(rec_.WaitFor([&] {
    rec_.mu_.AssertHeld();
    return !rec_.exits_.empty();
  }));
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
  ASSERT_TRUE(rec_.WaitFor([&] {
    rec_.mu_.AssertHeld();
    return !rec_.exits_.empty();
  }));
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
  ASSERT_TRUE(rec_.WaitFor([&] {
    rec_.mu_.AssertHeld();
    return !rec_.exits_.empty();
  }));
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
  ASSERT_TRUE(rec_.WaitFor([&] {
    rec_.mu_.AssertHeld();
    return !rec_.exits_.empty();
  }));
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
  ASSERT_TRUE(rec_.WaitFor([&] {
    rec_.mu_.AssertHeld();
    return !rec_.exits_.empty();
  }));
  EXPECT_EQ(rec_.exits()[0].reason, "memory");
  // A task that finishes before the check still succeeds; the worker is
  // then recycled between tasks.
  o = RunAndWait("echo", "quick");
  EXPECT_EQ(o.kind, OutcomeKind::kSucceeded);
  ASSERT_TRUE(rec_.WaitFor([&] {
    rec_.mu_.AssertHeld();
    return rec_.exits_.size() >= 2;
  }));
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
  ASSERT_TRUE(rec_.WaitFor([&] {
    rec_.mu_.AssertHeld();
    return rec_.exits_.size() == static_cast<size_t>(iterations);
  }));
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
