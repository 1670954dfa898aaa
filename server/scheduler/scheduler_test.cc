#include "server/scheduler/scheduler.h"

#include <atomic>
#include <deque>
#include <thread>

#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include "common/mutex.h"
#include "tests/testing/status_matchers.h"

namespace forq::server {
namespace {

using ::forq::testing::IsOk;

// A pool that runs every assignment at once on its own thread and echoes the
// payload, so the scheduler can be tested without forking.
class EchoPool : public worker::WorkerPool {
 public:
  ~EchoPool() override { Shutdown(); }
  absl::Status Start(worker::PoolCallbacks cb) override {
    cb_ = std::move(cb);
    thread_ = std::thread([this] { Run(); });
    return absl::OkStatus();
  }
  absl::Status Dispatch(worker::Assignment a) override {
    MutexLock lock(&mu_);
    if (stop_) return absl::UnavailableError("stopped");
    queue_.push_back(std::move(a));
    cv_.Signal();
    return absl::OkStatus();
  }
  int IdleCount() override { return 2; }
  void Cancel(absl::string_view, int) override {}
  std::vector<worker::WorkerInfo> Workers() override { return {}; }
  int size() const override { return 2; }
  int supervisor_pid() const override { return 0; }
  std::vector<std::string> Kinds() const override { return {"echo"}; }
  // The next this-many assignments are given back unrun (kRevoked).
  std::atomic<int> revoke_next{0};

  void Shutdown() override {
    {
      MutexLock lock(&mu_);
      stop_ = true;
      cv_.SignalAll();
    }
    if (thread_.joinable()) thread_.join();
  }

 private:
  void Run() {
    while (true) {
      worker::Assignment a;
      {
        MutexLock lock(&mu_);
        while (!stop_ && queue_.empty()) cv_.Wait(&mu_);
        if (stop_) return;
        a = std::move(queue_.front());
        queue_.pop_front();
      }
      worker::Outcome o;
      o.task_id = a.task_id;
      o.attempt = a.attempt;
      o.worker_pid = 1;
      o.kind = worker::OutcomeKind::kSucceeded;
      o.result = a.payload;
      if (revoke_next > 0) {
        --revoke_next;
        o.kind = worker::OutcomeKind::kRevoked;
        o.result.clear();
      }
      cb_.on_outcome(std::move(o));
      cb_.on_worker_idle();
    }
  }

