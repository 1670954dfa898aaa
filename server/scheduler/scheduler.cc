#include "server/scheduler/scheduler.h"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <random>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

#include "common/notification.h"
#include "server/scheduler/task_proto.h"

namespace forq::server {

namespace {

// An attempt's hard timeout: the task's, or none (infinite) when unset.
absl::Duration AttemptTimeout(const v1::Task& t) {
  const absl::Duration timeout = FromProto(t.timeout());
  return timeout > absl::ZeroDuration() ? timeout : absl::InfiniteDuration();
}

// Runs `write` (a store call, given the callback that ends it) and waits
// for its status: for the writes of start-up and shutdown.
absl::Status AwaitWrite(
    const std::function<void(std::function<void(absl::Status)>)>& write) {
  Notification persisted;
  absl::Status status;
  write([&](absl::Status s) {
    status = std::move(s);
    persisted.Notify();
  });
  persisted.WaitForNotification();
  return status;
}

}  // namespace

std::string NewTaskId() {
  static std::atomic<uint32_t> seq{0};
  static const uint32_t salt = std::random_device{}();
  const uint64_t ms = static_cast<uint64_t>(absl::ToUnixMillis(absl::Now()));
  const uint32_t n = seq.fetch_add(1, std::memory_order_relaxed);
  // "%012x%08x%04x" of (ms, n, salted n), written by hand: one per task.
  std::string id(24, '0');
  auto put = [&id](size_t end, size_t digits, uint64_t v) {
    static constexpr char kHex[] = "0123456789abcdef";
    for (size_t i = 0; i < digits; ++i, v >>= 4) id[end - i - 1] = kHex[v & 15];
  };
  put(12, 12, ms);
  put(20, 8, n);
  put(24, 4, salt ^ (n * 2654435761u));
  return id;
}

Scheduler::Scheduler(SchedulerOptions options, Store& store,
                     worker::WorkerPool& pool, Metrics& metrics)
    : options_(options),
      clock_(options_.clock != nullptr ? *options_.clock : Clock::Real()),
      store_(store),
      pool_(pool),
      metrics_(metrics),
      work_source_(options_.work_source) {}

Scheduler::~Scheduler() {
  Shutdown(absl::ZeroDuration());
  // The callbacks of writes queued before now call into this object: wait
  // until the store delivered them (an empty write is a barrier behind
  // every earlier one; a closed store answers it at once).
  auto flushed = std::make_shared<Notification>();
  store_.Update({}, [flushed](absl::Status) { flushed->Notify(); });
  flushed->WaitForNotification();
}

void Scheduler::SetCallHandler(
    std::function<void(absl::string_view, std::string,
                       std::function<void(absl::StatusOr<std::string>)>)>
        handler) {
  call_handler_ = std::move(handler);
}

void Scheduler::SetPoolLostHandler(
    std::function<void(const absl::Status&)> handler) {
  pool_lost_handler_ = std::move(handler);
}

void Scheduler::SetAttemptEndHandler(
    std::function<void(absl::string_view)> handler) {
  attempt_end_handler_ = std::move(handler);
}

absl::Status Scheduler::Start() {
  for (const std::string& k : pool_.Kinds()) kinds_.insert(k);
  absl::Status s = Recover();
  if (!s.ok()) return s;
  s = pool_.Start(MakePoolCallbacks());
  if (!s.ok()) return s;
  metrics_.AddRefreshHook([this] { RefreshMetrics(); });
  if (work_source_ != nullptr) {
    s = StartCluster();
    if (!s.ok()) return s;
  }
  started_ = true;
  thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "forq-scheduler");
    Loop();
  });
  return absl::OkStatus();
}

