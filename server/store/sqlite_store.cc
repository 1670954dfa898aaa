#include "server/store/sqlite_store.h"

#include <pthread.h>

#include <algorithm>
#include <optional>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "spdlog/spdlog.h"

#include "common/status_macros.h"
#include "server/store/sqlite_internal.h"
#include "server/store/task_record.h"

namespace forq::server {
namespace {

using sqlite_internal::BindOptionalInt;
using sqlite_internal::BindTaskColumns;
using sqlite_internal::BindText;
using sqlite_internal::kFewRowsPerInsert;
using sqlite_internal::kRowsPerInsert;
using sqlite_internal::ParseTask;
using sqlite_internal::SqliteError;
using sqlite_internal::StepDone;
using sqlite_internal::StmtUse;
using store_internal::ExpiresAtMicros;
using store_internal::FinishedAtMicros;

// Upper bound on calls folded into one transaction, so one commit (and the
// acks waiting on it) stays short even under a flood of writes.
constexpr size_t kMaxWritesPerGroup = 2048;

// Idle read connections kept open.
constexpr size_t kIdleReaders = 8;

}  // namespace

SqliteStore::SqliteStore(const StoreOptions& options, std::string path,
                         ScopedFd dir_lock, std::unique_ptr<Writer> writer)
    : path_(std::move(path)),
      durability_(options.durability),
      batch_interval_(options.batch_interval),
      lock_(std::move(dir_lock)),
      writer_(std::move(writer)),
      readers_(kIdleReaders) {
  MutexLock lock(&close_mu_);
  writer_thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "forq-store");
    WriterLoop();
  });
  callback_thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "forq-store-cb");
    CallbackLoop();
  });
}

void SqliteStore::Deliver(std::vector<Committed> done) {
  if (done.empty()) return;
  bool writes_waiting;
  {
    MutexLock lock(&queue_mu_);
    writes_waiting = !queue_.empty();
  }
  {
    MutexLock lock(&done_mu_);
    // With writes waiting, the callback thread runs these so the next
    // commit starts at once. Otherwise the writer has nothing better to do:
    // it runs them itself (in order: the callback thread is idle and only
    // this thread delivers), saving a wake-up and two context switches per
    // commit, most of a lone write's latency.
    if (writes_waiting || !done_.empty() || callbacks_running_) {
      const bool was_empty = done_.empty();
      for (Committed& c : done) done_.push_back(std::move(c));
      if (was_empty) done_cv_.Signal();
      return;
    }
  }
  for (auto& [op, status] : done) op->Finish(std::move(status));
}

void SqliteStore::CallbackLoop() {
  for (;;) {
    std::vector<Committed> batch;
    {
      MutexLock lock(&done_mu_);
      while (done_.empty() && !done_closing_) done_cv_.Wait(&done_mu_);
      if (done_.empty()) return;  // closing, and nothing left
      batch.swap(done_);
      callbacks_running_ = true;
    }
    // Outside every lock: callbacks may queue new writes.
    for (auto& [op, status] : batch) op->Finish(std::move(status));
    MutexLock lock(&done_mu_);
    callbacks_running_ = false;
  }
}

SqliteStore::~SqliteStore() { Close(); }

std::unique_ptr<SqliteStore::PendingWrite> SqliteStore::Enqueue(
    std::unique_ptr<PendingWrite> op) {
  MutexLock lock(&queue_mu_);
  if (closing_) {
    return op;
  }
  // Only an idle writer waits for "not empty"; a busy one finds the op when
  // it next swaps the queue, so signalling every push would be wasted wakes.
  const bool was_empty = queue_.empty();
  queue_.push_back(std::move(op));
  if (was_empty) {
    queue_cv_.Signal();
  }
  return nullptr;
}

