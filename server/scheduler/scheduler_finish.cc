// Scheduler: the end of attempts (outcomes, terminal records and their
// writes, deferred inserts, RUNNING records, the finished-task memory).

#include <string.h>

#include <cstring>
#include <optional>

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

#include "server/scheduler/scheduler.h"
#include "server/scheduler/task_proto.h"

namespace forq::server {

namespace {

// "Segmentation fault" for SIGSEGV; sigdescr_np, unlike strsignal, is
// thread-safe.
const char* SignalName(int sig) {
  const char* name = sigdescr_np(sig);
  return name != nullptr ? name : "unknown signal";
}

// The terminal state as a metric label.
absl::string_view StateLabel(v1::TaskState s) {
  switch (s) {
    case v1::SUCCEEDED:
      return "succeeded";
    case v1::FAILED:
      return "failed";
    case v1::DEAD:
      return "dead";
    case v1::CANCELLED:
      return "cancelled";
    default:
      return "unfinished";
  }
}

// Handler errors with these codes describe the input, so retrying cannot
// help: the task ends FAILED at once.
bool IsPermanent(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kUnimplemented:
    case absl::StatusCode::kPermissionDenied:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kAlreadyExists:
      return true;
    default:
      return false;
  }
}

absl::string_view OutcomeLabel(worker::OutcomeKind k) {
  switch (k) {
    case worker::OutcomeKind::kSucceeded:
      return "succeeded";
    case worker::OutcomeKind::kHandlerError:
    case worker::OutcomeKind::kUnknownKind:
      return "error";
    case worker::OutcomeKind::kTimeout:
      return "timeout";
    case worker::OutcomeKind::kSignaled:
      return "signaled";
    case worker::OutcomeKind::kOutOfMemory:
      return "oom";
    case worker::OutcomeKind::kCancelled:
      return "cancelled";
    case worker::OutcomeKind::kRevoked:
      return "revoked";
    default:
      return "lost";
  }
}

// Writes the end of an attempt into `t` (state, result or error); true when
// the failure may be retried (the caller decides whether attempts remain).
// kRevoked never gets here.
bool RecordOutcome(v1::Task& t, worker::Outcome& o) {
  using worker::OutcomeKind;
  bool retryable = false;
  switch (o.kind) {
    case OutcomeKind::kSucceeded:
      t.set_state(v1::SUCCEEDED);
      t.set_result(std::move(o.result));
      t.clear_error();
      t.set_progress(1.0);
      break;
    case OutcomeKind::kHandlerError:
      SetError(t, o.status.code(), o.status.message(), v1::HANDLER_ERROR);
      if (o.status.code() == absl::StatusCode::kCancelled &&
          t.cancel_requested()) {
        t.set_state(v1::CANCELLED);
      } else if (IsPermanent(o.status.code())) {
        t.set_state(v1::FAILED);
      } else {
        retryable = true;
      }
      break;
    case OutcomeKind::kUnknownKind:
      SetError(t, absl::StatusCode::kInvalidArgument,
               absl::StrCat("no handler for kind '", t.kind(), "'"),
               v1::UNKNOWN_KIND);
      t.set_state(v1::FAILED);
      break;
    case OutcomeKind::kCancelled:
      SetError(t, absl::StatusCode::kCancelled, "cancelled while running",
               v1::CANCELLED_WHILE_RUNNING);
      t.set_state(v1::CANCELLED);
      break;
    case OutcomeKind::kTimeout:
      SetError(t, absl::StatusCode::kDeadlineExceeded,
               absl::StrCat("attempt ran past its timeout of ",
                            absl::FormatDuration(FromProto(t.timeout()))),
               v1::TIMEOUT);
      retryable = true;
      break;
    case OutcomeKind::kSignaled:
      SetError(t, absl::StatusCode::kAborted,
               absl::StrCat("worker ", o.worker_pid, " died from signal ",
                            o.signal, " (", SignalName(o.signal), ")"),
               v1::SIGNALED, o.signal);
      retryable = true;
      break;
    case OutcomeKind::kOutOfMemory:
      SetError(t, absl::StatusCode::kResourceExhausted,
               "worker exceeded its memory limit", v1::OUT_OF_MEMORY);
      retryable = true;
      break;
    case OutcomeKind::kProtocolViolation:
      SetError(
          t, absl::StatusCode::kInternal,
          absl::StrCat("worker broke the pool protocol: ", o.status.message()),
          v1::PROTOCOL_VIOLATION);
      retryable = true;
      break;
    case OutcomeKind::kWorkerLost:
    case OutcomeKind::kRevoked:  // handled above
      SetError(t, absl::StatusCode::kUnavailable,
               absl::StrCat("worker lost: ", o.status.message()),
               v1::WORKER_LOST);
      retryable = true;
      break;
  }
  return retryable;
}

}  // namespace