absl::Status Scheduler::Recover() {
  // Recovery: RUNNING tasks lost their worker when the previous forqd died.
  // A cluster node holds no queue; the reaper takes back lost leases.
  absl::StatusOr<std::vector<v1::Task>> unfinished =
      work_source_ != nullptr ? std::vector<v1::Task>()
                              : store_.LoadUnfinished();
  if (!unfinished.ok()) return unfinished.status();
  const absl::Time now = clock_.Now();
  std::vector<v1::Task> updates;
  int requeued = 0, dead = 0;
  {
    MutexLock lock(&mu_);
    std::sort(
        unfinished->begin(), unfinished->end(),
        [](const v1::Task& a, const v1::Task& b) { return a.id() < b.id(); });
    for (v1::Task& t : *unfinished) {
      if (t.state() == v1::RUNNING) {
        SetError(t, absl::StatusCode::kUnavailable,
                 "forqd stopped while the attempt was running",
                 v1::WORKER_LOST);
        if (t.attempt() - t.attempt_base() >= t.max_attempts()) {
          t.set_state(v1::DEAD);
          *t.mutable_finished_at() = ToProto(now);
          updates.push_back(t);
          ++dead;
          continue;
        }
        t.set_state(v1::QUEUED);
        *t.mutable_not_before() = ToProto(now);
        updates.push_back(t);
        ++requeued;
      }
      Entry& e = tasks_[t.id()];
      e.task = std::move(t);
      EnqueueLocked(e, now);
    }
  }
  if (!updates.empty()) {
    absl::Status status =
        AwaitWrite([&](std::function<void(absl::Status)> done) {
          store_.Update(updates, std::move(done));
        });
    if (!status.ok()) return status;
  }
  spdlog::info(
      "recovered {} unfinished tasks ({} lost attempts re-queued, {} dead)",
      unfinished->size(), requeued, dead);
  return absl::OkStatus();
}

worker::PoolCallbacks Scheduler::MakePoolCallbacks() {
  worker::PoolCallbacks cb;
  cb.on_outcome = [this](worker::Outcome o) { OnOutcome(std::move(o)); };
  cb.on_progress = [this](absl::string_view id, int attempt, double f,
                          absl::string_view msg) {
    OnProgress(id, attempt, f, msg);
  };
  cb.on_worker_idle = [this] { OnTurnEnd(); };
  cb.on_turn_end = [this] { OnTurnEnd(); };
  cb.on_pool_lost = [this](const absl::Status& why) {
    StopIntake();
    spdlog::critical("{}", std::string(why.message()));
    if (pool_lost_handler_) pool_lost_handler_(why);
  };
  cb.on_worker_exit = [this](const worker::WorkerExit& exit) {
    metrics_.WorkerRestart(exit.reason);
  };
  cb.on_call = [this](absl::string_view task_id, std::string request,
                      std::function<void(absl::StatusOr<std::string>)> reply) {
    if (!call_handler_) {
      reply(absl::UnimplementedError("no service answers task calls"));
      return;
    }
    {
      MutexLock lock(&mu_);
      auto it = tasks_.find(task_id);
      if (it != tasks_.end()) it->second.made_calls = true;
    }
    call_handler_(task_id, std::move(request), std::move(reply));
  };
  return cb;
}

void Scheduler::Shutdown(absl::Duration grace) {
  if (shut_down_) return;
  shut_down_ = true;
  StopIntake();
  SetDraining(true);
  if (started_) {
    Notification idle;
    bool drained = false;
    WhenIdle(grace, [&](bool d) {
      drained = d;
      idle.Notify();
    });
    idle.WaitForNotification();
    if (!drained) spdlog::warn("drain period over with tasks still running");
  }
  {
    MutexLock lock(&mu_);
    stop_ = true;
    WakeLocked();
    remote_cv_.SignalAll();
  }
  if (thread_.joinable()) thread_.join();
  if (remote_thread_.joinable()) remote_thread_.join();
  if (work_source_ != nullptr) work_source_->StopCluster();
  pool_.Shutdown();

  // Interrupted by us, not by the task: back to QUEUED, no attempt used.
  // Deferred tasks never written are inserted, so they run after restart
  // like any other accepted task.
  std::vector<v1::Task> requeue, unwritten;
  std::vector<std::pair<WaitDone, absl::Status>> to_fail;
  Deferred fail_sinks;
  {
    MutexLock lock(&mu_);
    TakeUnfinishedLocked(requeue, unwritten, to_fail, fail_sinks);
  }
  StoreUnfinished(requeue, std::move(unwritten));
  for (auto& [done, status] : to_fail) {
    if (done) done(status, false);
  }
  fail_sinks.Run();
}