void SqliteStore::WriterLoop() {
  using Clock = std::chrono::steady_clock;
  const auto interval = absl::ToChronoNanoseconds(batch_interval_);
  // kBatch: acks of committed but not yet fsynced writes, released by the
  // next WAL sync. The first sync after an idle spell happens at once, so a
  // lone write waits one fsync as in kSync; under load there is at most one
  // fsync per batch_interval however many commits happen in between.
  std::vector<Committed> unsynced;
  auto last_sync = Clock::now() - interval;
  for (;;) {
    std::vector<std::unique_ptr<PendingWrite>> group;
    bool exiting = false;
    bool closing = false;
    {
      MutexLock lock(&queue_mu_);
      for (;;) {
        if (!queue_.empty()) {
          break;
        }
        if (unsynced.empty()) {
          if (closing_) {
            exiting = true;
            break;
          }
          writer_waiting_ = true;
          queue_cv_.Wait(&queue_mu_);
          writer_waiting_ = false;
          continue;
        }
        const auto now = Clock::now();
        if (closing_ || now >= last_sync + interval) {
          break;
        }
        queue_cv_.WaitWithTimeout(&queue_mu_,
                                  absl::FromChrono(last_sync + interval - now));
      }
      closing = closing_;
      const size_t n = std::min(queue_.size(), kMaxWritesPerGroup);
      group.reserve(n);
      for (size_t i = 0; i < n; ++i) {
        group.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
    }
    if (exiting) {
      break;
    }
    MutexLock commit(&commit_mu_);
    if (!group.empty()) {
      CommitGroup(group, unsynced);
    }
    if (!unsynced.empty() &&
        (closing || Clock::now() >= last_sync + interval)) {
      SyncWal(unsynced);
      last_sync = Clock::now();
    }
  }
}

void SqliteStore::SyncWal(std::vector<Committed>& unsynced) {
  sqlite3* db = writer_->db.get();
  sqlite3_file* wal = nullptr;
  absl::Status status;
  // The WAL holds every committed frame; syncing it is exactly what
  // synchronous=FULL does at each commit, done here once for many commits.
  int rc = sqlite3_file_control(db, "main", SQLITE_FCNTL_JOURNAL_POINTER, &wal);
  if (rc == SQLITE_OK && wal != nullptr && wal->pMethods != nullptr) {
    rc = wal->pMethods->xSync(wal, SQLITE_SYNC_NORMAL);
  }
  if (rc != SQLITE_OK) {
    status = SqliteError(path_, db, rc, "sync WAL");
    // The rows are committed and readable but may not survive a power
    // loss; the caller hears so rather than getting a false ack.
    spdlog::error("{} ({} acks failed)", std::string(status.message()),
                  unsynced.size());
  }
  for (auto& [op, op_status] : unsynced) {
    if (op_status.ok()) op_status = status;
  }
  Deliver(std::move(unsynced));
  unsynced.clear();
}

void SqliteStore::CommitGroup(std::vector<std::unique_ptr<PendingWrite>>& group,
                              std::vector<Committed>& unsynced) {
  // Every write carries a whole task, so of several writes of one task in a
  // group only the last needs a row: a RUNNING record followed by the
  // terminal one, or an insert whose task was dispatched and finished before
  // the insert's commit (the insert then stores the final version).
  struct Last {
    size_t op, index;
    bool insert;
  };
  // Keys view the ids of the tasks they name; a folded insert has its task
  // (and id) reassigned, and its key is made again from the new one.
  absl::flat_hash_map<absl::string_view, Last> last;
  size_t tasks = 0;
  for (const auto& op : group) tasks += op->tasks.size();
  last.reserve(tasks);
  for (size_t i = 0; i < group.size(); ++i) {
    PendingWrite& op = *group[i];
    if (op.type == PendingWrite::Type::kInsert) {
      for (size_t j = 0; j < op.tasks.size(); ++j) {
        last.insert_or_assign(op.tasks[j].id(), Last{i, j, true});
      }
      continue;
    }
    if (op.type != PendingWrite::Type::kUpdate) continue;
    op.superseded.assign(op.tasks.size(), false);
    for (size_t j = 0; j < op.tasks.size(); ++j) {
      auto [it, inserted] =
          last.try_emplace(op.tasks[j].id(), Last{i, j, false});
      if (inserted) continue;
      Last& prev = it->second;
      if (prev.insert) {
        // A copy: if the group must run again call by call, this update
        // still holds its own task.
        const Last folded = prev;
        last.erase(it);
        v1::Task& insert = group[folded.op]->tasks[folded.index];
        insert = op.tasks[j];
        last.emplace(insert.id(), folded);
        op.superseded[j] = true;
      } else {
        group[prev.op]->superseded[prev.index] = true;
        prev = Last{i, j, false};
      }
    }
  }
  std::vector<absl::Status> statuses(group.size());
  absl::Status txn_status = RunGroup(group, statuses, /*isolated=*/false);
  if (txn_status.code() == absl::StatusCode::kAborted) {
    // One call failed on its own (an unknown task, say): run the group
    // again with each call in a savepoint, so only that call fails.
    for (auto& op : group) op->superseded.clear();
    txn_status = RunGroup(group, statuses, /*isolated=*/true);
  }
  if (!txn_status.ok()) {
    // The writer keeps going: the next group starts a fresh transaction, so
    // a transient ENOSPC/EIO fails only the calls caught in it.
    spdlog::error("{} ({} writes failed)", std::string(txn_status.message()),
                  group.size());
    std::vector<Committed> failed;
    failed.reserve(group.size());
    for (auto& op : group) failed.push_back({std::move(op), txn_status});
    Deliver(std::move(failed));
    return;
  }
  for (auto& op : group) {
    if (op->type != PendingWrite::Type::kInsert) continue;
    for (size_t i = 0; i < op->results.size(); ++i) {
      if (!op->results[i].existing) {
        op->results[i].task = std::move(op->tasks[i]);
      }
    }
  }
  std::vector<Committed> done;
  for (size_t i = 0; i < group.size(); ++i) {
    if (durability_ == Durability::kBatch) {
      // Committed, not yet durable: the ack waits for SyncWal.
      unsynced.push_back({std::move(group[i]), std::move(statuses[i])});
    } else {
      done.push_back({std::move(group[i]), std::move(statuses[i])});
    }
  }
  Deliver(std::move(done));
}

absl::Status SqliteStore::RunGroup(
    std::vector<std::unique_ptr<PendingWrite>>& group,
    std::vector<absl::Status>& statuses, bool isolated) {
  sqlite3* db = writer_->db.get();
  auto run = [&](sqlite3_stmt* stmt, absl::string_view what) {
    StmtUse use(stmt);
    return StepDone(path_, db, stmt, what);
  };
  writer_->expiring.clear();
  absl::Status txn_status = run(writer_->begin.get(), "begin transaction");
  for (size_t i = 0; txn_status.ok() && i < group.size(); ++i) {
    if (isolated) {
      txn_status = run(writer_->savepoint.get(), "savepoint");
      if (!txn_status.ok()) break;
    }
    absl::Status status = Apply(*group[i]);
    if (!status.ok() && sqlite3_get_autocommit(db)) {
      // SQLite rolled the whole transaction back (disk full, I/O error):
      // every call in the group is lost, not just this one.
      txn_status = status;
      break;
    }
    if (!status.ok() && !isolated) {
      txn_status = absl::AbortedError("a call of the group failed");
      break;
    }
    if (!status.ok()) {
      // Undo only this call's rows; its neighbours stay in the group.
      txn_status = run(writer_->rollback_to.get(), "rollback to savepoint");
    }
    if (isolated && txn_status.ok()) {
      txn_status = run(writer_->release.get(), "release");
    }
    statuses[i] = std::move(status);
  }
  if (txn_status.ok()) {
    txn_status = WriteExpiry();
  }
  if (txn_status.ok()) {
    txn_status = run(writer_->commit.get(), "commit");
  }
  if (!txn_status.ok() && !sqlite3_get_autocommit(db)) {
    StmtUse use(writer_->rollback.get());
    sqlite3_step(use.get());
  }
  return txn_status;
}

absl::Status SqliteStore::Apply(PendingWrite& op) {
  switch (op.type) {
    case PendingWrite::Type::kInsert:
      return ApplyInsert(op);
    case PendingWrite::Type::kUpdate:
      return ApplyUpdate(op);
    case PendingWrite::Type::kPutObject:
      return PutObjectRow(op.name, op.blob);
    case PendingWrite::Type::kDeleteObject:
      return DeleteObjectRow(op.name);
    case PendingWrite::Type::kWriteObjects:
      // One savepoint around the call (CommitGroup) makes these all or none.
      for (const ObjectWrite& w : op.object_writes) {
        FORQ_RETURN_IF_ERROR(w.blob ? PutObjectRow(w.name, *w.blob)
                                    : DeleteObjectRow(w.name));
      }
      return absl::OkStatus();
    case PendingWrite::Type::kPurge:
      return ApplyPurge(op);
  }
  return absl::InternalError("sqlite store: unknown write type");
}

absl::Status SqliteStore::ApplyInsert(PendingWrite& op) {
  sqlite3* db = writer_->db.get();
  // Fresh results: a group may be applied twice (see RunGroup). The stored
  // tasks move into them only after the commit (CommitGroup).
  op.results.assign(op.tasks.size(), InsertResult());
  // Tasks without an idempotency key wait here for one multi-row INSERT.
  std::vector<size_t> rows;
  rows.reserve(kRowsPerInsert);
  for (size_t i = 0; i < op.tasks.size(); ++i) {
    v1::Task& task = op.tasks[i];
    if (task.id().empty() || absl::StrContains(task.id(), '\n')) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sqlite store ", path_, ": task id is empty or holds a newline"));
    }
    if (task.idempotency_key().empty()) {
      rows.push_back(i);
      if (rows.size() == kRowsPerInsert) {
        FORQ_RETURN_IF_ERROR(InsertRows(op, rows));
        rows.clear();
      }
      continue;
    }
    // The rows before it first: the lookup sees rows of earlier calls and
    // of earlier tasks in this call, since both are in the open
    // transaction.
    FORQ_RETURN_IF_ERROR(InsertRows(op, rows));
    rows.clear();
    StmtUse use(writer_->find_by_key.get());
    BindText(use.get(), 1, task.idempotency_key());
    const int rc = sqlite3_step(use.get());
    if (rc == SQLITE_ROW) {
      FORQ_ASSIGN_OR_RETURN(op.results[i].task, ParseTask(path_, use.get(), 0));
      op.results[i].existing = true;
      continue;
    }
    if (rc != SQLITE_DONE) {
      return SqliteError(path_, db, rc, "look up idempotency key");
    }
    FORQ_RETURN_IF_ERROR(InsertRow(op.tasks[i]));
  }
  return InsertRows(op, rows);
}

