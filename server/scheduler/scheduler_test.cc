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

}  // namespace
}  // namespace forq::server
