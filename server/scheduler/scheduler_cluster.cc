// The scheduler's cluster-mode parts: claims from the shared store for idle
// workers, attempts whose lease was lost or whose write was fenced, and
// waits on tasks that other nodes finish. Single-node forqd never runs
// this code (work_source_ is null).
#include <pthread.h>

#include <algorithm>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

#include "server/scheduler/scheduler.h"
#include "server/scheduler/task_proto.h"

namespace forq::server {

absl::Status Scheduler::StartCluster() {
  WorkSource::Callbacks cb;
  cb.wake = [this] {
    MutexLock lock(&mu_);
    WantClaimLocked();
  };
  cb.lost = [this](const std::vector<AttemptRef>& attempts) {
    OnLostAttempts(attempts, /*fenced=*/false);
  };
  cb.fenced = [this](const std::vector<AttemptRef>& attempts) {
    OnLostAttempts(attempts, /*fenced=*/true);
  };
  cb.finished = [this](const std::vector<std::string>& ids) {
    OnRemoteFinished(ids);
  };
  cb.cancel = [this](const std::vector<AttemptRef>& attempts) {
    OnRemoteCancel(attempts);
  };
  cb.events = [this](const std::vector<v1::TaskEvent>& events) {
    OnRemoteEvents(events);
  };
  absl::Status s = work_source_->StartCluster(
      std::move(cb), std::vector<std::string>(kinds_.begin(), kinds_.end()));
  if (!s.ok()) return s;
  remote_thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "forq-remote-wait");
    RemoteWaitLoop();
  });
  spdlog::info("cluster mode: node {} incarnation {} claims shared work",
               work_source_->node_id(), work_source_->incarnation());
  return absl::OkStatus();
}

int Scheduler::LocalTargetLocked(absl::Time now) {
  // The buffer follows the rate at which this node starts tasks (which its
  // workers' speed bounds: a full buffer takes nothing more): short tasks
  // come in claims (and inserts) of hundreds, long ones are not hoarded.
  // A node alone in the cluster holds more: nobody else would run what it
  // leaves in the shared queue, and what it takes at insert costs one row
  // version fewer than a claim.
  constexpr absl::Duration kWindow = absl::Milliseconds(100);
  constexpr absl::Duration kHeld = absl::Milliseconds(20);
  constexpr int kMaxBuffer = 1000;
  constexpr int kMaxBufferAlone = 50000;
  if (now - taken_since_ >= kWindow) {
    if (taken_since_ != absl::InfinitePast()) {
      const double rate = static_cast<double>(taken_) /
                          absl::ToDoubleSeconds(now - taken_since_);
      const absl::Duration alone = work_source_->HoldAlone();
      buffer_ = std::clamp(
          static_cast<int>(rate *
                           absl::ToDoubleSeconds(
                               alone > absl::ZeroDuration() ? alone : kHeld)),
          0, alone > absl::ZeroDuration() ? kMaxBufferAlone : kMaxBuffer);
    }
    taken_ = 0;
    taken_since_ = now;
  }
  return pool_.Room() + buffer_;
}

int Scheduler::InsertBudgetLocked(absl::Time now) {
  if (!own_allowed_ || stop_ || draining_) return 0;
  // Alone, a node takes at least this many at insert before it knows its
  // rate (a node just started, or one whose buffer was given back).
  // Enough for a producer with several batches in flight: a first burst
  // beyond it goes to the shared queue, and everything after it too until
  // claims have caught up (each task then costs a claim).
  constexpr int kAloneFloor = 2000;
  int target = LocalTargetLocked(now);
  if (work_source_->HoldAlone() > absl::ZeroDuration()) {
    target = std::max(target, pool_.Room() + kAloneFloor);
  }
  return target - static_cast<int>(ready_.size());
}