absl::Status SqliteStore::InsertRows(PendingWrite& op,
                                     const std::vector<size_t>& rows) {
  size_t at = 0;
  for (int chunk : {kRowsPerInsert, kFewRowsPerInsert}) {
    for (; rows.size() - at >= static_cast<size_t>(chunk); at += chunk) {
      FORQ_RETURN_IF_ERROR(InsertChunk(op, &rows[at], chunk));
    }
  }
  for (; at < rows.size(); ++at) {
    FORQ_RETURN_IF_ERROR(InsertRow(op.tasks[rows[at]]));
  }
  return absl::OkStatus();
}

absl::Status SqliteStore::InsertChunk(PendingWrite& op, const size_t* rows,
                                      int count) {
  sqlite3* db = writer_->db.get();
  {
    StmtUse use(writer_->insert_rows.at(count).get());
    for (int r = 0; r < count; ++r) {
      const v1::Task& task = op.tasks[rows[r]];
      std::string& data = writer_->row_scratch[r];
      if (!task.SerializeToString(&data)) {
        return absl::InternalError(absl::StrCat(
            "sqlite store ", path_, ": cannot serialise task ", task.id()));
      }
      BindTaskColumns(use.get(), task, data, r * 9 + 1);
    }
    const int rc = sqlite3_step(use.get());
    if (rc == SQLITE_DONE) {
      for (int r = 0; r < count; ++r) NoteExpiry(op.tasks[rows[r]]);
      return absl::OkStatus();
    }
    if ((rc & 0xff) != SQLITE_CONSTRAINT) {
      return SqliteError(path_, db, rc, "insert tasks");
    }
  }
  // The statement's rows are undone; one by one names the taken id.
  for (int r = 0; r < count; ++r) {
    FORQ_RETURN_IF_ERROR(InsertRow(op.tasks[rows[r]]));
  }
  return absl::OkStatus();
}

