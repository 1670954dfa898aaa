// Scheduler state transitions, one at a time, on a ManualPool and a
// FakeClock: submit, dispatch, refusal, success, failure, retry, dead,
// cancel, delay, wait timeout, stale completion and recovery.
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include "common/clock.h"
#include "common/notification.h"
#include "server/scheduler/scheduler.h"
#include "server/scheduler/scheduler_testing.h"
#include "server/scheduler/task_proto.h"
#include "tests/testing/status_matchers.h"

namespace forq::server {
namespace {

using ::forq::testing::IsOk;

// One scheduler on a memory store, a ManualPool and a FakeClock.
class SchedulerTransitionTest : public ::testing::Test {
 protected:
  void SetUp() override { Start(); }
  void TearDown() override {
    if (scheduler_ != nullptr) scheduler_->Shutdown(absl::ZeroDuration());
  }
  void Start(const std::vector<v1::Task>& stored = {}) {
    scheduler_.reset();  // before the store it uses
    store_ = NewMemoryStore();
    ASSERT_NE(store_, nullptr);
    if (!stored.empty()) {
      Notification inserted;
      store_->Insert(stored, [&](auto) { inserted.Notify(); });
      inserted.WaitForNotification();
    }
    SchedulerOptions options;
    options.clock = &clock_;
    options.backoff_base = absl::Seconds(1);
    scheduler_ = std::make_unique<Scheduler>(options, *store_, pool_, metrics_);
    ASSERT_THAT(scheduler_->Start(), IsOk());
  }
  std::string Submit(v1::TaskSpec spec) {
    if (spec.kind().empty()) spec.set_kind("echo");
    Notification done;
    std::string id;
    scheduler_->Submit({spec},
                       [&](absl::StatusOr<std::vector<InsertResult>> r) {
                         EXPECT_TRUE(r.ok()) << r.status();
                         if (r.ok()) id = (*r)[0].task.id();
                         done.Notify();
                       });
    done.WaitForNotification();
    return id;
  }
  v1::Task Get(const std::string& id) {
    absl::StatusOr<v1::Task> t = scheduler_->Get(id);
    EXPECT_THAT(t, IsOk());
    return t.value_or(v1::Task());
  }
  // The terminal task, once durable.
  v1::Task AwaitEnd(const std::string& id) {
    Notification done;
    v1::Task task;
    scheduler_->Wait(id, absl::Minutes(1),
                     [&](absl::StatusOr<v1::Task> t, bool terminal) {
                       EXPECT_TRUE(t.ok() && terminal);
                       if (t.ok()) task = *t;
                       done.Notify();
                     });
    EXPECT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(30)));
    return task;
  }

  FakeClock clock_;
  ManualPool pool_;
  Metrics metrics_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<Scheduler> scheduler_;
};

TEST_F(SchedulerTransitionTest, SubmitQueuesAndDispatchRunsAttemptOne) {
  const std::string id = Submit(v1::TaskSpec());
  EXPECT_EQ(Get(id).state(), v1::QUEUED);
  EXPECT_EQ(Get(id).attempt(), 0);
  EXPECT_TRUE(pool_.assigned().empty());
  pool_.AddRoom(1);
  ASSERT_EQ(pool_.assigned().size(), 1u);
  EXPECT_EQ(pool_.assigned()[0].task_id, id);
  EXPECT_EQ(pool_.assigned()[0].attempt, 1);
  EXPECT_EQ(Get(id).state(), v1::RUNNING);
  EXPECT_EQ(Get(id).attempt(), 1);
}

TEST_F(SchedulerTransitionTest, TasksThePoolRefusesKeepTheirPlaceInLine) {
  pool_.OverstateRoom(3);  // every batch is refused after the room it has
  const std::string a = Submit(v1::TaskSpec());
  const std::string b = Submit(v1::TaskSpec());
  const std::string c = Submit(v1::TaskSpec());
  EXPECT_TRUE(pool_.assigned().empty());
  pool_.AddRoom(1);
  ASSERT_EQ(pool_.assigned().size(), 1u);
  EXPECT_EQ(pool_.assigned()[0].task_id, a);
  EXPECT_EQ(Get(b).state(), v1::QUEUED);
  EXPECT_EQ(Get(b).attempt(), 0);
  EXPECT_EQ(Get(c).state(), v1::QUEUED);
  pool_.AddRoom(2);
  std::vector<worker::Assignment> sent = pool_.assigned();
  ASSERT_EQ(sent.size(), 3u);
  EXPECT_EQ(sent[1].task_id, b);
  EXPECT_EQ(sent[2].task_id, c);
  for (const worker::Assignment& x : sent) EXPECT_EQ(x.attempt, 1);
  EXPECT_EQ(Get(c).state(), v1::RUNNING);
}