void Scheduler::FinishLocked(Entry& e, v1::TaskState prev) {
  e.finishing = true;
  e.prev_state = prev;
  *e.task.mutable_finished_at() = ToProto(clock_.Now());
  MetricsLocked(e).Finished(e.task.state(), StateLabel(e.task.state()));
  QueueFinishLocked(e);
}

void Scheduler::QueueFinishLocked(Entry& e) {
  std::vector<v1::Task>& batch =
      e.stored ? pending_finishes_ : pending_finish_inserts_;
  e.stored = true;
  // Room for a turn's worth, so the batch does not grow task by task. A
  // copy: the entry keeps its task for readers until the write is done.
  if (batch.capacity() == 0) batch.reserve(64);
  batch.push_back(e.task);
}

void Scheduler::FlushFinishesLocked(Deferred& d) {
  if (!pending_running_.empty()) {
    // Queued now, under mu_: before this batch's terminal records (queued
    // by `d`) and any later write of these tasks.
    std::vector<v1::Task> running;
    for (const std::string& id : pending_running_) {
      AddRunningRecordLocked(id, running);
    }
    pending_running_.clear();
    StoreRunningLocked(std::move(running));
  }
  auto ids_of = [](const std::vector<v1::Task>& tasks) {
    std::vector<std::string> ids;
    ids.reserve(tasks.size());
    for (const v1::Task& t : tasks) ids.push_back(t.id());
    return ids;
  };
  // Queued outside mu_ (the store may answer a closed store at once, and
  // the answer takes mu_). No other write of these tasks can follow: they
  // are finishing, so nothing else persists them. When nothing else runs
  // or waits to run, the write may be committed on this thread (a lone
  // task's answer then skips a hand-off); under load it is queued, so
  // writes keep forming large groups and this thread keeps dispatching.
  const bool lone = running_ == 0 && ready_.empty();
  if (!pending_finishes_.empty()) {
    d.Add([this, lone, ids = ids_of(pending_finishes_),
           tasks = std::move(pending_finishes_)]() mutable {
      auto done = [this, ids = std::move(ids)](absl::Status s) {
        OnFinishPersisted(ids, std::move(s), false);
      };
      if (lone) {
        store_.UpdateHere(std::move(tasks), std::move(done));
      } else {
        store_.Update(std::move(tasks), std::move(done));
      }
    });
    pending_finishes_.clear();
  }
  if (!pending_finish_inserts_.empty()) {
    d.Add([this, lone, ids = ids_of(pending_finish_inserts_),
           tasks = std::move(pending_finish_inserts_)]() mutable {
      auto done = [this, ids = std::move(ids)](
                      const absl::StatusOr<std::vector<InsertResult>>& r) {
        OnFinishPersisted(ids, r.status(), true);
      };
      if (lone) {
        store_.InsertHere(std::move(tasks), std::move(done));
      } else {
        store_.Insert(std::move(tasks), std::move(done));
      }
    });
    pending_finish_inserts_.clear();
  }
}

void Scheduler::InsertDeferredLocked(absl::Time cutoff) {
  std::vector<v1::Task> tasks;
  std::vector<std::string> ids;
  while (!deferred_.empty() && deferred_.front().first <= cutoff) {
    auto it = tasks_.find(deferred_.front().second);
    deferred_.pop_front();
    if (it == tasks_.end()) continue;
    Entry& e = it->second;
    if (e.stored || e.finishing || e.abandoned) continue;
    e.stored = true;
    // Recorded RUNNING: a crash now counts the attempt, as for any task.
    e.running_written = e.task.state() == v1::RUNNING;
    tasks.push_back(e.task);
    ids.push_back(e.task.id());
  }
  if (tasks.empty()) return;
  // Under mu_, so every later write of these tasks follows the insert.
  store_.Insert(std::move(tasks),
                [this, ids = std::move(ids)](
                    const absl::StatusOr<std::vector<InsertResult>>& r) {
                  if (r.ok()) return;
                  spdlog::error(
                      "store insert of {} deferred tasks "
                      "failed ({}); they are dropped",
                      ids.size(), r.status().ToString());
                  Abandon(ids);
                });
}

