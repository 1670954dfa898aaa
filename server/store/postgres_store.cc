// PostgresStore: the write queue, the writer and callback threads, the
// group commit, and the calls that queue writes. The statements of a group
// are in postgres_store_write.cc.
#include "server/store/postgres_store.h"

#include <algorithm>

#include "absl/container/flat_hash_map.h"
#include "spdlog/spdlog.h"

#include "server/store/postgres_internal.h"

#include <libpq-fe.h>

namespace forq::server {

namespace {

constexpr size_t kMaxWritesPerGroup = 2048;

}  // namespace

std::unique_ptr<PostgresStore::PendingWrite> PostgresStore::Enqueue(
    std::unique_ptr<PendingWrite> op) {
  MutexLock lock(&queue_mu_);
  if (closing_) return op;
  const bool was_empty = queue_.empty();
  queue_.push_back(std::move(op));
  if (was_empty) queue_cv_.Signal();
  return nullptr;
}

void PostgresStore::Refuse(std::unique_ptr<PendingWrite> op) {
  if (op != nullptr) {
    op->Finish(absl::UnavailableError("postgres store: closed"));
  }
}

void PostgresStore::WriterLoop() {
  for (;;) {
    std::vector<std::unique_ptr<PendingWrite>> group;
    {
      MutexLock lock(&queue_mu_);
      while (queue_.empty() && !closing_) queue_cv_.Wait(&queue_mu_);
      if (queue_.empty()) return;  // Closing, all written.
      const size_t n = std::min(queue_.size(), kMaxWritesPerGroup);
      group.reserve(n);
      for (size_t i = 0; i < n; ++i) {
        group.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
    }
    CommitGroup(group);
  }
}

void PostgresStore::Deliver(std::vector<Committed> done) {
  if (done.empty()) return;
  MutexLock lock(&done_mu_);
  const bool was_empty = done_.empty();
  for (Committed& c : done) done_.push_back(std::move(c));
  if (was_empty) done_cv_.Signal();
}

void PostgresStore::CallbackLoop() {
  for (;;) {
    std::vector<Committed> batch;
    {
      MutexLock lock(&done_mu_);
      while (done_.empty() && !done_closing_) done_cv_.Wait(&done_mu_);
      if (done_.empty()) return;
      batch.swap(done_);
    }
    for (auto& [op, status] : batch) op->Finish(std::move(status));
  }
}

void PostgresStore::CommitGroup(
    std::vector<std::unique_ptr<PendingWrite>>& group) {
  // Of several updates of one task in a group only the last needs a row.
  absl::flat_hash_map<absl::string_view, std::pair<size_t, size_t>> last;
  for (size_t i = 0; i < group.size(); ++i) {
    PendingWrite& op = *group[i];
    if (op.type != PendingWrite::Type::kUpdate) continue;
    op.superseded.assign(op.tasks.size(), false);
    for (size_t j = 0; j < op.tasks.size(); ++j) {
      auto [it, inserted] = last.try_emplace(op.tasks[j].id(), i, j);
      if (!inserted) {
        group[it->second.first]->superseded[it->second.second] = true;
        it->second = {i, j};
      }
    }
  }
  std::vector<absl::Status> statuses(group.size());
  absl::Status txn_status = writer_->EnsureOk();
  if (txn_status.ok()) {
    txn_status = RunGroup(group, statuses, /*isolated=*/false);
  }
  if (txn_status.code() == absl::StatusCode::kAborted) {
    for (auto& op : group) op->superseded.clear();
    txn_status = RunGroup(group, statuses, /*isolated=*/true);
  }
  std::vector<Committed> done;
  done.reserve(group.size());
  if (!txn_status.ok()) {
    spdlog::error("{} ({} writes failed)", std::string(txn_status.message()),
                  group.size());
    for (auto& op : group) {
      SettleOwnedInserts(*op, /*committed=*/false);
      done.push_back({std::move(op), txn_status});
    }
    Deliver(std::move(done));
    return;
  }
  for (size_t i = 0; i < group.size(); ++i) {
    SettleOwnedInserts(*group[i], statuses[i].ok());
  }
  if (after_commit_hook_) after_commit_hook_();
  if (cluster_.enabled) {
    // Committed: attempts written out of RUNNING (or refused) are no longer
    // this node's. The refusals are reported before any ack, so the
    // scheduler drops those outcomes instead of announcing them.
    std::vector<AttemptRef> fenced;
    {
      MutexLock lock(&owned_mu_);
      for (size_t i = 0; i < group.size(); ++i) {
        if (!statuses[i].ok()) continue;
        // Only the claim the write was fenced by: the task may have been
        // claimed again since the commit (a give-back re-claimed at once).
        for (const auto& [a, claim] : group[i]->released) {
          auto it = owned_.find(a.task_id);
          if (it != owned_.end() && it->second.claim == claim) {
            owned_.erase(it);
          }
        }
        // Refused ones stay fenced: a later write of the same attempt must
        // not pass as a plain write.
        for (const auto& [a, claim] : group[i]->fenced) {
          auto it = owned_.find(a.task_id);
          if (it != owned_.end() && it->second.claim == claim &&
              !it->second.lost) {
            it->second.lost = true;
            it->second.lost_at = absl::Now();
          }
          fenced.push_back(a);
        }
      }
    }
    if (!fenced.empty()) {
      fenced_writes_.fetch_add(static_cast<int64_t>(fenced.size()),
                               std::memory_order_relaxed);
      for (const AttemptRef& a : fenced) {
        spdlog::warn(
            "write of task {} attempt {} refused: the attempt is no longer "
            "this node's",
            a.task_id, a.attempt);
      }
      Callbacks cb = callbacks();
      if (cb.fenced) cb.fenced(fenced);
    }
  }
  for (size_t i = 0; i < group.size(); ++i) {
    PendingWrite& op = *group[i];
    if (op.type == PendingWrite::Type::kInsert && statuses[i].ok()) {
      for (size_t j = 0; j < op.results.size(); ++j) {
        if (!op.results[j].existing) {
          op.results[j].task = std::move(op.tasks[j]);
        }
      }
    }
    done.push_back({std::move(group[i]), std::move(statuses[i])});
  }
  Deliver(std::move(done));
}

void PostgresStore::Insert(std::vector<v1::Task> tasks, InsertDone done) {
  auto op = std::make_unique<PendingWrite>();
  op->type = PendingWrite::Type::kInsert;
  op->tasks = std::move(tasks);
  op->insert_done = std::move(done);
  Refuse(Enqueue(std::move(op)));
}

std::vector<bool> PostgresStore::InsertOwned(
    std::vector<v1::Task> tasks, std::vector<bool> own,
    std::function<void(absl::StatusOr<std::vector<v1::Task>>)> done) {
  own.resize(tasks.size(), false);
  auto op = std::make_unique<PendingWrite>();
  op->type = PendingWrite::Type::kInsert;
  {
    // Registered before the insert is queued, so every later write of
    // these attempts is fenced like a claimed attempt's.
    MutexLock lock(&owned_mu_);
    const bool can = cluster_.enabled && !self_fenced_;
    op->own_incarnation = incarnation();
    for (size_t i = 0; i < tasks.size(); ++i) {
      const v1::Task& t = tasks[i];
      if (!own[i]) continue;
      if (!can || !t.idempotency_key().empty() || t.state() != v1::QUEUED) {
        own[i] = false;
        continue;
      }
      Owned o;
      o.attempt = t.attempt() + 1;
      o.claim = ++last_claim_;
      o.inserting = true;
      owned_[t.id()] = o;
      op->own_claims.emplace_back(t.id(), o.claim);
    }
  }
  op->own = own;
  op->tasks = std::move(tasks);
  op->insert_done =
      [done = std::move(done)](absl::StatusOr<std::vector<InsertResult>> r) {
        if (!r.ok()) {
          done(r.status());
          return;
        }
        std::vector<v1::Task> tasks;
        tasks.reserve(r->size());
        for (InsertResult& one : *r) tasks.push_back(std::move(one.task));
        done(std::move(tasks));
      };
  std::unique_ptr<PendingWrite> refused = Enqueue(std::move(op));
  if (refused != nullptr) {
    SettleOwnedInserts(*refused, /*committed=*/false);
    Refuse(std::move(refused));
  }
  return own;
}

void PostgresStore::SettleOwnedInserts(const PendingWrite& op, bool committed) {
  if (op.own_claims.empty()) return;
  MutexLock lock(&owned_mu_);
  const absl::Time now = absl::Now();
  for (const auto& [id, claim] : op.own_claims) {
    auto it = owned_.find(id);
    if (it == owned_.end() || it->second.claim != claim) continue;
    it->second.inserting = false;
    if (!committed && !it->second.lost) {
      // No row: a later write of the attempt is refused as fenced.
      it->second.lost = true;
      it->second.lost_at = now;
    }
  }
}

void PostgresStore::Update(std::vector<v1::Task> tasks, WriteDone done) {
  auto op = std::make_unique<PendingWrite>();
  op->type = PendingWrite::Type::kUpdate;
  op->tasks = std::move(tasks);
  op->write_done = std::move(done);
  Refuse(Enqueue(std::move(op)));
}

void PostgresStore::PutObject(std::string name, std::string blob,
                              WriteDone done) {
  auto op = std::make_unique<PendingWrite>();
  op->type = PendingWrite::Type::kPutObject;
  op->name = std::move(name);
  op->blob = std::move(blob);
  op->write_done = std::move(done);
  Refuse(Enqueue(std::move(op)));
}

void PostgresStore::DeleteObject(std::string name, WriteDone done) {
  auto op = std::make_unique<PendingWrite>();
  op->type = PendingWrite::Type::kDeleteObject;
  op->name = std::move(name);
  op->write_done = std::move(done);
  Refuse(Enqueue(std::move(op)));
}

void PostgresStore::WriteObjects(std::vector<ObjectWrite> writes,
                                 WriteDone done) {
  auto op = std::make_unique<PendingWrite>();
  op->type = PendingWrite::Type::kObjects;
  op->objects = std::move(writes);
  op->write_done = std::move(done);
  Refuse(Enqueue(std::move(op)));
}

}  // namespace forq::server
