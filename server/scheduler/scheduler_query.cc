// Scheduler: reads and requests on tasks (Get, Wait, Cancel, Retry,
// List, watchers), drain and the gauges.

#include <algorithm>
#include <cstring>
#include <optional>

#include "absl/strings/str_cat.h"

#include "forq/v1/task_state.h"
#include "server/scheduler/scheduler.h"
#include "server/scheduler/task_proto.h"

namespace forq::server {

namespace {

absl::Status AlreadyFinished(absl::string_view id, v1::TaskState state) {
  return absl::FailedPreconditionError(
      absl::StrCat("task ", id, " is already ", v1::TaskState_Name(state)));
}

absl::Status NotRetryable(absl::string_view id, v1::TaskState state) {
  return absl::FailedPreconditionError(
      absl::StrCat("task ", id, " is ", v1::TaskState_Name(state),
                   "; only DEAD, FAILED or CANCELLED tasks can be retried"));
}

// In a cluster the outcome a node is writing may be committed, and seen
// by a Wait on another node, before the node hears back: the stored end of
// that attempt (or a later one) is then newer than the node's copy.
bool IsCommittedEnd(const v1::Task& stored, const v1::Task& live) {
  return IsTerminal(stored.state()) && stored.attempt() >= live.attempt();
}

std::optional<v1::Task> CommittedEnd(Store& store, const v1::Task& live) {
  absl::StatusOr<v1::Task> stored = store.Get(live.id());
  if (stored.ok() && IsCommittedEnd(*stored, live)) return *std::move(stored);
  return std::nullopt;
}

}  // namespace

absl::StatusOr<v1::Task> Scheduler::Get(absl::string_view id) {
  std::optional<v1::Task> live;
  bool finishing = false;
  {
    MutexLock lock(&mu_);
    const std::string key(id);
    auto it = tasks_.find(key);
    if (it != tasks_.end()) {
      live = VisibleLocked(it->second);
      finishing = it->second.finishing;
    } else if (work_source_ == nullptr) {
      // (In a cluster another node may have retried it since: read the
      // store.)
      if (std::optional<v1::Task> t = RecentLocked(key, clock_.Now())) {
        return *t;
      }
    }
  }
  if (!live.has_value()) return store_.Get(id);
  if (finishing && work_source_ != nullptr) {
    if (std::optional<v1::Task> end = CommittedEnd(store_, *live)) {
      return *std::move(end);
    }
  }
  // worker_pid is "current or last attempt", but the pool reports the pid
  // with the outcome; while the attempt runs, the pool knows it. Asked
  // outside mu_: Workers() may read /proc.
  if (live->state() == v1::RUNNING) {
    for (const worker::WorkerInfo& w : pool_.Workers()) {
      if (w.current_task_id == live->id()) {
        live->set_worker_pid(w.pid);
        break;
      }
    }
  }
  return *std::move(live);
}

uint64_t Scheduler::Wait(absl::string_view id, absl::Duration timeout,
                         WaitDone done) {
  timeout = std::min(timeout, options_.max_wait);
  std::optional<v1::Task> current;
  std::optional<v1::Task> finished;
  bool stopped = false;
  bool finishing = false;
  {
    MutexLock lock(&mu_);
    const std::string key(id);
    auto it = tasks_.find(key);
    if (stop_) {
      // Nothing would ever fire this wait: answer now rather than hold the
      // call open until the gRPC server's shutdown deadline.
      stopped = true;
    } else if (it == tasks_.end()) {
      finished = RecentLocked(key, clock_.Now());
    } else if (timeout <= absl::ZeroDuration()) {
      current = VisibleLocked(it->second);
      finishing = it->second.finishing;
    } else {
      const absl::Time deadline = clock_.Now() + timeout;
      const uint64_t h = waits_.Add(key, deadline, std::move(done));
      WakeAtLocked(deadline);
      return h;
    }
  }
  if (stopped) {
    done(absl::UnavailableError("forqd is shutting down"), false);
    return 0;
  }
  if (current) {
    if (finishing && work_source_ != nullptr) {
      if (std::optional<v1::Task> end = CommittedEnd(store_, *current)) {
        done(*std::move(end), true);
        return 0;
      }
    }
    done(std::move(*current), false);
    return 0;
  }
  if (finished) {
    done(std::move(*finished), true);
    return 0;
  }
  if (work_source_ != nullptr && timeout > absl::ZeroDuration()) {
    // Queued in the shared store, run by another node, finished or unknown:
    // parked here at once; the remote-wait thread reads it (with other new
    // waits, in one query) and answers it if it is terminal or unknown. A
    // terminal state reached later arrives by notification or, if this
    // node runs it, as a local finish.
    MutexLock lock(&mu_);
    const absl::Time deadline = clock_.Now() + timeout;
    const uint64_t h = waits_.Add(std::string(id), deadline, std::move(done));
    remote_check_.emplace_back(id);
    remote_cv_.Signal();
    WakeAtLocked(deadline);
    return h;
  }
  // Not in memory: finished (or unknown). Terminal states are final.
  absl::StatusOr<v1::Task> t = store_.Get(id);
  if (!t.ok()) {
    done(t.status(), false);
  } else {
    bool terminal = IsTerminal(t->state());
    done(std::move(t), terminal);
  }
  return 0;
}

bool Scheduler::WaitIfFinishing(absl::string_view id, WaitDone& done) {
  return WaitIfFinishing({id}, [&done](size_t) { return std::move(done); }) ==
         1;
}

size_t Scheduler::WaitIfFinishing(
    absl::Span<const absl::string_view> ids,
    const std::function<WaitDone(size_t)>& make_done) {
  if (!options_.answer_finished_submits) return 0;
  MutexLock lock(&mu_);
  // Not while the store refuses writes: the answer (its insert is durable)
  // must not wait for a disk to come back.
  if (stop_ || store_failing_) return 0;
  // Normally one group commit; bounded, so a slow store delays the answer
  // by a second at most (it then carries the task as stored).
  const absl::Time deadline = clock_.Now() + absl::Seconds(1);
  size_t parked = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    auto it = tasks_.find(ids[i]);
    if (it == tasks_.end() || !it->second.finishing ||
        it->second.finish_failed) {
      continue;
    }
    waits_.Add(it->first, deadline, make_done(i));
    ++parked;
  }
  if (parked > 0) WakeAtLocked(deadline);
  return parked;
}