void Scheduler::WriteRunningLocked(absl::Time cutoff) {
  std::vector<v1::Task> running;
  while (!unwritten_running_.empty() &&
         unwritten_running_.front().first <= cutoff) {
    AddRunningRecordLocked(unwritten_running_.front().second, running);
    unwritten_running_.pop_front();
  }
  StoreRunningLocked(std::move(running));
}

void Scheduler::AddRunningRecordLocked(const std::string& id,
                                       std::vector<v1::Task>& running) {
  auto it = tasks_.find(id);
  if (it == tasks_.end()) return;
  Entry& e = it->second;
  if (!e.stored || e.finishing || e.abandoned || e.running_written ||
      e.task.state() != v1::RUNNING) {
    return;
  }
  e.running_written = true;
  running.push_back(e.task);
}

void Scheduler::StartedLocked(const std::string& id, int attempt,
                              absl::Time now) {
  auto it = tasks_.find(id);
  if (it == tasks_.end()) return;
  Entry& e = it->second;
  if (!e.start_pending || e.task.attempt() != attempt ||
      e.task.state() != v1::RUNNING) {
    return;
  }
  e.start_pending = false;
  *e.task.mutable_started_at() = ToProto(now);
  if (!e.stored || work_source_ != nullptr) return;
  if (options_.running_write_delay <= absl::ZeroDuration()) {
    pending_running_.push_back(id);
  } else {
    DelayRunningRecordLocked(id, now);
  }
}

void Scheduler::DelayRunningRecordLocked(const std::string& id,
                                         absl::Time started) {
  if (unwritten_running_.empty()) {
    WakeAtLocked(started + options_.running_write_delay);
  }
  unwritten_running_.emplace_back(started, id);
}

void Scheduler::StoreRunningLocked(std::vector<v1::Task> running) {
  if (running.empty()) return;
  // Queued under mu_ before the attempt's terminal write can be (the task
  // is not finishing), so the rows follow the order of the states.
  store_.Update(std::move(running), [](absl::Status s) {
    if (!s.ok()) {
      spdlog::error("store write of running tasks failed: {}", s.ToString());
    }
  });
}

void Scheduler::Persist(absl::string_view id,
                        std::function<void(absl::Status)> done) {
  {
    MutexLock lock(&mu_);
    auto it = tasks_.find(std::string(id));
    if (it != tasks_.end()) {
      Entry& e = it->second;
      if (e.finishing) {
        // Its terminal write may not be queued yet: wait for it.
        waits_.Add(std::string(id), absl::InfiniteFuture(),
                   [done](const absl::StatusOr<v1::Task>& t, bool) {
                     done(t.status());
                   });
        return;
      }
      // Under mu_, so the write is queued before any later one of the
      // task; the callbacks take no scheduler lock.
      if (!e.stored) {
        e.stored = true;
        e.running_written = e.task.state() == v1::RUNNING;
        store_.Insert({e.task},
                      [this, done, id = std::string(id)](
                          const absl::StatusOr<std::vector<InsertResult>>& r) {
                        if (!r.ok()) Abandon({id});
                        done(r.status());
                      });
      } else {
        // Written or being written: an empty write is a barrier behind it.
        store_.Update({}, std::move(done));
      }
      return;
    }
  }
  done(absl::OkStatus());  // finished and durable, or unknown
}