absl::Status SqliteStore::InsertRow(const v1::Task& task) {
  sqlite3* db = writer_->db.get();
  if (!task.SerializeToString(&writer_->scratch)) {
    return absl::InternalError(absl::StrCat(
        "sqlite store ", path_, ": cannot serialise task ", task.id()));
  }
  StmtUse use(writer_->insert_task.get());
  BindTaskColumns(use.get(), task, writer_->scratch);
  const int rc = sqlite3_step(use.get());
  if (rc == SQLITE_CONSTRAINT_PRIMARYKEY) {
    return absl::AlreadyExistsError(absl::StrCat(
        "sqlite store ", path_, ": task id ", task.id(), " already stored"));
  }
  if (rc != SQLITE_DONE) {
    return SqliteError(path_, db, rc, absl::StrCat("insert ", task.id()));
  }
  NoteExpiry(task);
  return absl::OkStatus();
}

absl::Status SqliteStore::ApplyUpdate(PendingWrite& op) {
  sqlite3* db = writer_->db.get();
  for (size_t i = 0; i < op.tasks.size(); ++i) {
    if (i < op.superseded.size() && op.superseded[i]) continue;
    const v1::Task& task = op.tasks[i];
    if (!task.SerializeToString(&writer_->scratch)) {
      return absl::InternalError(absl::StrCat(
          "sqlite store ", path_, ": cannot serialise task ", task.id()));
    }
    StmtUse use(writer_->update_task.get());
    sqlite3_stmt* stmt = use.get();
    BindText(stmt, 1, task.id());
    sqlite3_bind_int(stmt, 2, static_cast<int>(task.state()));
    BindOptionalInt(stmt, 3, FinishedAtMicros(task));
    BindOptionalInt(stmt, 4, ExpiresAtMicros(task));
    sqlite3_bind_blob(stmt, 5, writer_->scratch.data(),
                      static_cast<int>(writer_->scratch.size()), SQLITE_STATIC);
    // The error text is built only on failure: this runs once per row.
    if (const int rc = sqlite3_step(use.get()); rc != SQLITE_DONE) {
      return SqliteError(path_, db, rc, absl::StrCat("update ", task.id()));
    }
    if (sqlite3_changes(db) == 0) {
      return absl::NotFoundError(absl::StrCat(
          "sqlite store ", path_, ": update of unknown task ", task.id()));
    }
    NoteExpiry(task);
  }
  return absl::OkStatus();
}