void Scheduler::SubmitClusterLocked(std::vector<v1::Task> tasks,
                                    SubmitDone done, Deferred& d) {
  const absl::Time now = clock_.Now();
  int budget = InsertBudgetLocked(now);
  std::vector<bool> own(tasks.size(), false);
  std::vector<size_t> asked;
  // Claimable tasks go to the shared queue: later submissions go there
  // too, behind them, until a claim finds that queue short again.
  bool to_shared = false;
  for (size_t i = 0; i < tasks.size(); ++i) {
    const v1::Task& t = tasks[i];
    if (t.has_not_before() && FromProto(t.not_before()) > now) continue;
    // A kind only other nodes run waits for them in the shared queue.
    if (!RunsKind(t.kind())) continue;
    // (The store inserts a task with an idempotency key unclaimed.)
    to_shared |= budget <= 0 || !t.idempotency_key().empty();
    if (budget <= 0) break;
    own[i] = true;
    --budget;
    // Queued here before the insert is, so every write of it follows the
    // insert (a refused insert is dropped by Abandon).
    Entry& e = tasks_[t.id()];
    e = Entry();
    e.task = t;
    EnqueueLocked(e, now);
    asked.push_back(i);
  }
  std::vector<std::string> mine;
  mine.reserve(asked.size());
  for (size_t i : asked) mine.push_back(tasks[i].id());
  if (to_shared) {
    own_allowed_ = false;
    ++shared_inserts_in_flight_;
    ++shared_inserts_seq_;
  }
  // May run at once, with mu_ held (a closed store refuses at once).
  std::vector<bool> owned = work_source_->InsertOwned(
      std::move(tasks), std::move(own),
      [this, mine, to_shared,
       done = std::move(done)](absl::StatusOr<std::vector<v1::Task>> stored) {
        if (to_shared) {
          --shared_inserts_in_flight_;
          ++shared_inserts_seq_;
        }
        if (!stored.ok()) {
          if (!mine.empty()) Abandon(mine);
          done(stored.status());
          return;
        }
        std::vector<InsertResult> results(stored->size());
        for (size_t i = 0; i < stored->size(); ++i) {
          metrics_.TaskSubmitted((*stored)[i].queue());
          results[i].task = std::move((*stored)[i]);
        }
        done(std::move(results));
      });
  for (size_t j = 0; j < asked.size(); ++j) {
    auto it = tasks_.find(mine[j]);
    if (it == tasks_.end()) continue;
    if (asked[j] < owned.size() && owned[asked[j]]) {
      ++taken_;
      EmitLocked(it->second.task, v1::TaskEvent::STATE, d);
    } else {
      // Not this node's (it is fenced): the shared queue has it.
      RemoveQueuedLocked(it->second);
      tasks_.erase(it);
      own_allowed_ = false;
    }
  }
  DispatchLocked(now, d);
  GiveBackStaleLocked(now);  // arms its timer for what stays queued
}

void Scheduler::WantClaimLocked(bool told) {
  if (stop_ || draining_ || claim_wanted_) return;
  // A node alone whose last claim found the shared queue empty takes what
  // is submitted to it at insert: a turn's end is no reason to look again
  // (work queued there is announced, and the fallback poll looks anyway).
  if (!told && own_allowed_ &&
      work_source_->HoldAlone() > absl::ZeroDuration()) {
    return;
  }
  // When the workers have room the local queue cannot fill, or half the
  // local buffer is used up.
  const int room = pool_.Room();
  LocalTargetLocked(clock_.Now());
  if (static_cast<int>(ready_.size()) < room + buffer_ / 2) {
    claim_wanted_ = true;
    WakeLocked();
  }
}

void Scheduler::GiveBackStaleLocked(absl::Time now) {
  // Tasks held here for `held_max` without a worker taking them were taken on
  // a rate that no longer holds (short tasks gave way to long ones): they
  // go back to the shared queue, where idle nodes claim them, and the
  // buffer starts again from nothing. A node alone holds tasks longer
  // (HoldAlone), but not until their leases need extending (lease/3).
  const absl::Duration held_max =
      std::max(absl::Milliseconds(100), 2 * work_source_->HoldAlone());
  const int room = pool_.Room();
  if (static_cast<int>(ready_.size()) <= room) {
    stale_check_at_ = absl::InfiniteFuture();
    return;
  }
  if (now < stale_check_at_ && stale_check_at_ != absl::InfiniteFuture()) {
    return;
  }
  // The loop wakes for the next look (Loop's sleep ends by then).
  stale_check_at_ = now + held_max / 2;
  WakeAtLocked(stale_check_at_);
  // Every task behind a stale one goes back with it, so that none passes
  // it: the shared queue keeps their order, and later submissions wait
  // there behind them (own_allowed_).
  std::vector<std::string> back;
  bool any_stale = false;
  int kept = 0;
  for (const ReadyKey& k : ready_) {
    // The next ones the workers take stay.
    if (kept++ < room) continue;
    back.push_back(k.id);
    auto it = tasks_.find(k.id);
    if (it != tasks_.end() && it->second.ready_at + held_max <= now) {
      any_stale = true;
    }
  }
  if (any_stale) {
    spdlog::debug("giving back {} tasks, some held for {} without a worker",
                  back.size(), absl::FormatDuration(held_max));
    for (const std::string& id : back) {
      auto it = tasks_.find(id);
      RemoveQueuedLocked(it->second);
      // QUEUED at the attempt before the claimed one: the fenced write
      // gives the claim back without counting an attempt.
      PersistAsync(it->second.task);
      tasks_.erase(it);
    }
    buffer_ = 0;
    taken_ = 0;
    taken_since_ = now;
    own_allowed_ = false;
  }
}