bool Scheduler::CancelWait(uint64_t handle) {
  MutexLock lock(&mu_);
  return waits_.Remove(handle);
}

int Scheduler::CancelQueued(const std::vector<std::string>& ids,
                            absl::string_view why) {
  Deferred d;
  int cancelled = 0;
  {
    MutexLock lock(&mu_);
    for (const std::string& id : ids) {
      auto it = tasks_.find(id);
      if (it == tasks_.end()) continue;
      Entry& e = it->second;
      if (e.finishing || e.abandoned || e.task.state() != v1::QUEUED) continue;
      RemoveQueuedLocked(e);
      e.task.set_state(v1::CANCELLED);
      SetError(e.task, absl::StatusCode::kCancelled, why,
               v1::FAILURE_REASON_UNSPECIFIED);
      FinishLocked(e, v1::QUEUED);
      ++cancelled;
    }
    if (cancelled > 0) FlushFinishesLocked(d);
  }
  d.Run();
  return cancelled;
}

void Scheduler::Cancel(absl::string_view id, TaskDone done) {
  Deferred d;
  {
    MutexLock lock(&mu_);
    auto it = tasks_.find(std::string(id));
    if (it != tasks_.end()) {
      Entry& e = it->second;
      v1::Task& t = e.task;
      if (e.finishing) {
        d.Add([done, state = t.state(), id = t.id()] {
          done(AlreadyFinished(id, state));
        });
      } else if (t.state() == v1::QUEUED) {
        const v1::TaskState prev = t.state();
        RemoveQueuedLocked(e);
        t.set_state(v1::CANCELLED);
        SetError(t, absl::StatusCode::kCancelled, "cancelled before it ran",
                 v1::FAILURE_REASON_UNSPECIFIED);
        // Answer once the cancellation is durable, like a waiter.
        waits_.Add(std::string(id), absl::InfiniteFuture(),
                   [done](absl::StatusOr<v1::Task> task, bool) {
                     done(std::move(task));
                   });
        FinishLocked(e, prev);
        FlushFinishesLocked(d);
      } else {
        t.set_cancel_requested(true);
        // Queued under the lock, so before the write of whatever outcome
        // the attempt has (see Loop).
        if (e.stored) PersistAsync(t);
        d.Add([this, task = t] { pool_.Cancel(task.id(), task.attempt()); });
        d.Add([done, task = t] { done(task); });
      }
    }
  }
  if (!d.calls.empty()) {
    d.Run();
    return;
  }
  if (work_source_ != nullptr) {
    CancelRemote(id, done);  // queued or running elsewhere
    return;
  }
  absl::StatusOr<v1::Task> t = store_.Get(id);
  if (!t.ok()) {
    done(t.status());
    return;
  }
  done(AlreadyFinished(id, t->state()));
}