void Scheduler::TakeUnfinishedLocked(
    std::vector<v1::Task>& requeue, std::vector<v1::Task>& unwritten,
    std::vector<std::pair<WaitDone, absl::Status>>& to_fail,
    Deferred& fail_sinks) {
  std::vector<Entry*> with_sink;
  for (auto& [id, e] : tasks_) {
    if (e.sink != nullptr) with_sink.push_back(&e);
    if (e.task.state() == v1::RUNNING && !e.finishing && !e.abandoned) {
      e.task.set_state(v1::QUEUED);
      e.task.set_attempt(e.task.attempt() - 1);
      (e.stored ? requeue : unwritten).push_back(e.task);
    } else if (work_source_ != nullptr && e.task.state() == v1::QUEUED) {
      requeue.push_back(e.task);  // claimed, never started: give back
    } else if (!e.stored && !e.finishing && !e.abandoned) {
      unwritten.push_back(e.task);
    }
  }
  deferred_.clear();
  FailSinks(with_sink, absl::UnavailableError("forqd is shutting down"),
            fail_sinks);
  for (WaitDone& done : waits_.TakeAll()) {
    to_fail.emplace_back(std::move(done),
                         absl::UnavailableError("forqd is shutting down"));
  }
}

void Scheduler::StoreUnfinished(const std::vector<v1::Task>& requeue,
                                std::vector<v1::Task> unwritten) {
  if (!requeue.empty()) {
    absl::Status s = AwaitWrite([&](std::function<void(absl::Status)> done) {
      store_.Update(requeue, std::move(done));
    });
    if (!s.ok()) spdlog::error("re-queue at shutdown failed: {}", s.ToString());
    spdlog::info("{} running tasks re-queued for the next start",
                 requeue.size());
  }
  if (!unwritten.empty()) {
    const size_t n = unwritten.size();
    absl::Status s = AwaitWrite([&](std::function<void(absl::Status)> done) {
      store_.Insert(std::move(unwritten),
                    [done = std::move(done)](
                        const absl::StatusOr<std::vector<InsertResult>>& r) {
                      done(r.status());
                    });
    });
    if (!s.ok()) {
      spdlog::error("insert of {} unwritten tasks at shutdown failed: {}", n,
                    s.ToString());
    }
    spdlog::info(
        "{} accepted tasks never written (Map, Submit with wait) stored for "
        "the next start",
        n);
  }
}

TaskMetrics& Scheduler::MetricsLocked(Entry& e) {
  if (e.metrics != nullptr) return *e.metrics;
  const v1::Task& t = e.task;
  if (last_metrics_ == nullptr || last_metrics_->queue() != t.queue() ||
      last_metrics_->kind() != t.kind()) {
    std::unique_ptr<TaskMetrics>& m =
        task_metrics_[absl::StrCat(t.queue(), "\x1f", t.kind())];
    if (m == nullptr) {
      m = std::make_unique<TaskMetrics>(metrics_, t.queue(), t.kind());
    }
    last_metrics_ = m.get();
  }
  e.metrics = last_metrics_;
  return *e.metrics;
}

void Scheduler::EnqueueLocked(Entry& e, absl::Time now) {
  ++queued_by_queue_[e.task.queue()];
  absl::Time not_before = e.task.has_not_before()
                              ? FromProto(e.task.not_before())
                              : absl::InfinitePast();
  if (not_before > now) {
    delayed_.emplace(not_before, e.task.id());
    return;
  }
  e.ready_at = now;
  e.ready_seq = next_seq_++;
  e.last_seq = e.ready_seq;
  ready_.insert(ReadyKey{-e.task.priority(), e.ready_seq, e.task.id()});
}

