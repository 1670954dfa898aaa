#include "server/scheduler/scheduler.h"

#include <atomic>
#include <deque>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include "common/clock.h"
#include "common/mutex.h"
#include "common/notification.h"
#include "server/scheduler/scheduler_testing.h"
#include "server/scheduler/task_proto.h"
#include "server/store/cluster.h"
#include "tests/testing/status_matchers.h"

namespace forq::server {
namespace {

using ::forq::testing::IsOk;

TEST(SchedulerTest, FinishedWaitsLeaveNoTimeoutsBehind) {
  std::unique_ptr<Store> store = NewMemoryStore();
  ASSERT_NE(store, nullptr);
  EchoPool pool;
  Metrics metrics;
  Scheduler scheduler(SchedulerOptions(), *store, pool, metrics);
  ASSERT_THAT(scheduler.Start(), IsOk());

  constexpr int kTasks = 500;
  std::atomic<int> done{0};
  Notification all_done;
  for (int i = 0; i < kTasks; ++i) {
    v1::TaskSpec spec;
    spec.set_kind("echo");
    spec.set_payload("x");
    scheduler.Submit({spec}, [&](absl::StatusOr<std::vector<InsertResult>> r) {
      ASSERT_TRUE(r.ok()) << r.status();
      scheduler.Wait((*r)[0].task.id(), absl::Minutes(5),
                     [&](const absl::StatusOr<v1::Task>& t, bool terminal) {
                       EXPECT_TRUE(t.ok() && terminal);
                       if (++done == kTasks) all_done.Notify();
                     });
    });
  }
  ASSERT_TRUE(all_done.WaitForNotificationWithTimeout(absl::Seconds(60)));
  // Every wait fired on completion: none may linger until its 5 min timeout.
  EXPECT_EQ(scheduler.pending_waits(), 0u);
  EXPECT_EQ(scheduler.pending_wait_timeouts(), 0u);
  scheduler.Shutdown(absl::Seconds(5));
}

TEST(SchedulerTest, CancelledWaitLeavesNoTimeoutBehind) {
  std::unique_ptr<Store> store = NewMemoryStore();
  ASSERT_NE(store, nullptr);
  EchoPool pool;
  Metrics metrics;
  Scheduler scheduler(SchedulerOptions(), *store, pool, metrics);
  ASSERT_THAT(scheduler.Start(), IsOk());
  v1::TaskSpec spec;
  spec.set_kind("echo");
  *spec.mutable_delay() = google::protobuf::Duration();
  spec.mutable_delay()->set_seconds(3600);
  Notification submitted;
  std::string id;
  scheduler.Submit({spec}, [&](absl::StatusOr<std::vector<InsertResult>> r) {
    ASSERT_TRUE(r.ok());
    id = (*r)[0].task.id();
    submitted.Notify();
  });
  submitted.WaitForNotification();
  uint64_t h = scheduler.Wait(id, absl::Minutes(5),
                              [](const absl::StatusOr<v1::Task>&, bool) {
                                ADD_FAILURE() << "cancelled wait fired";
                              });
  EXPECT_EQ(scheduler.pending_wait_timeouts(), 1u);
  EXPECT_TRUE(scheduler.CancelWait(h));
  EXPECT_EQ(scheduler.pending_waits(), 0u);
  EXPECT_EQ(scheduler.pending_wait_timeouts(), 0u);
  scheduler.Shutdown(absl::Seconds(1));
}

TEST(SchedulerTest, FailedTerminalWriteIsNotAnnouncedAndIsRetried) {
  FailingFinishStore store(NewMemoryStore());
  store.fail_finishes = 2;
  EchoPool pool;
  Metrics metrics;
  SchedulerOptions options;
  options.finish_retry_interval = absl::Seconds(1);
  Scheduler scheduler(options, store, pool, metrics);
  ASSERT_THAT(scheduler.Start(), IsOk());

  // Wait first, so the answer can only come from the terminal write.
  v1::TaskSpec spec;
  spec.set_kind("echo");
  spec.set_payload("hello");
  *spec.mutable_delay() = google::protobuf::Duration();
  spec.mutable_delay()->set_nanos(100'000'000);
  Notification submitted;
  std::string id;
  scheduler.Submit({spec}, [&](absl::StatusOr<std::vector<InsertResult>> r) {
    ASSERT_TRUE(r.ok());
    id = (*r)[0].task.id();
    submitted.Notify();
  });
  submitted.WaitForNotification();
  std::atomic<bool> answered{false};
  Notification finished;
  v1::Task seen;
  scheduler.Wait(id, absl::Minutes(1),
                 [&](absl::StatusOr<v1::Task> t, bool terminal) {
                   ASSERT_TRUE(t.ok());
                   EXPECT_TRUE(terminal);
                   seen = *t;
                   answered = true;
                   finished.Notify();
                 });

  ASSERT_TRUE(store.failed.WaitForNotificationWithTimeout(absl::Seconds(30)));
  // The write failed: nobody may hear SUCCEEDED yet.
  absl::StatusOr<v1::Task> now = scheduler.Get(id);
  ASSERT_THAT(now, IsOk());
  EXPECT_EQ(now->state(), v1::RUNNING);
  EXPECT_TRUE(now->result().empty());
  EXPECT_FALSE(answered.load());
  EXPECT_TRUE(scheduler.store_failing());

  // Tried again until it is durable, then announced.
  ASSERT_TRUE(finished.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_EQ(store.fail_finishes.load(), 0);
  EXPECT_EQ(seen.state(), v1::SUCCEEDED);
  EXPECT_EQ(seen.result(), "hello");
  EXPECT_FALSE(scheduler.store_failing());
  scheduler.Shutdown(absl::Seconds(1));
}

TEST(SchedulerTest, RevokedAssignmentRunsAgainWithoutUsingAnAttempt) {
  std::unique_ptr<Store> store = NewMemoryStore();
  ASSERT_NE(store, nullptr);
  EchoPool pool;
  pool.revoke_next = 3;
  Metrics metrics;
  Scheduler scheduler(SchedulerOptions(), *store, pool, metrics);
  ASSERT_THAT(scheduler.Start(), IsOk());
  const std::string id = SubmitEcho(scheduler, "again");
  const v1::Task seen = AwaitTask(scheduler, id);
  EXPECT_EQ(seen.state(), v1::SUCCEEDED);
  EXPECT_EQ(seen.result(), "again");
  EXPECT_EQ(seen.attempt(), 1);  // three give-backs, one real attempt
  EXPECT_EQ(pool.revoke_next.load(), 0);
  scheduler.Shutdown(absl::Seconds(1));
}

// A work source whose claims block until released, and return the tasks
// it was given (marked with a label, as the store does not have it).
class BlockingWorkSource : public WorkSource {
 public:
  absl::Status StartCluster(Callbacks cb, std::vector<std::string>) override {
    MutexLock lock(&mu_);
    cb_ = std::move(cb);
    return absl::OkStatus();
  }
  void StopCluster() override {}
  absl::StatusOr<std::vector<v1::Task>> Claim(int) override {
    MutexLock lock(&mu_);
    in_claim_ = true;
    cv_.SignalAll();
    while (!released_) cv_.Wait(&mu_);
    std::vector<v1::Task> out = std::move(give_);
    give_.clear();
    return out;
  }
  absl::StatusOr<Ended> ReadEnded(const std::vector<std::string>&) override {
    return Ended();
  }
  std::vector<bool> InsertOwned(
      std::vector<v1::Task> tasks, std::vector<bool>,
      std::function<void(absl::StatusOr<std::vector<v1::Task>>)> done)
      override {
    done(absl::UnimplementedError("not in this test"));
    return std::vector<bool>(tasks.size(), false);
  }
  absl::StatusOr<CancelResult> CancelTask(const std::string&) override {
    return absl::UnimplementedError("not in this test");
  }
  void SetWatched(const std::string&, bool) override {}
  bool Watched(const v1::Task&) override { return false; }
  void PublishEvent(const v1::TaskEvent&) override {}
  const std::string& node_id() const override { return node_id_; }
  int64_t incarnation() const override { return 1; }

  // Asks the scheduler to claim; the claim returns `tasks` once Release()d.
  void Offer(std::vector<v1::Task> tasks) {
    Callbacks cb;
    {
      MutexLock lock(&mu_);
      give_ = std::move(tasks);
      cb = cb_;
    }
    cb.wake();
  }
  void AwaitClaim() {
    MutexLock lock(&mu_);
    while (!in_claim_) cv_.Wait(&mu_);
  }
  void Release() {
    MutexLock lock(&mu_);
    released_ = true;
    cv_.SignalAll();
  }

 private:
  const std::string node_id_ = "n";
  Mutex mu_;
  CondVar cv_;
  Callbacks cb_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::Task> give_ ABSL_GUARDED_BY(mu_);
  bool in_claim_ ABSL_GUARDED_BY(mu_) = false;
  bool released_ ABSL_GUARDED_BY(mu_) = false;
};

// Cluster mode: a claim that returns after the node was drained gives its
// tasks back to the shared queue instead of holding them unrun.
TEST(SchedulerTest, ClaimReturningAfterDrainIsGivenBack) {
  std::unique_ptr<Store> store = NewMemoryStore();
  ASSERT_NE(store, nullptr);
  v1::Task t;
  t.set_id("t1");
  t.set_queue("default");
  t.set_kind("echo");
  t.set_state(v1::QUEUED);
  t.set_max_attempts(5);
  Notification inserted;
  store->Insert({t}, [&](const absl::StatusOr<std::vector<InsertResult>>& r) {
    EXPECT_TRUE(r.ok());
    inserted.Notify();
  });
  inserted.WaitForNotification();

  EchoPool pool;
  Metrics metrics;
  BlockingWorkSource source;
  SchedulerOptions o;
  o.work_source = &source;
  Scheduler scheduler(o, *store, pool, metrics);
  ASSERT_THAT(scheduler.Start(), IsOk());
  v1::Task claimed = t;
  claimed.set_state(v1::RUNNING);
  claimed.set_attempt(1);
  (*claimed.mutable_labels())["claimed"] = "yes";
  source.Offer({claimed});
  source.AwaitClaim();
  scheduler.SetDraining(true);
  source.Release();

  // Given back: the scheduler's copy (with the label) is written QUEUED at
  // the attempt before the claimed one.
  const absl::Time until = absl::Now() + absl::Seconds(10);
  absl::StatusOr<v1::Task> stored = store->Get("t1");
  while (stored.ok() && stored->labels().count("claimed") == 0 &&
         absl::Now() < until) {
    absl::SleepFor(absl::Milliseconds(5));  // poll interval
    stored = store->Get("t1");
  }
  ASSERT_THAT(stored, IsOk());
  EXPECT_EQ(stored->labels().count("claimed"), 1u);
  EXPECT_EQ(stored->state(), v1::QUEUED);
  EXPECT_EQ(stored->attempt(), 0);
  EXPECT_EQ(scheduler.running(), 0);
  scheduler.Shutdown(absl::Seconds(1));
}

// Cluster mode: an outcome committed but not yet acknowledged to this
// node is already visible to other nodes' Waits; Get, List and a Wait
// without a timeout here answer it too, not the running state it had.
TEST(SchedulerTest, ClusterReadsShowAnEndCommittedBeforeItsAcknowledgement) {
  FailingFinishStore store(NewMemoryStore());
  store.hold_finish_acks = true;
  EchoPool pool;
  Metrics metrics;
  BlockingWorkSource source;
  SchedulerOptions o;
  o.work_source = &source;
  Scheduler scheduler(o, store, pool, metrics);
  ASSERT_THAT(scheduler.Start(), IsOk());
  v1::Task t;
  t.set_id("t1");
  t.set_queue("default");
  t.set_kind("echo");
  t.set_payload("done");
  t.set_state(v1::RUNNING);
  t.set_attempt(1);
  t.set_max_attempts(5);
  Notification inserted;
  store.Insert({t}, [&](const absl::StatusOr<std::vector<InsertResult>>& r) {
    EXPECT_TRUE(r.ok());
    inserted.Notify();
  });
  inserted.WaitForNotification();
  source.Release();
  source.Offer({t});
  ASSERT_TRUE(
      store.finish_ack_held.WaitForNotificationWithTimeout(absl::Seconds(10)));

  absl::StatusOr<v1::Task> got = scheduler.Get("t1");
  ASSERT_THAT(got, IsOk());
  EXPECT_EQ(got->state(), v1::SUCCEEDED);
  EXPECT_EQ(got->result(), "done");
  absl::StatusOr<ListPage> listed = scheduler.List(ListQuery());
  ASSERT_THAT(listed, IsOk());
  ASSERT_EQ(listed->tasks.size(), 1u);
  EXPECT_EQ(listed->tasks[0].state(), v1::SUCCEEDED);
  bool terminal = false;
  scheduler.Wait("t1", absl::ZeroDuration(),
                 [&](absl::StatusOr<v1::Task> t, bool term) {
                   ASSERT_TRUE(t.ok());
                   EXPECT_EQ(t->state(), v1::SUCCEEDED);
                   terminal = term;
                 });
  EXPECT_TRUE(terminal);  // answered at once
  store.ReleaseFinishAcks();
  got = scheduler.Get("t1");
  ASSERT_THAT(got, IsOk());
  EXPECT_EQ(got->state(), v1::SUCCEEDED);
  scheduler.Shutdown(absl::Seconds(1));
}

TEST(SchedulerTest, RecentlyFinishedTasksAreAnsweredFromMemory) {
  FailingFinishStore store(NewMemoryStore());
  EchoPool pool;
  Metrics metrics;
  Scheduler scheduler(SchedulerOptions(), store, pool, metrics);
  ASSERT_THAT(scheduler.Start(), IsOk());
  const std::string id = SubmitEcho(scheduler, "kept");
  AwaitTask(scheduler, id);
  // Store reads fail from now on: answers come from the scheduler's memory
  // of recently finished tasks.
  store.fail_reads = true;
  absl::StatusOr<v1::Task> t = scheduler.Get(id);
  ASSERT_THAT(t, IsOk());
  EXPECT_EQ(t->result(), "kept");
  bool terminal = false;
  scheduler.Wait(id, absl::Minutes(1),
                 [&](const absl::StatusOr<v1::Task>& w, bool term) {
                   EXPECT_TRUE(w.ok());
                   terminal = term;
                 });
  EXPECT_TRUE(terminal);  // answered at once, from memory
  scheduler.Shutdown(absl::Seconds(1));
}

// The memory of finished tasks is bounded in bytes too: large results push
// the oldest out, and those are read from the store.
TEST(SchedulerTest, RecentlyFinishedMemoryIsBoundedInBytes) {
  SchedulerOptions options;
  options.recent_finished_bytes = 10'000;  // ~2 of the tasks below
  EchoScheduler s(options);
  FailingFinishStore& store = s.store;
  Scheduler& scheduler = s.scheduler;
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) {
    ids.push_back(SubmitEcho(scheduler, std::string(2000, 'a' + i)));
    AwaitTask(scheduler, ids.back());
  }
  store.fail_reads = true;
  EXPECT_THAT(scheduler.Get(ids.back()), IsOk());  // kept in memory
  EXPECT_FALSE(scheduler.Get(ids.front()).ok());   // dropped: a store read
  scheduler.Shutdown(absl::Seconds(1));
}

// A task that finishes again (retried) is remembered with its new result;
// its older copy leaving the memory first does not take the new one along.
TEST(SchedulerTest, RetriedTaskIsRememberedWithItsNewResult) {
  SchedulerOptions options;
  options.recent_finished = 2;
  ManualScheduler m(options);
  m.pool.AddRoom(1);
  const std::string id = SubmitEcho(m.scheduler, "x");
  ASSERT_EQ(m.pool.assigned().size(), 1u);
  m.pool.Finish(m.pool.assigned()[0], worker::OutcomeKind::kHandlerError,
                absl::InvalidArgumentError("bad input"));
  ASSERT_EQ(AwaitTask(m.scheduler, id).state(), v1::FAILED);
  Notification retried;
  m.scheduler.Retry(id, [&](const absl::StatusOr<v1::Task>& t) {
    EXPECT_THAT(t, IsOk());
    retried.Notify();
  });
  retried.WaitForNotification();
  m.pool.AddRoom(1);
  ASSERT_EQ(m.pool.assigned().size(), 2u);
  m.pool.Finish(m.pool.assigned()[1], worker::OutcomeKind::kSucceeded,
                absl::OkStatus(), "second");
  ASSERT_EQ(AwaitTask(m.scheduler, id).state(), v1::SUCCEEDED);
  // A third finished task pushes the first copy out.
  m.pool.AddRoom(1);
  const std::string other = SubmitEcho(m.scheduler, "y");
  ASSERT_EQ(m.pool.assigned().size(), 3u);
  m.pool.Finish(m.pool.assigned()[2], worker::OutcomeKind::kSucceeded,
                absl::OkStatus(), "y");
  ASSERT_EQ(AwaitTask(m.scheduler, other).state(), v1::SUCCEEDED);
  m.store.fail_reads = true;
  absl::StatusOr<v1::Task> t = m.scheduler.Get(id);
  ASSERT_THAT(t, IsOk());  // from memory
  EXPECT_EQ(t->result(), "second");
  EXPECT_THAT(m.scheduler.Get(other), IsOk());
  m.scheduler.Shutdown(absl::ZeroDuration());
}

// The attempt-end handler (which drops what a task's Manager calls left
// parked) hears of the attempts that called, not of every attempt.
TEST(SchedulerTest, AttemptEndIsReportedOnlyForAttemptsThatCalled) {
  ManualScheduler m;
  std::vector<std::string> calls, ended;
  m.scheduler.SetCallHandler(
      [&](absl::string_view id, const std::string&,
          std::function<void(absl::StatusOr<std::string>)> reply) {
        calls.emplace_back(id);
        reply(std::string("ok"));
      });
  m.scheduler.SetAttemptEndHandler(
      [&](absl::string_view id) { ended.emplace_back(id); });
  const std::string quiet = SubmitEcho(m.scheduler, "a");
  const std::string caller = SubmitEcho(m.scheduler, "b");
  m.pool.AddRoom(2);
  ASSERT_EQ(m.pool.assigned().size(), 2u);
  for (const worker::Assignment& a : m.pool.assigned()) {
    if (a.task_id == caller) m.pool.Call(a, "lock");
    m.pool.Finish(a, worker::OutcomeKind::kSucceeded);
  }
  EXPECT_THAT(calls, ::testing::ElementsAre(caller));
  EXPECT_THAT(ended, ::testing::ElementsAre(caller));
  m.scheduler.Shutdown(absl::ZeroDuration());
}

TEST(SchedulerTest, TaskWhoseInsertFailsIsDroppedEvenIfItStarted) {
  ManualScheduler m;
  FailingFinishStore& store = m.store;
  ManualPool& pool = m.pool;
  Scheduler& scheduler = m.scheduler;
  pool.AddRoom(1);
  store.refuse_inserts = true;
  v1::TaskSpec spec;
  spec.set_kind("echo");
  absl::Status submitted;
  // The refusal comes back inside Submit: it must not deadlock.
  scheduler.Submit({spec},
                   [&](const absl::StatusOr<std::vector<InsertResult>>& r) {
                     submitted = r.status();
                   });
  EXPECT_THAT(submitted,
              ::forq::testing::StatusIs(absl::StatusCode::kUnavailable));
  // Dispatched while its insert was pending; it must leave no trace.
  ASSERT_EQ(pool.assigned().size(), 1u);
  const std::string id = pool.assigned()[0].task_id;
  scheduler.Poke();
  pool.Finish(pool.assigned()[0], worker::OutcomeKind::kSucceeded);
  EXPECT_THAT(scheduler.Get(id).status(),
              ::forq::testing::StatusIs(absl::StatusCode::kNotFound));
  scheduler.Shutdown(absl::ZeroDuration());
}

// An abandoned Map's inputs: the queued ones end CANCELLED and never run;
// a running one and an unknown id are left alone.
TEST(SchedulerTest, CancelQueuedCancelsOnlyTasksNotStarted) {
  ManualScheduler m;
  const std::string a = SubmitEcho(m.scheduler, "a");
  const std::string b = SubmitEcho(m.scheduler, "b");
  const std::string c = SubmitEcho(m.scheduler, "c");
  m.pool.AddRoom(1);
  ASSERT_EQ(m.pool.assigned().size(), 1u);
  ASSERT_EQ(m.pool.assigned()[0].task_id, a);
  EXPECT_EQ(m.scheduler.CancelQueued({a, b, c, "0000000000000000000000ff"},
                                     "its Map stream was cancelled"),
            2);
  m.pool.AddRoom(5);
  EXPECT_EQ(m.pool.assigned().size(), 1u);  // b and c never run
  // Its CANCELLED state shows once durable: wait for it.
  Notification ended;
  v1::Task tb;
  m.scheduler.Wait(b, absl::Minutes(1),
                   [&](absl::StatusOr<v1::Task> t, bool terminal) {
                     EXPECT_TRUE(t.ok() && terminal);
                     if (t.ok()) tb = *t;
                     ended.Notify();
                   });
  ASSERT_TRUE(ended.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_EQ(tb.state(), v1::CANCELLED);
  EXPECT_EQ(tb.error().message(), "its Map stream was cancelled");
  absl::StatusOr<v1::Task> ta = m.scheduler.Get(a);
  ASSERT_THAT(ta, IsOk());
  EXPECT_EQ(ta->state(), v1::RUNNING);
  m.scheduler.Shutdown(absl::ZeroDuration());
}

// By default the RUNNING record of an attempt that starts at once (an idle
// worker) is queued at dispatch, so a crash of forqd counts it.
TEST(SchedulerTest, RunningIsRecordedAtDispatchByDefault) {
  ManualScheduler m;
  m.pool.AddRoom(1);
  SubmitEcho(m.scheduler, "x");
  ASSERT_EQ(m.pool.assigned().size(), 1u);
  EXPECT_EQ(m.store.updated_rows.load(), 1);
  m.scheduler.Shutdown(absl::ZeroDuration());
}

// The task as the store has it, once RUNNING there (the write is queued
// before the call returns; its commit is the store's).
absl::StatusOr<v1::Task> AwaitStoredRunning(Store& store,
                                            const std::string& id) {
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  absl::StatusOr<v1::Task> stored = store.Get(id);
  while (absl::Now() < deadline &&
         !(stored.ok() && stored->state() == v1::RUNNING)) {
    absl::SleepFor(absl::Milliseconds(5));  // polling the store, not timing
    stored = store.Get(id);
  }
  return stored;
}

// An attempt sent behind a running one in its worker's queue has not
// started: its RUNNING record is written when it starts (the outcome of the
// attempt before it names it), with that turn's terminal records; not at
// all when it also ends in that turn, or when the pool gives it back.
TEST(SchedulerTest, RunningIsRecordedWhenAQueuedAttemptStarts) {
  ManualScheduler m;
  FailingFinishStore& store = m.store;
  ManualPool& pool = m.pool;
  pool.AddRoom(6);
  SubmitEcho(m.scheduler, "first");
  EXPECT_EQ(store.updated_rows.load(), 1);  // started at once
  pool.QueueNext(5);
  const std::string second = SubmitEcho(m.scheduler, "second");
  SubmitEcho(m.scheduler, "third");
  SubmitEcho(m.scheduler, "fourth");
  SubmitEcho(m.scheduler, "fifth");
  ASSERT_EQ(pool.assigned().size(), 5u);
  EXPECT_EQ(store.updated_rows.load(), 1);  // the queued ones wait
  const std::vector<worker::Assignment> a = pool.assigned();
  worker::Outcome first_done =
      ManualPool::OutcomeOf(a[0], worker::OutcomeKind::kSucceeded);
  first_done.next_task_id = second;
  first_done.next_attempt = 1;
  pool.Report({std::move(first_done)});
  // first's terminal record and second's RUNNING record.
  EXPECT_EQ(store.updated_rows.load(), 3);
  absl::StatusOr<v1::Task> stored = AwaitStoredRunning(store, second);
  ASSERT_THAT(stored, IsOk());
  EXPECT_EQ(stored->state(), v1::RUNNING);
  EXPECT_EQ(stored->attempt(), 1);
  // second ends and third starts and ends in one turn: two terminal
  // records, no RUNNING record for third.
  worker::Outcome second_done =
      ManualPool::OutcomeOf(a[1], worker::OutcomeKind::kSucceeded);
  second_done.next_task_id = a[2].task_id;
  second_done.next_attempt = a[2].attempt;
  pool.Report({std::move(second_done),
               ManualPool::OutcomeOf(a[2], worker::OutcomeKind::kSucceeded)});
  EXPECT_EQ(store.updated_rows.load(), 5);
  // Given back unstarted: nothing was written, nothing to undo.
  pool.Finish(a[3], worker::OutcomeKind::kRevoked);
  EXPECT_EQ(store.updated_rows.load(), 5);
  // A start the scheduler does not know of (a stale attempt) writes nothing.
  worker::Outcome stale =
      ManualPool::OutcomeOf(a[4], worker::OutcomeKind::kSucceeded);
  stale.next_task_id = a[4].task_id;
  stale.next_attempt = a[4].attempt + 1;
  stale.task_id = "unknown";
  pool.Report({std::move(stale)});
  EXPECT_EQ(store.updated_rows.load(), 5);
  m.scheduler.Shutdown(absl::ZeroDuration());
}

// An attempt's RUNNING record waits for running_write_delay: a short
// attempt's terminal write is its only update; one still running then is
// recorded RUNNING, so a crash of forqd counts it.
TEST(SchedulerTest, RunningIsRecordedOnlyForAnAttemptThatOutlivesTheDelay) {
  SchedulerOptions options;
  options.running_write_delay = absl::Milliseconds(100);
  ManualScheduler m(options);
  FailingFinishStore& store = m.store;
  ManualPool& pool = m.pool;
  FakeClock& clock = m.clock;
  Scheduler& scheduler = m.scheduler;
  pool.AddRoom(2);
  const std::string quick = SubmitEcho(scheduler, "quick");
  const std::string slow = SubmitEcho(scheduler, "slow");
  ASSERT_EQ(pool.assigned().size(), 2u);
  ASSERT_EQ(pool.assigned()[0].task_id, quick);
  scheduler.Poke();
  EXPECT_EQ(store.updated_rows.load(), 0);
  pool.Finish(pool.assigned()[0], worker::OutcomeKind::kSucceeded,
              absl::OkStatus(), "quick");
  EXPECT_EQ(store.updated_rows.load(), 1);  // quick's terminal record
  clock.Advance(absl::Milliseconds(99));
  scheduler.Poke();
  EXPECT_EQ(store.updated_rows.load(), 1);
  clock.Advance(absl::Milliseconds(1));
  scheduler.Poke();
  EXPECT_EQ(store.updated_rows.load(), 2);  // slow's RUNNING record
  absl::StatusOr<v1::Task> stored = AwaitStoredRunning(store, slow);
  ASSERT_THAT(stored, IsOk());
  EXPECT_EQ(stored->state(), v1::RUNNING);
  EXPECT_EQ(stored->attempt(), 1);
  // Written once: later turns do not write it again.
  clock.Advance(absl::Seconds(1));
  scheduler.Poke();
  EXPECT_EQ(store.updated_rows.load(), 2);
  scheduler.Shutdown(absl::ZeroDuration());
}

TEST(NewTaskIdTest, TwentyFourHexDigitsInCreationOrder) {
  std::string prev;
  for (int i = 0; i < 1000; ++i) {
    const std::string id = NewTaskId();
    ASSERT_EQ(id.size(), 24u) << id;
    EXPECT_EQ(id.find_first_not_of("0123456789abcdef"), std::string::npos)
        << id;
    EXPECT_LT(prev, id);
    prev = id;
  }
  // The first 12 digits are the Unix time in milliseconds.
  const int64_t ms = std::stoll(prev.substr(0, 12), nullptr, 16);
  EXPECT_LE(std::abs(ms - absl::ToUnixMillis(absl::Now())), 60'000);
}

}  // namespace
}  // namespace forq::server