// A task with a timeout under 10 s needs an idle worker: while none is,
// the scheduler does not offer it (or what follows it) to the pool at all.
TEST_F(SchedulerTransitionTest, ShortTimeoutTaskWaitsForAnIdleWorker) {
  pool_.OverstateRoom(3);  // queue room, but no idle worker
  v1::TaskSpec quick;
  quick.mutable_timeout()->set_seconds(5);
  const std::string id = Submit(quick);
  EXPECT_EQ(pool_.refused(), 0);
  Submit(v1::TaskSpec());  // same place in line, behind it
  EXPECT_EQ(pool_.refused(), 0);
  pool_.AddRoom(1);
  ASSERT_EQ(pool_.assigned().size(), 1u);
  EXPECT_EQ(pool_.assigned()[0].task_id, id);
  EXPECT_EQ(pool_.assigned()[0].timeout, absl::Seconds(5));
}

TEST_F(SchedulerTransitionTest, SuccessIsTerminalOnceDurable) {
  pool_.AddRoom(1);
  v1::TaskSpec spec;
  spec.set_payload("p");
  const std::string id = Submit(spec);
  ASSERT_EQ(pool_.assigned().size(), 1u);
  pool_.Finish(pool_.assigned()[0], worker::OutcomeKind::kSucceeded,
               absl::OkStatus(), "r");
  v1::Task t = AwaitEnd(id);
  EXPECT_EQ(t.state(), v1::SUCCEEDED);
  EXPECT_EQ(t.result(), "r");
  absl::StatusOr<v1::Task> stored = store_->Get(id);
  ASSERT_THAT(stored, IsOk());
  EXPECT_EQ(stored->state(), v1::SUCCEEDED);
  EXPECT_EQ(stored->result(), "r");
}

TEST_F(SchedulerTransitionTest, PermanentHandlerErrorFailsWithoutRetry) {
  pool_.AddRoom(2);
  const std::string id = Submit(v1::TaskSpec());
  pool_.Finish(pool_.assigned()[0], worker::OutcomeKind::kHandlerError,
               absl::InvalidArgumentError("bad input"));
  v1::Task t = AwaitEnd(id);
  EXPECT_EQ(t.state(), v1::FAILED);
  EXPECT_EQ(t.attempt(), 1);
  EXPECT_EQ(t.error().message(), "bad input");
  clock_.Advance(absl::Hours(1));
  scheduler_->Poke();
  EXPECT_EQ(pool_.assigned().size(), 1u);
}

TEST_F(SchedulerTransitionTest, RetryableFailureBacksOffOnTheClock) {
  pool_.AddRoom(2);
  const std::string id = Submit(v1::TaskSpec());
  const absl::Time failed_at = clock_.Now();
  pool_.Finish(pool_.assigned()[0], worker::OutcomeKind::kHandlerError,
               absl::UnavailableError("try later"));
  v1::Task t = Get(id);
  EXPECT_EQ(t.state(), v1::QUEUED);
  EXPECT_EQ(t.attempt(), 1);
  // Backoff before attempt 2: 1 s +-25 %.
  const absl::Time not_before = FromProto(t.not_before());
  EXPECT_GE(not_before, failed_at + absl::Milliseconds(750));
  EXPECT_LE(not_before, failed_at + absl::Milliseconds(1250));
  scheduler_->Poke();
  EXPECT_EQ(pool_.assigned().size(), 1u) << "ran again before its backoff";
  clock_.Advance(absl::Milliseconds(1300));
  scheduler_->Poke();
  ASSERT_EQ(pool_.assigned().size(), 2u);
  EXPECT_EQ(pool_.assigned()[1].attempt, 2);
  pool_.Finish(pool_.assigned()[1], worker::OutcomeKind::kSucceeded);
  EXPECT_EQ(AwaitEnd(id).attempt(), 2);
}

TEST_F(SchedulerTransitionTest, LastFailedAttemptMakesTheTaskDead) {
  pool_.AddRoom(2);
  v1::TaskSpec spec;
  spec.set_max_attempts(2);
  const std::string id = Submit(spec);
  pool_.Finish(pool_.assigned()[0], worker::OutcomeKind::kSignaled,
               absl::AbortedError("crash"));
  clock_.Advance(absl::Seconds(2));
  scheduler_->Poke();
  ASSERT_EQ(pool_.assigned().size(), 2u);
  pool_.Finish(pool_.assigned()[1], worker::OutcomeKind::kTimeout,
               absl::DeadlineExceededError("slow"));
  v1::Task t = AwaitEnd(id);
  EXPECT_EQ(t.state(), v1::DEAD);
  EXPECT_EQ(t.attempt(), 2);
  EXPECT_EQ(t.error().reason(), v1::TIMEOUT);
}

