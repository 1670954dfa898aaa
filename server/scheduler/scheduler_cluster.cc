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
  absl::Status s = work_source_->StartCluster(std::move(cb));
  if (!s.ok()) return s;
  remote_thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "forq-remote-wait");
    RemoteWaitLoop();
  });
  spdlog::info("cluster mode: node {} incarnation {} claims shared work",
               work_source_->node_id(), work_source_->incarnation());
  return absl::OkStatus();
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
      if (waits_.Has(id) && RemoteLocked(id)) remote_check_.push_back(id);
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
  absl::StatusOr<std::vector<v1::Task>> read = work_source_->ReadTasks(ids);
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
  absl::flat_hash_map<std::string, v1::Task*> found;
  for (v1::Task& t : *read) found[t.id()] = &t;
  std::vector<std::pair<WaitDone, absl::StatusOr<v1::Task>>> answers;
  {
    MutexLock lock(&mu_);
    for (const std::string& id : ids) {
      if (!waits_.Has(id) || !RemoteLocked(id)) continue;
      auto f = found.find(id);
      if (f == found.end()) {
        for (WaitDone& done : waits_.TakeTask(id)) {
          answers.emplace_back(
              std::move(done),
              absl::NotFoundError(absl::StrCat("task ", id, " not found")));
        }
      } else if (IsTerminal(f->second->state())) {
        for (WaitDone& done : waits_.TakeTask(id)) {
          answers.emplace_back(std::move(done), *f->second);
        }
      }
    }
  }
  for (auto& [done, task] : answers) {
    const bool terminal = task.ok();
    done(std::move(task), terminal);
  }
}

}  // namespace forq::server
