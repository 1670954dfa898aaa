// Persistence of data objects: recovery, rollback, and the ordered,
// one-batch-at-a-time write queue whose completions release the replies.
// The row format is in object_manager_rows.cc.
#include <atomic>
#include <cstdio>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

#include "common/notification.h"
#include "server/manager/object_manager.h"
#include "server/manager/object_util.h"

namespace forq::server {

using namespace manager_internal;  // NOLINT(google-build-using-namespace):
                                   // internal helpers

// ------------------------------------------------------------ marks

ObjectManager::Dirty& ObjectManager::DirtyOf(DirtyList& list,
                                             const std::string& name) {
  for (auto& [n, d] : list) {
    if (n == name) return d;
  }
  return list.emplace_back(name, Dirty()).second;
}

void ObjectManager::Dirty::Merge(Dirty&& d) {
  all = all || d.all;
  for (std::string& k : d.keys) keys.push_back(std::move(k));
  positions.insert(positions.end(), d.positions.begin(), d.positions.end());
  if (d.from) from = from ? std::min(*from, *d.from) : d.from;
}

void ObjectManager::MarkKeyLocked(Batch& b, const std::string& name,
                                  const std::string& key) {
  b.op_marked = true;
  if (store_ != nullptr) DirtyOf(b.dirty, name).keys.push_back(key);
}

void ObjectManager::MarkPosLocked(Batch& b, const std::string& name,
                                  int64_t pos) {
  b.op_marked = true;
  if (store_ != nullptr) DirtyOf(b.dirty, name).positions.push_back(pos);
}

void ObjectManager::MarkFromLocked(Batch& b, const std::string& name,
                                   int64_t pos) {
  b.op_marked = true;
  if (store_ == nullptr) return;
  Dirty& d = DirtyOf(b.dirty, name);
  d.from = d.from ? std::min(*d.from, pos) : pos;
}

// ------------------------------------------------------------ recovery

absl::Status ObjectManager::Recover() {
  if (store_ == nullptr) return absl::OkStatus();
  FORQ_ASSIGN_OR_RETURN(auto blobs, store_->LoadObjects());
  RowLog::Replayed replayed = RowLog::Replay(std::move(blobs));
  std::string epoch_blob;
  std::map<std::string, StoredRows> stored =
      GroupRows(std::move(replayed.rows), &epoch_blob);
  uint64_t stored_epoch = 0;
  if (!epoch_blob.empty()) {
    BlobReader r(epoch_blob);
    if (!r.U64(&stored_epoch)) spdlog::warn("manager: corrupt epoch blob");
  }
  int loaded = 0, skipped = 0;
  std::vector<Store::ObjectWrite> cleanup;
  {
    MutexLock lock(&mu_);
    for (const auto& [name, rows] : stored) {
      Object o;
      std::vector<std::string> orphans;
      const bool ok = ParseStoredObject(name, rows, &o, &orphans);
      for (std::string& key : orphans) {
        cleanup.push_back({std::move(key), std::nullopt});
      }
      if (!ok) {
        if (!rows.header.empty()) {
          spdlog::warn("manager: skipping corrupt persisted object '{}'",
                       absl::CHexEscape(name));
          ++skipped;
        }
        continue;
      }
      total_bytes_ += ObjectBytes(o);
      objects_[name] = std::move(o);
      ++loaded;
    }
    epoch_ = stored_epoch + 1;
    UpdateGaugesLocked();
  }
  const size_t records = replayed.applied;
  // The new epoch must be durable before any token of it is handed out, or
  // a crash could make the next start reuse it. Rows no object owns any
  // more (a whole rewrite left the old generation) go in the same batch,
  // which also compacts the log found.
  BlobWriter w;
  w.U64(stored_epoch + 1);
  cleanup.push_back({kEpochKey, std::move(w.out())});
  const size_t orphans = cleanup.size() - 1;
  std::vector<Store::ObjectWrite> writes;
  {
    MutexLock lock(&mu_);
    row_log_.Reset(replayed);
    writes = row_log_.Prepare(std::move(cleanup), /*compact=*/true);
  }
  Notification written;
  absl::Status write_status;
  store_->WriteObjects(std::move(writes),
                       [&written, &write_status](absl::Status s) {
                         write_status = std::move(s);
                         written.Notify();
                       });
  // The callback references the locals: wait for it without a bound (the
  // store owes us a call).
  written.WaitForNotification();
  {
    MutexLock lock(&mu_);
    row_log_.Done(write_status.ok());
  }
  FORQ_RETURN_IF_ERROR(write_status);
  spdlog::info(
      "manager: recovered {} objects ({} skipped, {} stale rows removed, {} "
      "log records compacted), token epoch {}",
      loaded, skipped, orphans, records, stored_epoch + 1);
  return absl::OkStatus();
}

// ------------------------------------------------------------ writes

namespace {

// Set while this thread is inside Store::WriteObjects: a callback it runs
// then is an inline refusal, reported after mu_ is released.
thread_local bool t_in_write_objects = false;

// Moves `replies` to `out`, successes turned into Unavailable: what they
// changed was not persisted.
template <typename Completions>
void FailReplies(Completions& replies, const absl::Status& why,
                 Completions& out) {
  for (auto& [done, reply] : replies) {
    out.emplace_back(std::move(done),
                     reply.ok()
                         ? absl::UnavailableError(absl::StrCat(
                               "manager change not persisted, so not applied: ",
                               why.message()))
                         : std::move(reply));
  }
  replies.clear();
}

}  // namespace

void ObjectManager::PendObjectLocked(const std::string& name) {
  if (pending_.objects.insert(name).second) ++unpersisted_[name];
}

void ObjectManager::QueueWritesLocked(Batch& b) {
  if (store_ == nullptr) {
    b.dirty.clear();
    b.writes.clear();
    b.written.clear();
    return;
  }
  bool changed = false;
  for (auto& [name, d] : b.dirty) {
    auto it = objects_.find(name);
    if (it == objects_.end() || !Persistent(it->second.type)) continue;
    auto [pit, fresh] = pending_.dirty.try_emplace(name);
    if (fresh) {
      pit->second = std::move(d);
    } else {
      pit->second.Merge(std::move(d));
    }
    PendObjectLocked(name);
    changed = true;
  }
  b.dirty.clear();
  if (!b.writes.empty()) {
    for (Store::ObjectWrite& w : b.writes) {
      pending_.writes.push_back(std::move(w));
    }
    for (const std::string& name : b.written) PendObjectLocked(name);
    b.writes.clear();
    b.written.clear();
    changed = true;
  }
  if (changed || b.hold) {
    // The replies ride along and are sent once the writes are durable.
    for (Completion& c : b.replies) pending_.replies.push_back(std::move(c));
    b.replies.clear();
    b.hold = false;
  }
  StartPersistLocked(b);
}

void ObjectManager::HoldWrites() {
  MutexLock lock(&mu_);
  ++write_holds_;
}

void ObjectManager::ReleaseWrites() {
  Batch b;
  {
    MutexLock lock(&mu_);
    if (--write_holds_ > 0) return;
    StartPersistLocked(b);
  }
  Finish(b);
}

void ObjectManager::StartPersistLocked(Batch& b) {
  if (pending_.empty() || !failed_.ok() || write_holds_ > 0) return;
  const bool rows = !pending_.dirty.empty() || !pending_.writes.empty();
  if (!in_flight_.empty()) {
    if (!rows) {
      // Only reads waiting for batches in flight: they go with the last.
      for (Completion& c : pending_.replies) {
        in_flight_.back()->replies.push_back(std::move(c));
      }
      pending_.replies.clear();
      return;
    }
    if (in_flight_.size() >= options_.max_batches_in_flight ||
        in_flight_.back()->compaction || !row_log_.CanAppend()) {
      return;
    }
  }
  auto send = std::make_shared<PersistSend>();
  const bool deletes = !pending_.writes.empty();
  std::vector<Store::ObjectWrite> writes = std::move(pending_.writes);
  for (auto& [name, d] : pending_.dirty) {
    auto it = objects_.find(name);
    if (it == objects_.end() || !Persistent(it->second.type)) continue;
    RowWritesLocked(name, it->second, d, writes);
  }
  if (deletes) {
    // A row written after a delete of the same row wins; keep one of each.
    std::map<std::string, size_t> pos;
    std::vector<Store::ObjectWrite> unique;
    for (Store::ObjectWrite& w : writes) {
      auto [it, fresh] = pos.emplace(w.name, unique.size());
      if (fresh) {
        unique.push_back(std::move(w));
      } else {
        unique[it->second].blob = std::move(w.blob);
      }
    }
    writes = std::move(unique);
  }
  send->objects.assign(pending_.objects.begin(), pending_.objects.end());
  send->replies = std::move(pending_.replies);
  pending_ = PendingPersist();
  if (writes.empty()) {
    // No rows to write (only reads waiting for earlier batches, which are
    // durable by now): it completes at once.
    for (const std::string& name : send->objects) {
      auto it = unpersisted_.find(name);
      if (it != unpersisted_.end() && --it->second <= 0) unpersisted_.erase(it);
    }
    for (Completion& c : send->replies) b.replies.push_back(std::move(c));
    return;
  }
  writes = row_log_.Prepare(std::move(writes));
  send->compaction = row_log_.last_was_compaction();
  SendLocked(std::move(send), std::move(writes), b);
}

void ObjectManager::SendLocked(std::shared_ptr<PersistSend> send,
                               std::vector<Store::ObjectWrite> writes,
                               Batch& b) {
  in_flight_.push_back(send);
  {
    MutexLock lock(&persist_mu_);
    ++persist_callbacks_;
  }
  // Handed over under mu_, so batches reach the store in order.
  t_in_write_objects = true;
  store_->WriteObjects(std::move(writes), [this, send](absl::Status s) {
    if (t_in_write_objects) {
      send->refused = true;
      send->status = std::move(s);
      return;
    }
    // OnPersisted answers callers, who may then destroy the manager, and
    // goes on using it: the destructor waits for this count.
    OnPersisted(std::move(s), send);
    MutexLock lock(&persist_mu_);
    --persist_callbacks_;
    persist_callbacks_done_.SignalAll();
  });
  t_in_write_objects = false;
  if (send->refused) b.refused.push_back(std::move(send));
}

void ObjectManager::Finish(Batch& b) {
  for (uint64_t t : b.cancel_timers) timers_.Cancel(t);
  for (auto& [done, reply] : b.replies) done(std::move(reply));
  b.replies.clear();
  for (auto& sink : b.flush) sink->Flush();
  for (std::shared_ptr<PersistSend>& send : b.refused) {
    OnPersisted(send->status, send);
    MutexLock lock(&persist_mu_);
    --persist_callbacks_;
    persist_callbacks_done_.SignalAll();
  }
  b.refused.clear();
}

void ObjectManager::OnPersisted(absl::Status status,
                                const std::shared_ptr<PersistSend>& sent) {
  Batch b;
  {
    MutexLock lock(&mu_);
    sent->done = true;
    sent->status = std::move(status);
    // Batches complete in order; a refused one may report before the one
    // ahead of it.
    while (!in_flight_.empty() && in_flight_.front()->done) {
      std::shared_ptr<PersistSend> oldest = std::move(in_flight_.front());
      in_flight_.pop_front();
      CompleteSendLocked(*oldest, b);
    }
    if (!failed_.ok() && in_flight_.empty()) RollbackFailedLocked(b);
    QueueWritesLocked(b);
    persist_cv_.SignalAll();
  }
  Finish(b);
}

void ObjectManager::CompleteSendLocked(PersistSend& sent, Batch& b) {
  row_log_.Done(sent.status.ok());
  if (failed_.ok() && sent.status.ok()) {
    for (const std::string& name : sent.objects) {
      auto it = unpersisted_.find(name);
      if (it != unpersisted_.end() && --it->second <= 0) unpersisted_.erase(it);
    }
    for (Completion& c : sent.replies) b.replies.push_back(std::move(c));
    return;
  }
  if (failed_.ok()) {
    spdlog::error("manager: store write failed, rolling back: {}",
                  sent.status.ToString());
    failed_ = sent.status;
  }
  // A batch behind a failed one was computed on top of it: it fails too,
  // whatever the store did with it (replay skips it).
  failed_objects_.insert(sent.objects.begin(), sent.objects.end());
  FailReplies(sent.replies, failed_, b.replies);
}

void ObjectManager::RollbackFailedLocked(Batch& b) {
  // Everything pending behind the failed batches was computed on top of
  // them.
  std::set<std::string> names = std::move(failed_objects_);
  names.insert(pending_.objects.begin(), pending_.objects.end());
  FailReplies(pending_.replies, failed_, b.replies);
  pending_ = PendingPersist();
  // Nothing is pending or in flight any more.
  unpersisted_.clear();
  RollbackLocked(names, b);
  UpdateGaugesLocked();
  failed_ = absl::OkStatus();
  failed_objects_.clear();
}

void ObjectManager::RollbackLocked(const std::set<std::string>& names,
                                   Batch& b) {
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> blobs =
      store_->LoadObjects();
  std::map<std::string, StoredRows> stored;
  if (blobs.ok()) {
    RowLog::Replayed replayed = RowLog::Replay(*std::move(blobs));
    // The log as the store holds it, whatever became of the failed batch.
    row_log_.Reset(replayed);
    std::string epoch;
    stored = GroupRows(std::move(replayed.rows), &epoch);
  } else {
    spdlog::error("manager: cannot reload objects to roll back: {}",
                  blobs.status().ToString());
  }
  for (const std::string& name : names) {
    auto it = objects_.find(name);
    Object restored;
    std::vector<std::string> orphans;
    auto sit = stored.find(name);
    const bool exists =
        sit != stored.end() &&
        ParseStoredObject(name, sit->second, &restored, &orphans);
    if (!exists) {
      if (it == objects_.end()) continue;
      // The store never had it: it goes, and so do its waiters.
      FailWaitersLocked(
          it->second,
          absl::AbortedError(absl::StrCat(
              "'", name, "' was rolled back: its creation was not persisted")),
          b);
      total_bytes_ -= std::min(total_bytes_, ObjectBytes(it->second));
      objects_.erase(it);
      continue;
    }
    if (it == objects_.end()) {
      total_bytes_ += ObjectBytes(restored);
      it = objects_.emplace(name, std::move(restored)).first;
    } else {
      total_bytes_ -= std::min(total_bytes_, ObjectBytes(it->second));
      total_bytes_ += ObjectBytes(restored);
      restored.waiters = std::move(it->second.waiters);
      restored.version = std::max(restored.version, it->second.version) + 1;
      it->second = std::move(restored);
    }
    // No pump here: it could write again while the store still fails.
    // Waiters are served by the next operation on the object.
  }
}

}  // namespace forq::server