void Scheduler::ClaimForIdleWorkers() {
  int n = 0;
  {
    MutexLock lock(&mu_);
    GiveBackStaleLocked(clock_.Now());
    const bool wanted = claim_wanted_;
    claim_wanted_ = false;
    if (!wanted || stop_ || draining_) return;
    n = LocalTargetLocked(clock_.Now()) - static_cast<int>(ready_.size());
  }
  if (n <= 0) return;
  const bool none_in_flight = shared_inserts_in_flight_.load() == 0;
  const int64_t seq = shared_inserts_seq_.load();
  absl::StatusOr<std::vector<v1::Task>> claimed = work_source_->Claim(n);
  if (!claimed.ok()) {
    const absl::Time now = absl::Now();
    if (now - claim_error_logged_ > absl::Seconds(5)) {
      claim_error_logged_ = now;
      spdlog::error("claiming tasks failed: {}", claimed.status().ToString());
    }
    MutexLock lock(&mu_);
    own_allowed_ = false;
    return;
  }
  {
    MutexLock lock(&mu_);
    // Short: nothing older is waiting in the shared queue for this node,
    // unless an insert into it may have committed after the claim began.
    own_allowed_ = static_cast<int>(claimed->size()) < n && none_in_flight &&
                   shared_inserts_seq_.load() == seq;
    taken_ += static_cast<int64_t>(claimed->size());
  }
  if (claimed->empty()) return;
  Deferred d;
  {
    MutexLock lock(&mu_);
    const absl::Time now = clock_.Now();
    if (stop_ || draining_) {
      // Drained (or stopping) while the claim ran: a drained node runs
      // nothing new, so the claim goes back to the shared queue at once
      // (ReleaseClaimedLocked ran before these arrived).
      for (v1::Task& t : *claimed) {
        t.set_state(v1::QUEUED);
        t.set_attempt(t.attempt() - 1);
        t.clear_not_before();
        PersistAsync(t);
      }
      return;
    }
    for (v1::Task& t : *claimed) {
      Entry& e = tasks_[t.id()];
      if (e.task.state() == v1::RUNNING && !e.finishing) {
        // An older attempt of ours still runs (its lease was lost): its
        // outcome will be refused as stale, so it no longer counts.
        --running_;
      }
      e = Entry();
      // Queued locally as the attempt before the claimed one: dispatch
      // counts the attempt again, to the claimed number.
      t.set_state(v1::QUEUED);
      t.set_attempt(t.attempt() - 1);
      t.clear_not_before();
      e.task = std::move(t);
      EnqueueLocked(e, now);
    }
    DispatchLocked(now, d);
    GiveBackStaleLocked(now);  // arms its timer for what stays queued
    // A full claim suggests more is claimable.
    if (static_cast<int>(claimed->size()) == n) WantClaimLocked();
  }
  d.Run();
}

void Scheduler::ReleaseClaimedLocked() {
  std::vector<std::string> ids;
  for (const ReadyKey& k : ready_) ids.push_back(k.id);
  for (const std::string& id : ids) {
    auto it = tasks_.find(id);
    if (it == tasks_.end()) continue;
    RemoveQueuedLocked(it->second);
    // QUEUED at the attempt before the claimed one: the fenced write gives
    // the claim back without counting an attempt.
    PersistAsync(it->second.task);
    tasks_.erase(it);
  }
}