void Scheduler::RemoveQueuedLocked(Entry& e) {
  --queued_by_queue_[e.task.queue()];
  if (e.ready_seq != 0) {
    ready_.erase(ReadyKey{-e.task.priority(), e.ready_seq, e.task.id()});
    e.ready_seq = 0;
  }
  for (auto it = delayed_.begin(); it != delayed_.end(); ++it) {
    if (it->second == e.task.id()) {
      delayed_.erase(it);
      break;
    }
  }
}

void Scheduler::WakeLocked() {
  wake_ = true;
  cv_.Signal();
}

void Scheduler::WakeAtLocked(absl::Time t) {
  if (t < loop_wake_at_) WakeLocked();
}

// Only queues the write, so it may be called with mu_ held, and non-terminal
// states are written under mu_: the store applies writes in the order they
// are queued, so the rows follow the order of the state changes, and the
// terminal write (queued by FinishLocked's caller after the change) is last.
// The callback only logs; it never takes mu_.
void Scheduler::PersistAsync(const v1::Task& task) {
  store_.Update({task}, [id = task.id()](absl::Status s) {
    if (!s.ok()) {
      spdlog::error("store update of task {} failed: {}", id, s.ToString());
    }
  });
}

void Scheduler::EmitLocked(const v1::Task& task, v1::TaskEvent::Type type,
                           Deferred& d) {
  // Cluster: watchers on other nodes get it through the store.
  const bool remote = work_source_ != nullptr && work_source_->Watched(task);
  if (watchers_.empty() && !remote) return;
  auto event = std::make_shared<v1::TaskEvent>();
  event->set_type(type);
  *event->mutable_task() = task;
  *event->mutable_time() = ToProto(clock_.Now());
  if (remote) work_source_->PublishEvent(*event);
  for (const auto& [h, w] : watchers_) {
    if (w.task_id == task.id() ||
        (w.task_id.empty() && (w.queue == "*" || w.queue == task.queue()))) {
      d.Add([fn = w.fn, event] { fn(*event); });
    }
  }
}

void Scheduler::OnTurnEnd() {
  Deferred d;
  {
    MutexLock lock(&mu_);
    FlushFinishesLocked(d);
    DispatchLocked(clock_.Now(), d);
    if (work_source_ != nullptr) WantClaimLocked(/*told=*/false);
  }
  d.Run();
}

void Scheduler::DispatchLocked(absl::Time now, Deferred& d) {
  if (stop_ || ready_.empty()) return;
  if (draining_) {
    if (drain_redispatch_.empty()) return;
    std::vector<ReadyKey> keys;
    for (ReadyKey& k : drain_redispatch_) {
      if (ready_.erase(k) > 0) keys.push_back(std::move(k));
    }
    drain_redispatch_ = SendLocked(std::move(keys), now, d);
    return;
  }
  int room = RoomForLocked(ready_.begin()->id);
  std::vector<ReadyKey> keys;
  while (room > 0 && !ready_.empty()) {
    keys.push_back(std::move(ready_.extract(ready_.begin()).value()));
    --room;
  }
  if (!keys.empty()) SendLocked(std::move(keys), now, d);
}

int Scheduler::RoomForLocked(const std::string& id) {
  auto it = tasks_.find(id);
  if (it == tasks_.end()) return pool_.Room();
  const v1::Task& t = it->second.task;
  // One with a short timeout waits behind no running attempt: it needs an
  // idle worker. Else as many as the pool takes of its kind (fewer of a
  // long kind than of a short one wait in a worker's queue).
  if (!worker::MayQueueBehind(AttemptTimeout(t))) return pool_.IdleCount();
  return pool_.RoomFor(t.kind());
}