void Scheduler::OnFinishPersisted(const std::vector<std::string>& ids,
                                  absl::Status status, bool inserted) {
  Deferred d;
  {
    MutexLock lock(&mu_);
    if (!status.ok()) {
      // Nothing is announced: the tasks stay visibly unfinished (readers
      // see their previous state) and the write is tried again.
      spdlog::error(
          "store write of {} finished tasks failed ({}); trying again every "
          "{}",
          ids.size(), status.ToString(),
          absl::FormatDuration(options_.finish_retry_interval));
      for (const std::string& id : ids) {
        auto it = tasks_.find(id);
        if (it == tasks_.end() || it->second.finish_failed) continue;
        it->second.finish_failed = true;
        if (inserted) it->second.stored = false;  // tried again as an insert
        failed_finishes_.push_back(id);
      }
      store_failing_ = true;
      if (next_finish_retry_ == absl::InfiniteFuture()) {
        next_finish_retry_ = clock_.Now() + options_.finish_retry_interval;
        WakeLocked();
      }
      return;
    }
    if (failed_finishes_.empty()) store_failing_ = false;
    SinkBatch to_sinks;
    for (const std::string& id : ids) {
      auto it = tasks_.find(id);
      if (it == tasks_.end()) continue;
      Entry& e = it->second;
      if (e.abandoned) {
        // Refused by the cluster's attempt fence: the task's result is the
        // newer attempt's; waiters get it from the store.
        tasks_.erase(it);
        continue;
      }
      std::vector<WaitDone> waiters =
          waits_.size() == 0 ? std::vector<WaitDone>() : waits_.TakeTask(id);
      EmitLocked(e.task, v1::TaskEvent::STATE, d);
      // A deferred task's result went to its submitter: the last waiter
      // (or its sink) gets the task itself instead of a copy.
      const bool to_sink = e.sink != nullptr;
      const bool remember =
          !e.answered_by_result || (waiters.empty() && !to_sink);
      for (size_t i = 0; i < waiters.size(); ++i) {
        const bool last = !remember && !to_sink && i + 1 == waiters.size();
        d.Add([done = std::move(waiters[i]),
               task = last ? std::move(e.task) : e.task]() mutable {
          done(std::move(task), true);
        });
      }
      if (to_sink) {
        to_sinks.Add(std::move(e.sink), e.sink_tag, std::move(e.task));
      } else if (remember) {
        RememberLocked(std::move(e.task));
      }
      tasks_.erase(it);
    }
    to_sinks.MoveTo(d);
    if (!idle_waiters_.empty()) WakeLocked();  // they may be satisfied now
  }
  d.Run();
}

void Scheduler::RememberLocked(v1::Task task) {
  if (options_.recent_finished == 0) return;
  const size_t bytes = task.payload().size() + task.result().size() +
                       task.error().message().size() + 512;
  // Elements of a deque stay where they are while others come and go at
  // its ends, so recent_ can point at them (and view their ids).
  const Recent& r = recent_order_.emplace_back(Recent{std::move(task), bytes});
  if (auto [it, added] = recent_.try_emplace(r.task.id(), &r); !added) {
    // Finished again (retried): the key must view the new copy's id.
    recent_.erase(it);
    recent_.emplace(r.task.id(), &r);
  }
  recent_bytes_ += bytes;
  while (recent_order_.size() > options_.recent_finished ||
         (recent_bytes_ > options_.recent_finished_bytes &&
          recent_order_.size() > 1)) {
    const Recent& oldest = recent_order_.front();
    auto it = recent_.find(oldest.task.id());
    // Not when it went early, or its id finished again since.
    if (it != recent_.end() && it->second == &oldest) recent_.erase(it);
    recent_bytes_ -= oldest.bytes;
    recent_order_.pop_front();
  }
}

std::optional<v1::Task> Scheduler::RecentLocked(const std::string& id,
                                                absl::Time now) {
  auto it = recent_.find(id);
  if (it == recent_.end()) return std::nullopt;
  const v1::Task& t = it->second->task;
  if (FromProto(t.finished_at()) + FromProto(t.result_ttl()) <= now) {
    recent_.erase(it);  // expired: the purge removes it from the store too
    return std::nullopt;
  }
  return t;
}

v1::Task Scheduler::VisibleLocked(const Entry& e) const {
  if (!e.finishing) return e.task;
  v1::Task t = e.task;
  t.set_state(e.prev_state);
  t.clear_finished_at();
  t.clear_result();
  t.clear_error();
  return t;
}