void Scheduler::OnLostAttempts(const std::vector<AttemptRef>& attempts,
                               bool fenced) {
  std::vector<AttemptRef> cancel;
  {
    MutexLock lock(&mu_);
    for (const AttemptRef& a : attempts) {
      auto it = tasks_.find(a.task_id);
      if (it == tasks_.end()) continue;
      // No longer this node's to finish: its waiters here read it from the
      // store (its end may have been announced while it was still local).
      if (waits_.Has(a.task_id) || watched_ids_.count(a.task_id) > 0) {
        remote_check_.push_back(a.task_id);
        remote_cv_.Signal();
      }
      Entry& e = it->second;
      if (fenced) {
        // Its terminal or retry write was refused: OnFinishPersisted drops
        // it without announcing anything.
        if (e.task.attempt() == a.attempt) {
          e.abandoned = true;
          metrics_.FencedCompletion();
        }
        continue;
      }
      if (e.task.state() == v1::RUNNING && e.task.attempt() == a.attempt &&
          !e.finishing) {
        e.abandoned = true;
        e.lease_lost = true;
        cancel.push_back(a);
      } else if (e.task.state() == v1::QUEUED &&
                 e.task.attempt() + 1 == a.attempt) {
        // Claimed but not started: nothing to stop.
        RemoveQueuedLocked(e);
        tasks_.erase(it);
      }
    }
  }
  for (const AttemptRef& a : cancel) {
    spdlog::warn("task {} attempt {}: lease lost; stopping it", a.task_id,
                 a.attempt);
    pool_.Cancel(a.task_id, a.attempt);
  }
}

bool Scheduler::RemoteLocked(const std::string& id) {
  auto it = tasks_.find(id);
  return it == tasks_.end() || it->second.abandoned;
}

void Scheduler::OnRemoteFinished(const std::vector<std::string>& ids) {
  // Runs on the store's notification thread: the reads happen on the
  // remote-wait thread, so heartbeats never wait for them.
  MutexLock lock(&mu_);
  if (ids.empty()) {
    remote_check_all_ = true;
  } else {
    for (const std::string& id : ids) {
      if ((waits_.Has(id) || watched_ids_.count(id) > 0) && RemoteLocked(id)) {
        remote_check_.push_back(id);
      }
    }
  }
  if (remote_check_all_ || !remote_check_.empty()) remote_cv_.Signal();
}

void Scheduler::RemoteWaitLoop() {
  // Ids per query: a few milliseconds of database work each.
  constexpr size_t kBatch = 1000;
  for (;;) {
    std::vector<std::string> ids;
    {
      MutexLock lock(&mu_);
      while (!stop_ && remote_check_.empty() && !remote_check_all_) {
        remote_cv_.Wait(&mu_);
      }
      if (stop_) return;
      if (remote_check_all_) {
        remote_check_all_ = false;
        remote_check_.clear();
        for (std::string& id : waits_.TaskIds()) {
          if (RemoteLocked(id)) ids.push_back(std::move(id));
        }
        for (const auto& [id, n] : watched_ids_) {
          if (RemoteLocked(id)) ids.push_back(id);
        }
      } else {
        ids.swap(remote_check_);
      }
    }
    std::sort(ids.begin(), ids.end());
    ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
    for (size_t i = 0; i < ids.size(); i += kBatch) {
      CheckRemoteWaits(std::vector<std::string>(
          ids.begin() + i, ids.begin() + std::min(ids.size(), i + kBatch)));
    }
  }
}