std::vector<Scheduler::ReadyKey> Scheduler::SendLocked(
    std::vector<ReadyKey> keys, absl::Time now, Deferred& d) {
  std::vector<worker::Assignment> batch;
  std::vector<Entry*> entries;
  batch.reserve(keys.size());
  entries.reserve(keys.size());
  size_t kept = 0;
  for (ReadyKey& key : keys) {
    auto it = tasks_.find(key.id);
    if (it == tasks_.end()) continue;
    const v1::Task& t = it->second.task;
    worker::Assignment a;
    a.task_id = t.id();
    a.attempt = t.attempt() + 1;
    a.kind = t.kind();
    a.payload = t.payload();
    a.timeout = AttemptTimeout(t);
    batch.push_back(std::move(a));
    entries.push_back(&it->second);
    // Not onto itself: a self-moved std::string is left empty, and a
    // refused task would go back to ready_ under no id (never dispatched).
    if (&keys[kept] != &key) keys[kept] = std::move(key);
    ++kept;
  }
  keys.resize(kept);
  const size_t sent = batch.empty() ? 0 : pool_.DispatchMany(batch);
  std::vector<ReadyKey> refused;
  std::vector<v1::Task> running;
  for (size_t i = 0; i < keys.size(); ++i) {
    Entry& e = *entries[i];
    if (i >= sent) {
      // No worker took it (one that needs an idle worker, say): it keeps
      // its place.
      ready_.insert(keys[i]);
      refused.push_back(std::move(keys[i]));
      continue;
    }
    e.ready_seq = 0;
    --queued_by_queue_[e.task.queue()];
    v1::Task& t = e.task;
    t.set_state(v1::RUNNING);
    t.set_attempt(t.attempt() + 1);
    t.set_cancel_requested(false);
    t.set_progress(0);
    t.clear_progress_message();
    *t.mutable_started_at() = ToProto(now);
    ++running_;
    MetricsLocked(e).QueueWait(absl::ToDoubleSeconds(now - e.ready_at));
    // A cluster node writes no RUNNING record: its claim already made the
    // row RUNNING. An attempt queued behind another in its worker gets its
    // record when it starts (StartedLocked). With a running_write_delay the
    // record waits (WriteRunningLocked): most attempts end first.
    e.start_pending = batch[i].queued;
    if (e.stored && work_source_ == nullptr && !e.start_pending) {
      if (options_.running_write_delay <= absl::ZeroDuration()) {
        e.running_written = true;
        running.push_back(t);
      } else {
        DelayRunningRecordLocked(t.id(), now);
      }
    }
    EmitLocked(t, v1::TaskEvent::STATE, d);
  }
  // One write for the batch; the store coalesces a RUNNING record with the
  // terminal one when both reach the same group commit.
  StoreRunningLocked(std::move(running));
  return refused;
}

absl::Duration Scheduler::Backoff(int attempt) {
  thread_local absl::BitGen gen;
  double base = absl::ToDoubleSeconds(options_.backoff_base) *
                std::pow(2.0, std::max(0, attempt - 1));
  base = std::min(base, absl::ToDoubleSeconds(options_.backoff_max));
  return absl::Seconds(base * absl::Uniform(gen, 0.75, 1.25));
}