void Scheduler::RevokeLocked(TaskMap::iterator it) {
  Entry& e = it->second;
  v1::Task& t = e.task;
  // Never started: back to its place in the queue, the attempt unused.
  // OnTurnEnd dispatches it again.
  t.set_state(v1::QUEUED);
  t.set_attempt(t.attempt() - 1);
  t.clear_started_at();
  e.start_pending = false;
  if (work_source_ != nullptr && (draining_ || stop_)) {
    // A drained node runs nothing new: the claim goes back to the shared
    // queue. Otherwise it keeps its place here, still claimed (the next
    // dispatch counts the claimed attempt again), ahead of later work.
    PersistAsync(t);
    tasks_.erase(it);
    WantClaimLocked();
    return;
  }
  ++queued_by_queue_[t.queue()];
  e.ready_seq = e.last_seq;
  ready_.insert(ReadyKey{-t.priority(), e.ready_seq, t.id()});
  if (draining_) {
    drain_redispatch_.push_back(ReadyKey{-t.priority(), e.ready_seq, t.id()});
  }
  // A RUNNING record on disk would count as a lost attempt after a
  // crash: overwrite it.
  if (e.running_written) {
    e.running_written = false;
    PersistAsync(t);
  }
}

void Scheduler::OnOutcome(worker::Outcome o) {
  Deferred d;
  {
    MutexLock lock(&mu_);
    if (!o.next_task_id.empty()) {
      StartedLocked(o.next_task_id, o.next_attempt, clock_.Now());
    }
    auto it = tasks_.find(o.task_id);
    if (it == tasks_.end() || it->second.finishing ||
        it->second.task.state() != v1::RUNNING ||
        it->second.task.attempt() != o.attempt) {
      // Fenced: this attempt is no longer the current one.
      metrics_.StaleCompletion();
      spdlog::warn("stale completion for task {} attempt {} refused", o.task_id,
                   o.attempt);
      return;
    }
    Entry& e = it->second;
    v1::Task& t = e.task;
    --running_;
    if (running_ == 0 && !idle_waiters_.empty()) WakeLocked();
    if (e.abandoned) {  // never acknowledged nor stored: nothing to record
      // (or, in a cluster, its lease is gone: a late completion, refused)
      if (e.lease_lost) metrics_.FencedCompletion();
      tasks_.erase(it);
      return;
    }
    if (o.kind == worker::OutcomeKind::kRevoked) {
      RevokeLocked(it);
      return;
    }
    if (attempt_end_handler_ && e.made_calls) {
      e.made_calls = false;
      d.Add([this, id = t.id()] { attempt_end_handler_(id); });
    }
    if (o.worker_pid != 0) t.set_worker_pid(o.worker_pid);
    MetricsLocked(e).Attempt(static_cast<int>(o.kind), OutcomeLabel(o.kind),
                             absl::ToDoubleSeconds(o.runtime));

    bool retryable = RecordOutcome(t, o);
    if (retryable && t.cancel_requested()) {
      t.set_state(v1::CANCELLED);
      retryable = false;
    }
    if (retryable) {
      if (t.attempt() - t.attempt_base() < t.max_attempts()) {
        const absl::Time now = clock_.Now();
        t.set_state(v1::QUEUED);
        *t.mutable_not_before() = ToProto(now + Backoff(t.attempt()));
        MetricsLocked(e).Retried();
        EmitLocked(t, v1::TaskEvent::STATE, d);
        // Under mu_, so before the next attempt's writes.
        if (e.stored) PersistAsync(t);
        if (work_source_ != nullptr) {
          // Back to the shared queue: any node may run the next attempt.
          tasks_.erase(it);
          WantClaimLocked();
        } else {
          EnqueueLocked(e, now);
          WakeAtLocked(FromProto(t.not_before()));
        }
      } else {
        t.set_state(v1::DEAD);
        FinishLocked(e, v1::RUNNING);
      }
    } else {
      FinishLocked(e, v1::RUNNING);
    }
  }
  d.Run();
}

void Scheduler::OnProgress(absl::string_view id, int attempt, double fraction,
                           absl::string_view message) {
  Deferred d;
  {
    MutexLock lock(&mu_);
    auto it = tasks_.find(std::string(id));
    if (it == tasks_.end() || it->second.task.attempt() != attempt ||
        it->second.task.state() != v1::RUNNING) {
      return;
    }
    v1::Task& t = it->second.task;
    t.set_progress(std::clamp(fraction, 0.0, 1.0));
    t.set_progress_message(std::string(message.substr(0, 256)));
    EmitLocked(t, v1::TaskEvent::PROGRESS, d);
  }
  d.Run();
}

}  // namespace forq::server
