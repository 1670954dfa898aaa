// Persistence of data objects: recovery, rollback, and the ordered,
// one-batch-at-a-time write queue whose completions release the replies.
// The row format is in object_manager_rows.cc.
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

void ObjectManager::MarkKeyLocked(Batch& b, const std::string& name,
                                  const std::string& key) {
  b.op_marked = true;
  if (store_ != nullptr) b.dirty[name].keys.insert(key);
}

void ObjectManager::MarkPosLocked(Batch& b, const std::string& name,
                                  int64_t pos) {
  b.op_marked = true;
  if (store_ != nullptr) b.dirty[name].positions.insert(pos);
}

void ObjectManager::MarkFromLocked(Batch& b, const std::string& name,
                                   int64_t pos) {
  b.op_marked = true;
  if (store_ == nullptr) return;
  Dirty& d = b.dirty[name];
  d.from = d.from ? std::min(*d.from, pos) : pos;
}

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
  const size_t records = replayed.records.size();
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
      Dirty& into = pit->second;
      into.all = into.all || d.all;
      into.keys.merge(d.keys);
      into.positions.merge(d.positions);
      if (d.from)
        into.from = into.from ? std::min(*into.from, *d.from) : d.from;
    }
    PendObjectLocked(name);
    changed = true;
  }
  b.dirty.clear();
  if (!b.writes.empty()) {
    for (Store::ObjectWrite& w : b.writes)
      pending_.writes.push_back(std::move(w));
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

void ObjectManager::StartPersistLocked(Batch& b) {
  if (persisting_ || pending_.empty()) return;
  auto send = std::make_shared<PersistSend>();
  const bool deletes = !pending_.writes.empty();
  send->writes = std::move(pending_.writes);
  for (auto& [name, d] : pending_.dirty) {
    auto it = objects_.find(name);
    if (it == objects_.end() || !Persistent(it->second.type)) continue;
    RowWritesLocked(name, it->second, d, send->writes);
  }
  if (deletes) {
    // A row written after a delete of the same row wins; keep one of each.
    std::map<std::string, size_t> pos;
    std::vector<Store::ObjectWrite> unique;
    for (Store::ObjectWrite& w : send->writes) {
      auto [it, fresh] = pos.emplace(w.name, unique.size());
      if (fresh) {
        unique.push_back(std::move(w));
      } else {
        unique[it->second].blob = std::move(w.blob);
      }
    }
    send->writes = std::move(unique);
  }
  if (!send->writes.empty()) {
    send->writes = row_log_.Prepare(std::move(send->writes));
  }
  send->objects.assign(pending_.objects.begin(), pending_.objects.end());
  send->replies = std::move(pending_.replies);
  pending_ = PendingPersist();
  // With no rows to write (only reads waiting for earlier batches, which
  // are durable by now) it completes at once, in Finish.
  persisting_ = !send->writes.empty();
  if (!persisting_) {
    for (const std::string& name : send->objects) {
      auto it = unpersisted_.find(name);
      if (it != unpersisted_.end() && --it->second <= 0) unpersisted_.erase(it);
    }
  }
  b.send = std::move(send);
}

void ObjectManager::Finish(Batch& b) {
  for (uint64_t t : b.cancel_timers) timers_.Cancel(t);
  if (std::shared_ptr<PersistSend> send = std::move(b.send)) {
    if (send->writes.empty()) {
      for (auto& [done, reply] : send->replies) done(std::move(reply));
    } else {
      {
        MutexLock lock(&persist_mu_);
        ++persist_callbacks_;
      }
      std::vector<Store::ObjectWrite> writes = std::move(send->writes);
      store_->WriteObjects(std::move(writes), [this, send](absl::Status s) {
        // OnPersisted answers callers, who may then destroy the manager,
        // and goes on using it: the destructor waits for this count.
        OnPersisted(std::move(s), send);
        MutexLock lock(&persist_mu_);
        --persist_callbacks_;
        persist_callbacks_done_.SignalAll();
      });
    }
  }
  for (auto& [done, reply] : b.replies) done(std::move(reply));
  b.replies.clear();
  for (auto& sink : b.flush) sink->Flush();
}

void ObjectManager::OnPersisted(absl::Status status,
                                std::shared_ptr<PersistSend> sent) {
  Batch b;
  std::vector<Completion> failed;
  {
    MutexLock lock(&mu_);
    persisting_ = false;
    row_log_.Done(status.ok());
    if (status.ok()) {
      for (const std::string& name : sent->objects) {
        auto it = unpersisted_.find(name);
        if (it != unpersisted_.end() && --it->second <= 0) {
          unpersisted_.erase(it);
        }
      }
    } else {
      spdlog::error("manager: store write failed, rolling back: {}",
                    status.ToString());
      // Everything pending behind the failed batch was computed on top of
      // it.
      std::set<std::string> names(sent->objects.begin(), sent->objects.end());
      names.insert(pending_.objects.begin(), pending_.objects.end());
      failed = std::move(pending_.replies);
      pending_ = PendingPersist();
      for (const std::string& name : names) unpersisted_.erase(name);
      RollbackLocked(names, b);
      UpdateGaugesLocked();
    }
    QueueWritesLocked(b);
    persist_cv_.SignalAll();
  }
  auto deliver = [&status](std::vector<Completion>& replies) {
    for (auto& [done, reply] : replies) {
      if (!status.ok() && reply.ok()) {
        done(absl::UnavailableError(
            absl::StrCat("manager change not persisted, so not applied: ",
                         status.message())));
      } else {
        done(std::move(reply));
      }
    }
  };
  deliver(sent->replies);
  deliver(failed);
  Finish(b);
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
      std::vector<uint64_t> ids(it->second.waiters.begin(),
                                it->second.waiters.end());
      for (uint64_t id : ids) {
        std::optional<Waiter> w = TakeWaiterLocked(id, b);
        if (w) {
          b.replies.emplace_back(
              std::move(w->done),
              absl::AbortedError(absl::StrCat(
                  "'", name,
                  "' was rolled back: its creation was not persisted")));
        }
      }
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