TEST_F(SchedulerTransitionTest, CancelOfAQueuedTaskNeverRunsIt) {
  const std::string id = Submit(v1::TaskSpec());
  Notification cancelled;
  scheduler_->Cancel(id, [&](absl::StatusOr<v1::Task> t) {
    ASSERT_THAT(t, IsOk());
    EXPECT_EQ(t->state(), v1::CANCELLED);
    cancelled.Notify();
  });
  ASSERT_TRUE(cancelled.WaitForNotificationWithTimeout(absl::Seconds(30)));
  pool_.AddRoom(1);
  EXPECT_TRUE(pool_.assigned().empty());
  EXPECT_EQ(Get(id).state(), v1::CANCELLED);
}

TEST_F(SchedulerTransitionTest, CancelOfARunningTaskGoesThroughThePool) {
  pool_.AddRoom(1);
  const std::string id = Submit(v1::TaskSpec());
  Notification answered;
  scheduler_->Cancel(id, [&](absl::StatusOr<v1::Task> t) {
    ASSERT_THAT(t, IsOk());
    EXPECT_TRUE(t->cancel_requested());
    answered.Notify();
  });
  ASSERT_TRUE(answered.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_THAT(pool_.cancels(), ::testing::ElementsAre(id));
  pool_.Finish(pool_.assigned()[0], worker::OutcomeKind::kCancelled,
               absl::CancelledError("stopped"));
  EXPECT_EQ(AwaitEnd(id).state(), v1::CANCELLED);
}

TEST_F(SchedulerTransitionTest, DelayedTaskRunsWhenItsTimeComes) {
  pool_.AddRoom(1);
  v1::TaskSpec spec;
  spec.mutable_delay()->set_seconds(10);
  const std::string id = Submit(spec);
  scheduler_->Poke();
  EXPECT_TRUE(pool_.assigned().empty());
  clock_.Advance(absl::Seconds(10));
  scheduler_->Poke();
  ASSERT_EQ(pool_.assigned().size(), 1u);
  EXPECT_EQ(pool_.assigned()[0].task_id, id);
}

TEST_F(SchedulerTransitionTest, WaitTimesOutOnTheClockWithTheCurrentState) {
  const std::string id = Submit(v1::TaskSpec());
  bool fired = false, terminal = true;
  v1::Task seen;
  scheduler_->Wait(id, absl::Seconds(5),
                   [&](absl::StatusOr<v1::Task> t, bool term) {
                     fired = true;
                     terminal = term;
                     if (t.ok()) seen = *t;
                   });
  scheduler_->Poke();
  EXPECT_FALSE(fired);
  clock_.Advance(absl::Seconds(5));
  scheduler_->Poke();
  EXPECT_TRUE(fired);
  EXPECT_FALSE(terminal);
  EXPECT_EQ(seen.state(), v1::QUEUED);
  EXPECT_EQ(scheduler_->pending_waits(), 0u);
}

TEST_F(SchedulerTransitionTest, StaleCompletionIsRefused) {
  pool_.AddRoom(1);
  const std::string id = Submit(v1::TaskSpec());
  worker::Assignment stale = pool_.assigned()[0];
  stale.attempt = 7;
  pool_.Finish(stale, worker::OutcomeKind::kSucceeded, absl::OkStatus(), "x");
  EXPECT_EQ(Get(id).state(), v1::RUNNING);
  pool_.Finish(pool_.assigned()[0], worker::OutcomeKind::kSucceeded,
               absl::OkStatus(), "real");
  EXPECT_EQ(AwaitEnd(id).result(), "real");
}

TEST_F(SchedulerTransitionTest, RecoveryCountsARunningTaskAsALostAttempt) {
  scheduler_->Shutdown(absl::ZeroDuration());
  v1::Task t;
  t.set_id("0000000000000000000000aa");
  t.set_queue("default");
  t.set_kind("echo");
  t.set_state(v1::RUNNING);
  t.set_attempt(1);
  t.set_max_attempts(5);
  Start({t});
  v1::Task now = Get(t.id());
  EXPECT_EQ(now.state(), v1::QUEUED);
  EXPECT_EQ(now.attempt(), 1);
  EXPECT_EQ(now.error().reason(), v1::WORKER_LOST);
  pool_.AddRoom(1);
  ASSERT_EQ(pool_.assigned().size(), 1u);
  EXPECT_EQ(pool_.assigned()[0].attempt, 2);
}

}  // namespace
}  // namespace forq::server
