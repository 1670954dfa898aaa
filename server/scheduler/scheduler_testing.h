// Test doubles for the scheduler's unit tests: pools that run tasks on a
// thread of the test (no fork) and a store wrapper that fails or holds
// writes on demand.
#ifndef FORQ_SERVER_SCHEDULER_SCHEDULER_TESTING_H_
#define FORQ_SERVER_SCHEDULER_SCHEDULER_TESTING_H_

#include <atomic>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "gtest/gtest.h"

#include "common/clock.h"
#include "common/mutex.h"
#include "common/notification.h"
#include "server/scheduler/scheduler.h"
#include "server/scheduler/task_proto.h"
#include "tests/testing/status_matchers.h"

namespace forq::server {

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

// A fresh in-memory store (fails the test if it cannot be opened).
inline std::unique_ptr<Store> NewMemoryStore() {
  StoreOptions so;
  so.kind = "memory";
  absl::StatusOr<std::unique_ptr<Store>> store = OpenStore(so);
  EXPECT_THAT(store, ::forq::testing::IsOk());
  return store.ok() ? std::move(*store) : nullptr;
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
  Notification failed;

  // Makes every Insert fail at once, on the caller's thread, as a closed
  // store does.
  std::atomic<bool> refuse_inserts{false};

  // Rows written by Insert and Update calls that reached the inner store.
  std::atomic<int> inserted_rows{0};
  std::atomic<int> updated_rows{0};

  void Insert(std::vector<v1::Task> tasks, InsertDone done) override {
    inserted_rows += static_cast<int>(tasks.size());
    if (refuse_inserts) {
      done(absl::UnavailableError("store closed"));
      return;
    }
    inner_->Insert(std::move(tasks), std::move(done));
  }
  // While set, terminal Updates are held (not written) until
  // ReleaseFinishes().
  std::atomic<bool> hold_finishes{false};
  void ReleaseFinishes() {
    std::vector<std::pair<std::vector<v1::Task>, WriteDone>> held;
    {
      MutexLock lock(&held_mu_);
      held.swap(held_);
    }
    for (auto& [tasks, done] : held) {
      inner_->Update(std::move(tasks), std::move(done));
    }
  }

  // While set, terminal Updates are written at once but their callbacks
  // are held until ReleaseFinishAcks(): committed, not yet acknowledged.
  std::atomic<bool> hold_finish_acks{false};
  Notification finish_ack_held;
  void ReleaseFinishAcks() {
    std::vector<std::pair<WriteDone, absl::Status>> held;
    {
      MutexLock lock(&held_mu_);
      held.swap(held_acks_);
    }
    for (auto& [done, status] : held) done(status);
  }

  void Update(std::vector<v1::Task> tasks, WriteDone done) override {
    const bool terminal = !tasks.empty() && IsTerminal(tasks.front().state());
    if (terminal && hold_finish_acks) {
      inner_->Update(std::move(tasks), [this, done = std::move(done)](
                                           absl::Status status) mutable {
        {
          MutexLock lock(&held_mu_);
          held_acks_.emplace_back(std::move(done), std::move(status));
        }
        if (!finish_ack_held.HasBeenNotified()) finish_ack_held.Notify();
      });
      return;
    }
    if (terminal && hold_finishes) {
      MutexLock lock(&held_mu_);
      held_.emplace_back(std::move(tasks), std::move(done));
      return;
    }
    if (terminal && fail_finishes > 0) {
      --fail_finishes;
      done(absl::ResourceExhaustedError("disk full"));
      if (!failed.HasBeenNotified()) failed.Notify();
      return;
    }
    updated_rows += static_cast<int>(tasks.size());
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
  void WriteObjects(std::vector<ObjectWrite> writes, WriteDone done) override {
    inner_->WriteObjects(std::move(writes), std::move(done));
  }
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> LoadObjects()
      override {
    return inner_->LoadObjects();
  }
  void Close() override { inner_->Close(); }

 private:
  std::unique_ptr<Store> inner_;
  Mutex held_mu_;
  std::vector<std::pair<std::vector<v1::Task>, WriteDone>> held_
      ABSL_GUARDED_BY(held_mu_);
  std::vector<std::pair<WriteDone, absl::Status>> held_acks_
      ABSL_GUARDED_BY(held_mu_);
};

inline std::string SubmitEcho(Scheduler& scheduler, absl::string_view payload) {
  v1::TaskSpec spec;
  spec.set_kind("echo");
  spec.set_payload(std::string(payload));
  Notification submitted;
  std::string id;
  scheduler.Submit({spec}, [&](absl::StatusOr<std::vector<InsertResult>> r) {
    EXPECT_TRUE(r.ok()) << r.status();
    if (r.ok()) id = (*r)[0].task.id();
    submitted.Notify();
  });
  submitted.WaitForNotification();
  return id;
}

// Task `id` once a Wait on it answers (the test fails unless it is terminal
// within 30 s).
inline v1::Task AwaitTask(Scheduler& scheduler, const std::string& id) {
  struct Answer {
    Notification done;
    v1::Task task;
  };
  // Shared with the callback, which may outlive this call on a timeout.
  auto answer = std::make_shared<Answer>();
  scheduler.Wait(id, absl::Minutes(1),
                 [answer](absl::StatusOr<v1::Task> t, bool terminal) {
                   EXPECT_TRUE(t.ok() && terminal) << t.status();
                   if (t.ok()) answer->task = std::move(*t);
                   answer->done.Notify();
                 });
  EXPECT_TRUE(answer->done.WaitForNotificationWithTimeout(absl::Seconds(30)));
  return answer->done.HasBeenNotified() ? answer->task : v1::Task();
}

// A started scheduler over an EchoPool and an in-memory store wrapped in
// FailingFinishStore (for its row counters).
struct EchoScheduler {
  explicit EchoScheduler(SchedulerOptions options)
      : store(NewMemoryStore()), scheduler(options, store, pool, metrics) {
    EXPECT_THAT(scheduler.Start(), ::forq::testing::IsOk());
  }
  FailingFinishStore store;
  EchoPool pool;
  Metrics metrics;
  Scheduler scheduler;
};

// A pool the test drives: it takes assignments while it has room and
// reports the outcomes the test chooses, on the test's thread.
class ManualPool : public worker::WorkerPool {
 public:
  absl::Status Start(worker::PoolCallbacks cb) override {
    cb_ = std::move(cb);
    return absl::OkStatus();
  }
  absl::Status Dispatch(worker::Assignment a) override {
    MutexLock lock(&mu_);
    if (room_ <= 0) {
      ++refused_;
      return absl::ResourceExhaustedError("no room");
    }
    --room_;
    assigned_.push_back(std::move(a));
    return absl::OkStatus();
  }
  int IdleCount() override {
    MutexLock lock(&mu_);
    return room_;
  }
  int Room() override {
    MutexLock lock(&mu_);
    return room_ + overstated_room_;
  }
  size_t DispatchMany(std::vector<worker::Assignment>& batch) override {
    size_t n = 0;
    for (; n < batch.size(); ++n) {
      if (!Dispatch(batch[n]).ok()) break;
      MutexLock lock(&mu_);
      batch[n].queued = queue_next_ > 0;
      if (queue_next_ > 0) --queue_next_;
    }
    return n;
  }
  void Cancel(absl::string_view id, int) override {
    MutexLock lock(&mu_);
    cancels_.emplace_back(id);
  }
  std::vector<worker::WorkerInfo> Workers() override { return {}; }
  int size() const override { return 1; }
  int supervisor_pid() const override { return 0; }
  std::vector<std::string> Kinds() const override { return {"echo"}; }
  void Shutdown() override {}

  // Room() reports `n` more than Dispatch takes, as a pool whose rings
  // fill does: the scheduler's batches are refused partway.
  void OverstateRoom(int n) {
    MutexLock lock(&mu_);
    overstated_room_ = n;
  }
  // The next `n` assignments sent wait behind a running attempt, as in a
  // worker's queue (Assignment::queued).
  void QueueNext(int n) {
    MutexLock lock(&mu_);
    queue_next_ = n;
  }
  // Dispatches refused so far.
  int refused() {
    MutexLock lock(&mu_);
    return refused_;
  }
  // Makes room for `n` more assignments and says a worker is idle.
  void AddRoom(int n) {
    {
      MutexLock lock(&mu_);
      room_ += n;
    }
    cb_.on_worker_idle();
  }
  // Assignments taken so far, oldest first.
  std::vector<worker::Assignment> assigned() {
    MutexLock lock(&mu_);
    return assigned_;
  }
  std::vector<std::string> cancels() {
    MutexLock lock(&mu_);
    return cancels_;
  }
  // A call of attempt `a` to forqd (the Manager side channel); its reply
  // is dropped.
  void Call(const worker::Assignment& a, std::string request) {
    cb_.on_call(a.task_id, std::move(request),
                [](const absl::StatusOr<std::string>&) {});
  }
  // How attempt `a` ended.
  static worker::Outcome OutcomeOf(const worker::Assignment& a,
                                   worker::OutcomeKind kind,
                                   absl::Status status = absl::OkStatus(),
                                   std::string result = "") {
    worker::Outcome o;
    o.task_id = a.task_id;
    o.attempt = a.attempt;
    o.worker_pid = 42;
    o.kind = kind;
    o.status = std::move(status);
    o.result = std::move(result);
    return o;
  }
  // Reports how attempt `a` ended, as the pool's event loop would.
  void Finish(const worker::Assignment& a, worker::OutcomeKind kind,
              absl::Status status = absl::OkStatus(), std::string result = "") {
    Report({OutcomeOf(a, kind, std::move(status), std::move(result))});
  }
  // Reports `outcomes` in one event-loop turn.
  void Report(std::vector<worker::Outcome> outcomes) {
    for (worker::Outcome& o : outcomes) cb_.on_outcome(std::move(o));
    cb_.on_turn_end();
  }

 private:
  worker::PoolCallbacks cb_;
  Mutex mu_;
  int room_ ABSL_GUARDED_BY(mu_) = 0;
  int overstated_room_ ABSL_GUARDED_BY(mu_) = 0;
  int refused_ ABSL_GUARDED_BY(mu_) = 0;
  int queue_next_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<worker::Assignment> assigned_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> cancels_ ABSL_GUARDED_BY(mu_);
};

// A started scheduler over a ManualPool, a FakeClock and a memory store
// wrapped in FailingFinishStore (for its row counters).
struct ManualScheduler {
  explicit ManualScheduler(SchedulerOptions options = {})
      : store(NewMemoryStore()),
        scheduler(WithClock(options, &clock), store, pool, metrics) {
    EXPECT_THAT(scheduler.Start(), ::forq::testing::IsOk());
  }
  static SchedulerOptions WithClock(SchedulerOptions o, FakeClock* clock) {
    o.clock = clock;
    return o;
  }
  FailingFinishStore store;
  ManualPool pool;
  Metrics metrics;
  FakeClock clock;
  Scheduler scheduler;
};

}  // namespace forq::server

#endif  // FORQ_SERVER_SCHEDULER_SCHEDULER_TESTING_H_