  worker::PoolCallbacks cb_;
  std::thread thread_;
  Mutex mu_;
  CondVar cv_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::deque<worker::Assignment> queue_ ABSL_GUARDED_BY(mu_);
};

TEST(SchedulerTest, FinishedWaitsLeaveNoTimeoutsBehind) {
  StoreOptions so;
  so.kind = "memory";
  auto store = OpenStore(so);
  ASSERT_THAT(store, IsOk());
  EchoPool pool;
  Metrics metrics;
  Scheduler scheduler(SchedulerOptions(), **store, pool, metrics);
  ASSERT_THAT(scheduler.Start(), IsOk());

  constexpr int kTasks = 500;
  std::atomic<int> done{0};
  absl::Notification all_done;
  for (int i = 0; i < kTasks; ++i) {
    v1::TaskSpec spec;
    spec.set_kind("echo");
    spec.set_payload("x");
    scheduler.Submit({spec}, [&](absl::StatusOr<std::vector<InsertResult>> r) {
      ASSERT_TRUE(r.ok()) << r.status();
      scheduler.Wait((*r)[0].task.id(), absl::Minutes(5),
                     [&](absl::StatusOr<v1::Task> t, bool terminal) {
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
  StoreOptions so;
  so.kind = "memory";
  auto store = OpenStore(so);
  ASSERT_THAT(store, IsOk());
  EchoPool pool;
  Metrics metrics;
  Scheduler scheduler(SchedulerOptions(), **store, pool, metrics);
  ASSERT_THAT(scheduler.Start(), IsOk());
  v1::TaskSpec spec;
  spec.set_kind("echo");
  *spec.mutable_delay() = google::protobuf::Duration();
  spec.mutable_delay()->set_seconds(3600);
  absl::Notification submitted;
  std::string id;
  scheduler.Submit({spec}, [&](absl::StatusOr<std::vector<InsertResult>> r) {
    ASSERT_TRUE(r.ok());
    id = (*r)[0].task.id();
    submitted.Notify();
  });
  submitted.WaitForNotification();
  uint64_t h =
      scheduler.Wait(id, absl::Minutes(5), [](absl::StatusOr<v1::Task>, bool) {
        ADD_FAILURE() << "cancelled wait fired";
      });
  EXPECT_EQ(scheduler.pending_wait_timeouts(), 1u);
  EXPECT_TRUE(scheduler.CancelWait(h));
  EXPECT_EQ(scheduler.pending_waits(), 0u);
  EXPECT_EQ(scheduler.pending_wait_timeouts(), 0u);
  scheduler.Shutdown(absl::Seconds(1));
}

// A store whose next `fail_finishes` writes of terminal tasks fail, as on a
// full disk; everything else goes to an in-memory store.
class FailingFinishStore : public Store {
 public:
  explicit FailingFinishStore(std::unique_ptr<Store> inner)
      : inner_(std::move(inner)) {}
  std::atomic<int> fail_finishes{0};
  // Makes every Get fail, as if the store could not be read.
  std::atomic<bool> fail_reads{false};
  absl::Notification failed;

  void Insert(std::vector<v1::Task> tasks, InsertDone done) override {
    inner_->Insert(std::move(tasks), std::move(done));
  }
  void Update(std::vector<v1::Task> tasks, WriteDone done) override {
    const bool terminal =
        !tasks.empty() && IsTerminalState(tasks.front().state());
    if (terminal && fail_finishes > 0) {
      --fail_finishes;
      done(absl::ResourceExhaustedError("disk full"));
      if (!failed.HasBeenNotified()) failed.Notify();
      return;
    }
    inner_->Update(std::move(tasks), std::move(done));
  }
  absl::StatusOr<v1::Task> Get(absl::string_view id) override {
    if (fail_reads) return absl::UnavailableError("store unreadable");
    return inner_->Get(id);
  }
  absl::StatusOr<ListPage> List(const ListQuery& q) override {
    return inner_->List(q);
  }
  absl::StatusOr<std::vector<v1::Task>> LoadUnfinished() override {
    return inner_->LoadUnfinished();
  }
  absl::StatusOr<int64_t> PurgeExpired(absl::Time now) override {
    return inner_->PurgeExpired(now);
  }
  void PutObject(std::string name, std::string blob, WriteDone done) override {
    inner_->PutObject(std::move(name), std::move(blob), std::move(done));
  }
  void DeleteObject(std::string name, WriteDone done) override {
    inner_->DeleteObject(std::move(name), std::move(done));
  }
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> LoadObjects()
      override {
    return inner_->LoadObjects();
  }
  void Close() override { inner_->Close(); }

 private:
  static bool IsTerminalState(v1::TaskState s) {
    return s == v1::SUCCEEDED || s == v1::FAILED || s == v1::DEAD ||
           s == v1::CANCELLED;
  }
  std::unique_ptr<Store> inner_;
};

std::string SubmitEcho(Scheduler& scheduler, absl::string_view payload) {
  v1::TaskSpec spec;
  spec.set_kind("echo");
  spec.set_payload(std::string(payload));
  absl::Notification submitted;
  std::string id;
  scheduler.Submit({spec}, [&](absl::StatusOr<std::vector<InsertResult>> r) {
    EXPECT_TRUE(r.ok()) << r.status();
    if (r.ok()) id = (*r)[0].task.id();
    submitted.Notify();
  });
  submitted.WaitForNotification();
  return id;
}

TEST(SchedulerTest, FailedTerminalWriteIsNotAnnouncedAndIsRetried) {
  StoreOptions so;
  so.kind = "memory";
  auto inner = OpenStore(so);
  ASSERT_THAT(inner, IsOk());
  FailingFinishStore store(std::move(*inner));
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
  absl::Notification submitted;
  std::string id;
  scheduler.Submit({spec}, [&](absl::StatusOr<std::vector<InsertResult>> r) {
    ASSERT_TRUE(r.ok());
    id = (*r)[0].task.id();
    submitted.Notify();
  });
  submitted.WaitForNotification();
  std::atomic<bool> answered{false};
  absl::Notification finished;
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
  StoreOptions so;
  so.kind = "memory";
  auto store = OpenStore(so);
  ASSERT_THAT(store, IsOk());
  EchoPool pool;
  pool.revoke_next = 3;
  Metrics metrics;
  Scheduler scheduler(SchedulerOptions(), **store, pool, metrics);
  ASSERT_THAT(scheduler.Start(), IsOk());
  const std::string id = SubmitEcho(scheduler, "again");
  absl::Notification finished;
  v1::Task seen;
  scheduler.Wait(id, absl::Minutes(1), [&](absl::StatusOr<v1::Task> t, bool) {
    ASSERT_TRUE(t.ok());
    seen = *t;
    finished.Notify();
  });
  ASSERT_TRUE(finished.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_EQ(seen.state(), v1::SUCCEEDED);
  EXPECT_EQ(seen.result(), "again");
  EXPECT_EQ(seen.attempt(), 1);  // three give-backs, one real attempt
  EXPECT_EQ(pool.revoke_next.load(), 0);
  scheduler.Shutdown(absl::Seconds(1));
}

TEST(SchedulerTest, RecentlyFinishedTasksAreAnsweredFromMemory) {
  StoreOptions so;
  so.kind = "memory";
  auto inner = OpenStore(so);
  ASSERT_THAT(inner, IsOk());
  FailingFinishStore store(std::move(*inner));
  EchoPool pool;
  Metrics metrics;
  Scheduler scheduler(SchedulerOptions(), store, pool, metrics);
  ASSERT_THAT(scheduler.Start(), IsOk());
  const std::string id = SubmitEcho(scheduler, "kept");
  absl::Notification finished;
  scheduler.Wait(id, absl::Minutes(1),
                 [&](absl::StatusOr<v1::Task>, bool) { finished.Notify(); });
  ASSERT_TRUE(finished.WaitForNotificationWithTimeout(absl::Seconds(30)));
  // Store reads fail from now on: answers come from the scheduler's memory
  // of recently finished tasks.
  store.fail_reads = true;
  absl::StatusOr<v1::Task> t = scheduler.Get(id);
  ASSERT_THAT(t, IsOk());
  EXPECT_EQ(t->result(), "kept");
  bool terminal = false;
  scheduler.Wait(id, absl::Minutes(1),
                 [&](absl::StatusOr<v1::Task> w, bool term) {
                   EXPECT_TRUE(w.ok());
                   terminal = term;
                 });
  EXPECT_TRUE(terminal);  // answered at once, from memory
  scheduler.Shutdown(absl::Seconds(1));
}

}  // namespace
}  // namespace forq::server