void SqliteStore::NoteExpiry(const v1::Task& task) {
  const std::optional<int64_t> expires_us = ExpiresAtMicros(task);
  if (!expires_us.has_value()) return;
  Writer::Expiring& second = writer_->expiring[*expires_us / 1000000];
  if (!second.ids.empty()) second.ids.push_back('\n');
  second.ids.append(task.id());
  second.max_us = std::max(second.max_us, *expires_us);
}

absl::Status SqliteStore::PutObjectRow(const std::string& name,
                                       absl::string_view blob) {
  sqlite3* db = writer_->db.get();
  StmtUse use(writer_->put_object.get());
  BindText(use.get(), 1, name);
  sqlite3_bind_blob(use.get(), 2, blob.data(), static_cast<int>(blob.size()),
                    SQLITE_STATIC);
  const int rc = sqlite3_step(use.get());
  if (rc == SQLITE_DONE) return absl::OkStatus();
  return SqliteError(path_, db, rc, absl::StrCat("put object ", name));
}

absl::Status SqliteStore::DeleteObjectRow(const std::string& name) {
  sqlite3* db = writer_->db.get();
  StmtUse use(writer_->delete_object.get());
  BindText(use.get(), 1, name);
  const int rc = sqlite3_step(use.get());
  if (rc == SQLITE_DONE) return absl::OkStatus();
  return SqliteError(path_, db, rc, absl::StrCat("delete object ", name));
}

