// The scheduler's cluster-mode parts: claims from the shared store for idle
// workers, attempts whose lease was lost or whose write was fenced, and
// waits on tasks that other nodes finish. Single-node forqd never runs
// this code (work_source_ is null).
#include <algorithm>
#include <utility>

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
  absl::Status s = work_source_->StartCluster(std::move(cb));
  if (s.ok()) {
    spdlog::info("cluster mode: node {} incarnation {} claims shared work",
                 work_source_->node_id(), work_source_->incarnation());
  }
  return s;
}

void Scheduler::WantClaimLocked() {
  if (stop_ || draining_ || claim_wanted_) return;
  if (pool_.Room() > static_cast<int>(ready_.size())) {
    claim_wanted_ = true;
    WakeLocked();
  }
}

void Scheduler::ClaimForIdleWorkers() {
  int n = 0;
  {
    MutexLock lock(&mu_);
    const bool wanted = claim_wanted_;
    claim_wanted_ = false;
    if (!wanted || stop_ || draining_) return;
    n = pool_.Room() - static_cast<int>(ready_.size());
  }
  if (n <= 0) return;
  absl::StatusOr<std::vector<v1::Task>> claimed = work_source_->Claim(n);
  if (!claimed.ok()) {
    const absl::Time now = absl::Now();
    if (now - claim_error_logged_ > absl::Seconds(5)) {
      claim_error_logged_ = now;
      spdlog::error("claiming tasks failed: {}", claimed.status().ToString());
    }
    return;
  }
  if (claimed->empty()) return;
  Deferred d;
  {
    MutexLock lock(&mu_);
    const absl::Time now = clock_.Now();
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

void Scheduler::OnRemoteFinished(const std::vector<std::string>& ids) {
  std::vector<std::string> check;
  {
    MutexLock lock(&mu_);
    auto remote = [&](const std::string& id) {
      mu_.AssertHeld();  // Called only below, under the lock.
      auto it = tasks_.find(id);
      return it == tasks_.end() || it->second.abandoned;
    };
    if (ids.empty()) {
      for (std::string& id : waits_.TaskIds()) {
        if (remote(id)) check.push_back(std::move(id));
      }
    } else {
      for (const std::string& id : ids) {
        if (waits_.Has(id) && remote(id)) check.push_back(id);
      }
    }
  }
  for (const std::string& id : check) {
    absl::StatusOr<v1::Task> t = store_.Get(id);
    if (!t.ok() || !IsTerminal(t->state())) continue;
    std::vector<WaitDone> waiters;
    {
      MutexLock lock(&mu_);
      waiters = waits_.TakeTask(id);
    }
    for (WaitDone& done : waiters) done(*t, true);
  }
}

}  // namespace forq::server