void Scheduler::Retry(absl::string_view id, TaskDone done) {
  std::optional<v1::TaskState> in_memory;
  {
    MutexLock lock(&mu_);
    auto it = tasks_.find(std::string(id));
    if (it != tasks_.end()) in_memory = it->second.task.state();
  }
  if (in_memory) {
    done(NotRetryable(id, *in_memory));
    return;
  }
  absl::StatusOr<v1::Task> t = store_.Get(id);
  if (!t.ok()) {
    done(t.status());
    return;
  }
  if (!IsTerminal(t->state()) || t->state() == v1::SUCCEEDED) {
    done(NotRetryable(id, t->state()));
    return;
  }
  v1::Task task = std::move(*t);
  task.set_state(v1::QUEUED);
  task.set_attempt_base(task.attempt());
  task.clear_finished_at();
  task.clear_not_before();
  task.clear_result();
  task.set_cancel_requested(false);
  store_.Update({task},
                [this, task, done = std::move(done)](const absl::Status& s) {
                  if (!s.ok()) {
                    done(s);
                    return;
                  }
                  if (work_source_ != nullptr) {
                    {
                      MutexLock lock(&mu_);
                      recent_.erase(task.id());
                      WantClaimLocked();  // queued in the shared store
                    }
                    done(task);
                    return;
                  }
                  Deferred d;
                  {
                    MutexLock lock(&mu_);
                    recent_.erase(task.id());
                    Entry& e = tasks_[task.id()];
                    e.task = task;
                    const absl::Time now = clock_.Now();
                    EnqueueLocked(e, now);
                    DispatchLocked(now, d);
                    WakeLocked();
                  }
                  d.Run();
                  done(task);
                });
}

absl::StatusOr<ListPage> Scheduler::List(const ListQuery& query) {
  absl::StatusOr<ListPage> page = store_.List(query);
  if (!page.ok()) return page;
  // Unfinished tasks: the in-memory copy is newer (progress, in-flight writes).
  MutexLock lock(&mu_);
  for (v1::Task& t : page->tasks) {
    auto it = tasks_.find(t.id());
    if (it == tasks_.end()) continue;
    if (work_source_ != nullptr && it->second.finishing &&
        IsCommittedEnd(t, it->second.task)) {
      continue;
    }
    t = VisibleLocked(it->second);
  }
  return page;
}

uint64_t Scheduler::Subscribe(std::string task_id, std::string queue,
                              EventFn fn) {
  MutexLock lock(&mu_);
  uint64_t h = next_handle_++;
  Watcher& w = watchers_[h];
  w = Watcher{std::move(task_id), std::move(queue), std::move(fn)};
  if (work_source_ != nullptr) WatchRemoteLocked(w, true);
  return h;
}