absl::Status SqliteStore::WriteExpiry() {
  for (const auto& [second, expiring] : writer_->expiring) {
    StmtUse use(writer_->insert_expiry.get());
    sqlite3_bind_int64(use.get(), 1, expiring.max_us);
    BindText(use.get(), 2, expiring.ids);
    FORQ_RETURN_IF_ERROR(
        StepDone(path_, writer_->db.get(), use.get(), "record expiry"));
  }
  return absl::OkStatus();
}

absl::Status SqliteStore::ApplyPurge(PendingWrite& op) {
  sqlite3* db = writer_->db.get();
  op.purged = 0;
  for (;;) {
    // Rows due, read before any is deleted (at most 256 per round).
    std::vector<std::pair<int64_t, std::string>> due;
    {
      StmtUse use(writer_->expired.get());
      sqlite3_bind_int64(use.get(), 1, op.now_us);
      int rc;
      while ((rc = sqlite3_step(use.get())) == SQLITE_ROW) {
        const auto* ids =
            reinterpret_cast<const char*>(sqlite3_column_text(use.get(), 1));
        due.emplace_back(sqlite3_column_int64(use.get(), 0),
                         ids == nullptr ? "" : ids);
      }
      if (rc != SQLITE_DONE) return SqliteError(path_, db, rc, "read expiry");
    }
    if (due.empty()) return absl::OkStatus();
    for (const auto& [rowid, ids] : due) {
      for (absl::string_view id : absl::StrSplit(ids, '\n')) {
        StmtUse use(writer_->purge_task.get());
        BindText(use.get(), 1, id);
        sqlite3_bind_int64(use.get(), 2, op.now_us);
        FORQ_RETURN_IF_ERROR(StepDone(path_, db, use.get(), "purge"));
        op.purged += sqlite3_changes64(db);
      }
      StmtUse use(writer_->delete_expiry.get());
      sqlite3_bind_int64(use.get(), 1, rowid);
      FORQ_RETURN_IF_ERROR(StepDone(path_, db, use.get(), "purge expiry"));
    }
  }
}

std::unique_ptr<SqliteStore::PendingWrite> SqliteStore::InsertOp(
    std::vector<v1::Task> tasks, InsertDone done) {
  auto op = std::make_unique<PendingWrite>();
  op->type = PendingWrite::Type::kInsert;
  op->tasks = std::move(tasks);
  op->insert_done = std::move(done);
  return op;
}

std::unique_ptr<SqliteStore::PendingWrite> SqliteStore::UpdateOp(
    std::vector<v1::Task> tasks, WriteDone done) {
  auto op = std::make_unique<PendingWrite>();
  op->type = PendingWrite::Type::kUpdate;
  op->tasks = std::move(tasks);
  op->write_done = std::move(done);
  return op;
}

void SqliteStore::EnqueueOrFail(std::unique_ptr<PendingWrite> op) {
  if (auto rejected = Enqueue(std::move(op))) {
    rejected->Finish(absl::UnavailableError(
        absl::StrCat("sqlite store ", path_, ": closed")));
  }
}

void SqliteStore::Insert(std::vector<v1::Task> tasks, InsertDone done) {
  EnqueueOrFail(InsertOp(std::move(tasks), std::move(done)));
}

void SqliteStore::Update(std::vector<v1::Task> tasks, WriteDone done) {
  EnqueueOrFail(UpdateOp(std::move(tasks), std::move(done)));
}

void SqliteStore::InsertHere(std::vector<v1::Task> tasks, InsertDone done) {
  CommitHereOrEnqueue(InsertOp(std::move(tasks), std::move(done)));
}

void SqliteStore::UpdateHere(std::vector<v1::Task> tasks, WriteDone done) {
  CommitHereOrEnqueue(UpdateOp(std::move(tasks), std::move(done)));
}