void Scheduler::CheckRemoteWaits(const std::vector<std::string>& ids) {
  absl::StatusOr<WorkSource::Ended> read = work_source_->ReadEnded(ids);
  if (!read.ok()) {
    // The waits stay parked: the periodic re-check of every remote wait
    // (or their timeout) answers them.
    const absl::Time now = absl::Now();
    if (now - remote_error_logged_ > absl::Seconds(5)) {
      remote_error_logged_ = now;
      spdlog::error("reading tasks of remote waits failed: {}",
                    read.status().ToString());
    }
    return;
  }
  std::vector<std::pair<WaitDone, absl::StatusOr<v1::Task>>> answers;
  Deferred d;
  {
    MutexLock lock(&mu_);
    for (const v1::Task& t : read->terminal) {
      const std::string& id = t.id();
      if (!RemoteLocked(id)) continue;
      if (watched_ids_.count(id) > 0) {
        // Its watchers here end with the stored terminal state (complete,
        // unlike a notified event, which may lack payload and result).
        auto event = std::make_shared<v1::TaskEvent>();
        event->set_type(v1::TaskEvent::STATE);
        *event->mutable_task() = t;
        *event->mutable_time() = ToProto(clock_.Now());
        for (auto w = watchers_.begin(); w != watchers_.end();) {
          if (w->second.task_id != id) {
            ++w;
            continue;
          }
          d.Add([fn = w->second.fn, event] { fn(*event); });
          WatchRemoteLocked(w->second, false);
          w = watchers_.erase(w);
        }
      }
      for (WaitDone& done : waits_.TakeTask(id)) {
        answers.emplace_back(std::move(done), t);
      }
    }
    for (const std::string& id : read->unknown) {
      if (!RemoteLocked(id)) continue;
      for (WaitDone& done : waits_.TakeTask(id)) {
        answers.emplace_back(std::move(done), absl::NotFoundError(absl::StrCat(
                                                  "task ", id, " not found")));
      }
    }
  }
  d.Run();
  for (auto& [done, task] : answers) {
    const bool terminal = task.ok();
    done(std::move(task), terminal);
  }
}

void Scheduler::WatchRemoteLocked(const Watcher& w, bool on) {
  if (!w.task_id.empty()) {
    work_source_->SetWatched(absl::StrCat("t:", w.task_id), on);
    if (on) {
      ++watched_ids_[w.task_id];
    } else if (auto it = watched_ids_.find(w.task_id);
               it != watched_ids_.end() && --it->second <= 0) {
      watched_ids_.erase(it);
    }
  } else {
    work_source_->SetWatched(absl::StrCat("q:", w.queue), on);
  }
}

void Scheduler::OnRemoteEvents(const std::vector<v1::TaskEvent>& events) {
  Deferred d;
  {
    MutexLock lock(&mu_);
    for (const v1::TaskEvent& e : events) {
      const v1::Task& t = e.task();
      // Events of a task this node runs are its own to emit.
      if (!RemoteLocked(t.id())) continue;
      const bool terminal =
          e.type() == v1::TaskEvent::STATE && IsTerminal(t.state());
      std::shared_ptr<const v1::TaskEvent> event;
      for (const auto& [h, w] : watchers_) {
        // A task watcher's terminal event comes from the store
        // (CheckRemoteWaits), complete and exactly once.
        const bool match = w.task_id.empty()
                               ? (w.queue == "*" || w.queue == t.queue())
                               : (w.task_id == t.id() && !terminal);
        if (!match) continue;
        if (event == nullptr) event = std::make_shared<v1::TaskEvent>(e);
        d.Add([fn = w.fn, event] { fn(*event); });
      }
    }
  }
  d.Run();
}

void Scheduler::OnRemoteCancel(const std::vector<AttemptRef>& attempts) {
  std::vector<std::string> ids;
  {
    MutexLock lock(&mu_);
    for (const AttemptRef& a : attempts) {
      auto it = tasks_.find(a.task_id);
      if (it == tasks_.end() || it->second.finishing || it->second.abandoned) {
        continue;
      }
      const v1::Task& t = it->second.task;
      // Running that attempt, or claimed for it and not started yet.
      if ((t.state() == v1::RUNNING && t.attempt() == a.attempt) ||
          (t.state() == v1::QUEUED && t.attempt() + 1 == a.attempt)) {
        ids.push_back(a.task_id);
      }
    }
  }
  for (const std::string& id : ids) {
    spdlog::info("task {}: cancel asked through another node", id);
    Cancel(id, [](const absl::StatusOr<v1::Task>&) {});
  }
}

void Scheduler::CancelRemote(absl::string_view id, const TaskDone& done) {
  absl::StatusOr<WorkSource::CancelResult> r =
      work_source_->CancelTask(std::string(id));
  if (!r.ok()) {
    done(r.status());
    return;
  }
  if (!r->cancelled && !r->requested) {
    done(absl::FailedPreconditionError(absl::StrCat(
        "task ", id, " is already ", v1::TaskState_Name(r->task.state()))));
    return;
  }
  if (r->cancelled) metrics_.TaskFinished(r->task.queue(), "cancelled");
  done(std::move(r->task));
}

}  // namespace forq::server