void Scheduler::Unsubscribe(uint64_t handle) {
  MutexLock lock(&mu_);
  auto it = watchers_.find(handle);
  if (it == watchers_.end()) return;
  if (work_source_ != nullptr) WatchRemoteLocked(it->second, false);
  watchers_.erase(it);
}

void Scheduler::SetDraining(bool draining) {
  Deferred d;
  {
    MutexLock lock(&mu_);
    draining_ = draining;
    if (!draining) drain_redispatch_.clear();
    DispatchLocked(clock_.Now(), d);
    if (work_source_ != nullptr) {
      if (draining) {
        ReleaseClaimedLocked();
      } else {
        WantClaimLocked();
      }
    }
    WakeLocked();
  }
  d.Run();
}

bool Scheduler::draining() {
  MutexLock lock(&mu_);
  return draining_;
}

int Scheduler::running() {
  MutexLock lock(&mu_);
  return running_;
}

void Scheduler::WhenIdle(absl::Duration timeout,
                         std::function<void(bool)> done) {
  {
    MutexLock lock(&mu_);
    if (running_ > 0 && timeout > absl::ZeroDuration() && started_ && !stop_) {
      idle_waiters_.push_back(
          IdleWaiter{clock_.Now() + timeout, std::move(done)});
      WakeLocked();
      return;
    }
  }
  done(running() == 0);
}

void Scheduler::StopIntake() {
  MutexLock lock(&mu_);
  accepting_ = false;
}

size_t Scheduler::pending_waits() {
  MutexLock lock(&mu_);
  return waits_.size();
}

size_t Scheduler::pending_wait_timeouts() {
  MutexLock lock(&mu_);
  return waits_.deadlines();
}

bool Scheduler::store_failing() {
  MutexLock lock(&mu_);
  return store_failing_;
}

bool Scheduler::accepting() {
  MutexLock lock(&mu_);
  return accepting_;
}

void Scheduler::RefreshMetrics() {
  struct Depth {
    int64_t queued = 0, delayed = 0, running = 0;
    absl::Time oldest = absl::InfiniteFuture();
  };
  std::map<std::string, Depth> depth;
  {
    MutexLock lock(&mu_);
    metrics_.SetTaskWaits(static_cast<double>(waits_.size()));
    for (const auto& [q, n] : queued_by_queue_) depth[q];
    for (const auto& [id, e] : tasks_) {
      Depth& dq = depth[e.task.queue()];
      if (e.task.state() == v1::RUNNING) {
        ++dq.running;
      } else if (e.task.state() == v1::QUEUED) {
        if (e.ready_seq != 0) {
          ++dq.queued;
          dq.oldest = std::min(dq.oldest, e.ready_at);
        } else {
          ++dq.delayed;
        }
      }
    }
  }
  const absl::Time now = clock_.Now();
  for (const auto& [q, dq] : depth) {
    metrics_.SetQueueDepth(q, "queued", dq.queued);
    metrics_.SetQueueDepth(q, "delayed", dq.delayed);
    metrics_.SetQueueDepth(q, "running", dq.running);
    metrics_.SetQueueOldestAge(q, dq.oldest == absl::InfiniteFuture()
                                      ? 0
                                      : absl::ToDoubleSeconds(now - dq.oldest));
  }
  std::map<std::string, int> by_state = {
      {"starting", 0}, {"idle", 0}, {"busy", 0}, {"respawning", 0}};
  double rss = 0;
  for (const worker::WorkerInfo& w : pool_.Workers()) {
    switch (w.state) {
      case worker::WorkerState::kStarting:
        ++by_state["starting"];
        break;
      case worker::WorkerState::kIdle:
        ++by_state["idle"];
        break;
      case worker::WorkerState::kBusy:
        ++by_state["busy"];
        break;
      case worker::WorkerState::kRespawning:
        ++by_state["respawning"];
        break;
    }
    rss += static_cast<double>(w.rss_bytes);
  }
  for (const auto& [state, n] : by_state) metrics_.SetWorkers(state, n);
  metrics_.SetWorkerRssBytes(rss);
}

}  // namespace forq::server