void Scheduler::RunDueLocked(absl::Time now, Deferred& d) {
  if (abandon_pending_.load(std::memory_order_acquire)) {
    DropAbandonedLocked(d);
  }
  if (!deferred_.empty() &&
      deferred_.front().first + options_.deferred_insert_limit <= now) {
    // Also the younger half, so the loop wakes for this at most twice per
    // limit however many tasks are deferred.
    InsertDeferredLocked(now - options_.deferred_insert_limit / 2);
  }
  if (!unwritten_running_.empty() &&
      unwritten_running_.front().first + options_.running_write_delay <= now) {
    WriteRunningLocked(now - options_.running_write_delay / 2);
  }
  // Delayed tasks whose time came.
  while (!delayed_.empty() && delayed_.begin()->first <= now) {
    std::string id = std::move(delayed_.begin()->second);
    delayed_.erase(delayed_.begin());
    auto it = tasks_.find(id);
    if (it == tasks_.end()) continue;
    Entry& e = it->second;
    e.ready_at = now;
    e.ready_seq = next_seq_++;
    e.last_seq = e.ready_seq;
    ready_.insert(ReadyKey{-e.task.priority(), e.ready_seq, id});
  }
  // Waits that timed out.
  for (auto& [id, done] : waits_.TakeExpired(now)) {
    auto it = tasks_.find(id);
    v1::Task task;
    if (it != tasks_.end()) {
      task = VisibleLocked(it->second);
    } else if (work_source_ != nullptr) {
      // A remote wait: answer with the stored state (outside mu_).
      d.Add([this, done = std::move(done), id = std::move(id)] {
        absl::StatusOr<v1::Task> t = store_.Get(id);
        const bool terminal = t.ok() && IsTerminal(t->state());
        done(std::move(t), terminal);
      });
      continue;
    }
    d.Add([done = std::move(done), task = std::move(task)] {
      done(task, false);
    });
  }
  // Drain / WhenIdle waiters.
  for (auto it = idle_waiters_.begin(); it != idle_waiters_.end();) {
    if (running_ == 0 || it->deadline <= now) {
      d.Add([done = std::move(it->done), drained = running_ == 0] {
        done(drained);
      });
      it = idle_waiters_.erase(it);
    } else {
      ++it;
    }
  }
  if (now >= next_finish_retry_) {
    next_finish_retry_ = absl::InfiniteFuture();
    for (const std::string& id : failed_finishes_) {
      auto it = tasks_.find(id);
      if (it == tasks_.end() || !it->second.finishing) continue;
      it->second.finish_failed = false;
      QueueFinishLocked(it->second);
    }
    failed_finishes_.clear();
    FlushFinishesLocked(d);
  }
  // Tasks that became ready above (and anything a missed turn left).
  DispatchLocked(now, d);
}

void Scheduler::Poke() {
  Deferred d;
  {
    MutexLock lock(&mu_);
    RunDueLocked(clock_.Now(), d);
  }
  d.Run();
}

void Scheduler::Loop() {
  absl::Time next_purge = clock_.Now() + options_.purge_interval;
  while (true) {
    Deferred d;
    bool purge = false;
    {
      MutexLock lock(&mu_);
      if (stop_) break;
      const absl::Time now = clock_.Now();
      RunDueLocked(now, d);
      if (now >= next_purge) {
        purge = true;
        next_purge = now + options_.purge_interval;
      }
    }
    d.Run();
    if (work_source_ != nullptr) ClaimForIdleWorkers();

    if (purge) {
      absl::StatusOr<int64_t> n = store_.PurgeExpired(clock_.Now());
      if (!n.ok()) {
        spdlog::error("purge of expired tasks failed: {}",
                      n.status().ToString());
      } else if (*n > 0) {
        spdlog::info("purged {} expired tasks", *n);
      }
    }

    MutexLock lock(&mu_);
    if (stop_) break;
    if (!wake_ && !claim_wanted_) {
      absl::Time next = clock_.Now() + absl::Seconds(1);
      next = std::min({next, next_purge, next_finish_retry_});
      if (!delayed_.empty()) next = std::min(next, delayed_.begin()->first);
      if (!deferred_.empty()) {
        next = std::min(
            next, deferred_.front().first + options_.deferred_insert_limit);
      }
      if (!unwritten_running_.empty()) {
        next = std::min(next, unwritten_running_.front().first +
                                  options_.running_write_delay);
      }
      next = std::min({next, waits_.NextDeadline(), stale_check_at_});
      for (const IdleWaiter& w : idle_waiters_) {
        next = std::min(next, w.deadline);
      }
      absl::Duration left = next - clock_.Now();
      if (left > absl::ZeroDuration()) {
        loop_wake_at_ = next;
        cv_.WaitWithTimeout(&mu_, left);
        loop_wake_at_ = absl::InfinitePast();
      }
    }
    wake_ = false;
  }
}

}  // namespace forq::server