// With fsync a commit would hold the caller for milliseconds; without, a
// lone write (a task that finished while nothing else was being written)
// commits here and its callbacks run here, instead of waking the writer
// thread and waiting for it. Only when the writer sleeps with an empty
// queue: nothing written earlier can still be pending, so the order of
// writes is the queue's.
void SqliteStore::CommitHereOrEnqueue(std::unique_ptr<PendingWrite> op)
    ABSL_NO_THREAD_SAFETY_ANALYSIS {
  bool here = false;
  if (durability_ == Durability::kNone) {
    MutexLock lock(&queue_mu_);
    here =
        !closing_ && writer_waiting_ && queue_.empty() && commit_mu_.TryLock();
  }
  if (!here) {
    EnqueueOrFail(std::move(op));
    return;
  }
  std::vector<std::unique_ptr<PendingWrite>> group;
  group.push_back(std::move(op));
  std::vector<Committed> unsynced;  // stays empty: no kBatch here
  CommitGroup(group, unsynced);
  commit_mu_.Unlock();
}

void SqliteStore::PutObject(std::string name, std::string blob,
                            WriteDone done) {
  auto op = std::make_unique<PendingWrite>();
  op->type = PendingWrite::Type::kPutObject;
  op->name = std::move(name);
  op->blob = std::move(blob);
  op->write_done = std::move(done);
  EnqueueOrFail(std::move(op));
}

void SqliteStore::DeleteObject(std::string name, WriteDone done) {
  auto op = std::make_unique<PendingWrite>();
  op->type = PendingWrite::Type::kDeleteObject;
  op->name = std::move(name);
  op->write_done = std::move(done);
  EnqueueOrFail(std::move(op));
}

void SqliteStore::WriteObjects(std::vector<ObjectWrite> writes,
                               WriteDone done) {
  auto op = std::make_unique<PendingWrite>();
  op->type = PendingWrite::Type::kWriteObjects;
  op->object_writes = std::move(writes);
  op->write_done = std::move(done);
  EnqueueOrFail(std::move(op));
}

absl::StatusOr<int64_t> SqliteStore::PurgeExpired(absl::Time now) {
  // forq::Mutex rather than absl::Notification so TSan sees the handoff.
  Mutex mu;
  CondVar cv;
  bool finished = false;
  absl::StatusOr<int64_t> result;
  auto op = std::make_unique<PendingWrite>();
  op->type = PendingWrite::Type::kPurge;
  op->now_us = absl::ToUnixMicros(now);
  op->purge_done = [&](absl::StatusOr<int64_t> purged) {
    MutexLock lock(&mu);
    result = std::move(purged);
    finished = true;
    cv.SignalAll();
  };
  if (auto rejected = Enqueue(std::move(op))) {
    return absl::UnavailableError(
        absl::StrCat("sqlite store ", path_, ": closed"));
  }
  MutexLock lock(&mu);
  while (!finished) {
    cv.Wait(&mu);
  }
  return result;
}

void SqliteStore::Close() {
  MutexLock close_lock(&close_mu_);
  {
    MutexLock lock(&queue_mu_);
    closing_ = true;
    queue_cv_.SignalAll();
  }
  // The writer commits everything queued before closing_ was set, then
  // exits; later writes are refused by Enqueue.
  if (writer_thread_.joinable()) {
    writer_thread_.join();
  }
  // A write a caller began committing itself before closing_ was set ends
  // (and hands its callbacks on) before the callback thread stops.
  { MutexLock commit(&commit_mu_); }
  // Then every callback of those writes has run before Close returns.
  {
    MutexLock lock(&done_mu_);
    done_closing_ = true;
    done_cv_.SignalAll();
  }
  if (callback_thread_.joinable()) {
    callback_thread_.join();
  }
  // Idle readers are closed so the last connection to go (the writer's, at
  // destruction) checkpoints and removes the WAL. Reads after Close open
  // fresh connections.
  readers_.Clear();
}

}  // namespace forq::server
