#include "server/store/sqlite_store.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/file.h>

#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <system_error>

#include "absl/cleanup/cleanup.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

#include "common/errno_status.h"
#include "common/status_macros.h"
#include "server/store/task_record.h"

#include <sqlite3.h>

namespace forq::server {
namespace {

using store_internal::DecodePageToken;
using store_internal::EffectivePageSize;
using store_internal::EncodePageToken;
using store_internal::ExpiresAtMicros;
using store_internal::FinishedAtMicros;

// Upper bound on calls folded into one transaction, so one commit (and the
// acks waiting on it) stays short even under a flood of writes.
constexpr size_t kMaxWritesPerGroup = 2048;
// Idle read connections kept open; more are opened on demand and closed
// when returned to a full pool.
constexpr size_t kMaxIdleReaders = 8;
// Readers may meet a lock briefly while the writer restarts the WAL or
// runs recovery; waiting is better than failing a Get.
constexpr int kBusyTimeoutMs = 5000;

struct DbCloser {
  void operator()(sqlite3* db) const { sqlite3_close_v2(db); }
};
using Db = std::unique_ptr<sqlite3, DbCloser>;

struct StmtFinalizer {
  void operator()(sqlite3_stmt* stmt) const { sqlite3_finalize(stmt); }
};
using Stmt = std::unique_ptr<sqlite3_stmt, StmtFinalizer>;

// Resets a statement when a use of it ends, so a read transaction is never
// left open on a pooled connection (an open read would pin the WAL and stop
// checkpoints).
class StmtUse {
 public:
  explicit StmtUse(sqlite3_stmt* stmt) : stmt_(stmt) {}
  ~StmtUse() {
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
  }
  StmtUse(const StmtUse&) = delete;
  StmtUse& operator=(const StmtUse&) = delete;
  sqlite3_stmt* get() const { return stmt_; }

 private:
  sqlite3_stmt* const stmt_;
};

absl::StatusCode CodeFor(int rc) {
  switch (rc & 0xff) {
    case SQLITE_FULL:
    case SQLITE_NOMEM:
      return absl::StatusCode::kResourceExhausted;
    case SQLITE_IOERR:
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_CANTOPEN:
    case SQLITE_READONLY:
    case SQLITE_PROTOCOL:
    case SQLITE_NOLFS:
      return absl::StatusCode::kUnavailable;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      return absl::StatusCode::kDataLoss;
    case SQLITE_CONSTRAINT:
      return absl::StatusCode::kAlreadyExists;
    case SQLITE_PERM:
    case SQLITE_AUTH:
      return absl::StatusCode::kPermissionDenied;
    default:
      return absl::StatusCode::kInternal;
  }
}

// "sqlite store /x/forq.db: <what>: <sqlite message> (code N)".
absl::Status SqliteError(absl::string_view path, sqlite3* db, int rc,
                         absl::string_view what) {
  // sqlite3_errmsg describes the last failing call on `db`, which is more
  // specific than sqlite3_errstr(rc) when a connection exists.
  const char* message = db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
  return absl::Status(CodeFor(rc),
                      absl::StrCat("sqlite store ", path, ": ", what, ": ",
                                   message, " (code ", rc, ")"));
}

absl::StatusOr<Stmt> Prepare(absl::string_view path, sqlite3* db,
                             absl::string_view sql) {
  sqlite3_stmt* stmt = nullptr;
  const int rc =
      sqlite3_prepare_v3(db, sql.data(), static_cast<int>(sql.size()),
                         SQLITE_PREPARE_PERSISTENT, &stmt, nullptr);
  if (rc != SQLITE_OK) {
    return SqliteError(path, db, rc, absl::StrCat("prepare \"", sql, "\""));
  }
  return Stmt(stmt);
}

absl::Status Exec(absl::string_view path, sqlite3* db, const char* sql) {
  const int rc = sqlite3_exec(db, sql, nullptr, nullptr, nullptr);
  if (rc != SQLITE_OK) {
    return SqliteError(path, db, rc, sql);
  }
  return absl::OkStatus();
}

absl::Status StepDone(absl::string_view path, sqlite3* db, sqlite3_stmt* stmt,
                      absl::string_view what) {
  const int rc = sqlite3_step(stmt);
  if (rc != SQLITE_DONE) {
    return SqliteError(path, db, rc, what);
  }
  return absl::OkStatus();
}

absl::StatusOr<Db> OpenConnection(absl::string_view path, int flags) {
  // SQLite keeps allocation statistics behind a process-wide mutex taken on
  // every malloc; forq never reads them. Must precede sqlite3_initialize();
  // if something initialized SQLite first this is a harmless no-op.
  static std::once_flag no_memstatus;
  std::call_once(no_memstatus,
                 [] { sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0); });
  sqlite3* raw = nullptr;
  // NOMUTEX: each connection is used by one thread at a time (the writer,
  // or whoever leased a reader), so SQLite's own mutexes are redundant.
  const int rc = sqlite3_open_v2(
      std::string(path).c_str(), &raw,
      flags | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_EXRESCODE, nullptr);
  Db db(raw);
  if (rc != SQLITE_OK) {
    return SqliteError(path, db.get(), rc, "open");
  }
  sqlite3_extended_result_codes(db.get(), 1);
  sqlite3_busy_timeout(db.get(), kBusyTimeoutMs);
  return db;
}

absl::StatusOr<v1::Task> ParseTask(absl::string_view path, sqlite3_stmt* stmt,
                                   int column) {
  v1::Task task;
  const void* data = sqlite3_column_blob(stmt, column);
  const int size = sqlite3_column_bytes(stmt, column);
  if (!task.ParseFromArray(data, size)) {
    return absl::DataLossError(absl::StrCat(
        "sqlite store ", path, ": stored task record does not parse"));
  }
  return task;
}

void BindOptionalInt(sqlite3_stmt* stmt, int index,
                     std::optional<int64_t> value) {
  if (value.has_value()) {
    sqlite3_bind_int64(stmt, index, *value);
  } else {
    sqlite3_bind_null(stmt, index);
  }
}

void BindText(sqlite3_stmt* stmt, int index, absl::string_view text) {
  sqlite3_bind_text(stmt, index, text.data(), static_cast<int>(text.size()),
                    SQLITE_STATIC);
}

// Binds ?1..?9 of the insert and update statements (same column order) from
// `task`; `data` must stay alive until the statement is reset.
void BindTaskColumns(sqlite3_stmt* stmt, const v1::Task& task,
                     const std::string& data) {
  BindText(stmt, 1, task.id());
  BindText(stmt, 2, task.queue());
  BindText(stmt, 3, task.kind());
  sqlite3_bind_int(stmt, 4, static_cast<int>(task.state()));
  sqlite3_bind_int(stmt, 5, task.priority());
  // NULL, not "", so the partial unique index ignores tasks without a key.
  if (task.idempotency_key().empty()) {
    sqlite3_bind_null(stmt, 6);
  } else {
    BindText(stmt, 6, task.idempotency_key());
  }
  BindOptionalInt(stmt, 7, FinishedAtMicros(task));
  BindOptionalInt(stmt, 8, ExpiresAtMicros(task));
  sqlite3_bind_blob(stmt, 9, data.data(), static_cast<int>(data.size()),
                    SQLITE_STATIC);
}

constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS tasks(
  id TEXT PRIMARY KEY NOT NULL,
  queue TEXT NOT NULL,
  kind TEXT NOT NULL,
  state INTEGER NOT NULL,
  priority INTEGER NOT NULL,
  idempotency_key TEXT,
  finished_at_us INTEGER,
  expires_at_us INTEGER,
  data BLOB NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS tasks_by_idempotency_key
  ON tasks(idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_unfinished ON tasks(state, id)
  WHERE state IN (1, 2);
CREATE INDEX IF NOT EXISTS tasks_by_expiry
  ON tasks(expires_at_us) WHERE expires_at_us IS NOT NULL;
CREATE TABLE IF NOT EXISTS objects(
  name TEXT PRIMARY KEY NOT NULL,
  data BLOB NOT NULL);
)sql";

// Versions 1 and 2 also indexed tasks by queue and by kind (1), and by
// state, finished ones included. Each index entry is b-tree work for every
// task stored; only unfinished tasks are indexed by state now (the entry
// goes when the task finishes), and List of finished states, queues or
// kinds reads the table in id order (docs/storage.md).
constexpr const char* kMigrateTo3 = R"sql(
DROP INDEX IF EXISTS tasks_by_queue;
DROP INDEX IF EXISTS tasks_by_kind;
DROP INDEX IF EXISTS tasks_by_state;
)sql";

}  // namespace

// One queued write call. Only the fields of its type are used.
struct SqliteStore::PendingWrite {
  enum class Type {
    kInsert,
    kUpdate,
    kPutObject,
    kDeleteObject,
    kWriteObjects,
    kPurge
  };
  Type type = Type::kInsert;
  std::vector<v1::Task> tasks;
  std::string name;
  std::string blob;
  std::vector<ObjectWrite> object_writes;
  int64_t now_us = 0;
  InsertDone insert_done;
  WriteDone write_done;
  std::function<void(absl::StatusOr<int64_t>)> purge_done;
  // kUpdate: tasks[i] is skipped when a later write of the same group
  // replaces it (set by CommitGroup).
  std::vector<bool> superseded;
  // kInsert: filled by ApplyInsert.
  std::vector<InsertResult> results;
  int64_t purged = 0;

  void Finish(absl::Status status) {
    switch (type) {
      case Type::kInsert:
        if (status.ok()) {
          insert_done(std::move(results));
        } else {
          insert_done(std::move(status));
        }
        return;
      case Type::kPurge:
        if (status.ok()) {
          purge_done(purged);
        } else {
          purge_done(std::move(status));
        }
        return;
      default:
        write_done(std::move(status));
        return;
    }
  }
};

// The write connection and its prepared statements.
struct SqliteStore::Writer {
  Db db;
  Stmt begin, commit, rollback, savepoint, release, rollback_to;
  Stmt insert_task, find_by_key, update_task, put_object, delete_object, purge;
  std::string scratch;  // Serialised task, reused across rows.
};

// A read connection; List statements are cached per filter combination.
struct SqliteStore::Reader {
  Db db;
  Stmt get, unfinished, objects;
  std::map<int, Stmt> list_by_filters;
};

absl::StatusOr<std::unique_ptr<SqliteStore>> SqliteStore::Open(
    const StoreOptions& options) {
  std::error_code ec;
  std::filesystem::create_directories(options.data_dir, ec);
  if (ec) {
    absl::StatusCode code = ErrnoToStatus(ec.value(), "").code();
    // ENOTDIR, EROFS, ELOOP...: a misconfigured path, not a forqd bug.
    if (code == absl::StatusCode::kInternal) {
      code = absl::StatusCode::kFailedPrecondition;
    }
    return absl::Status(code,
                        absl::StrCat("sqlite store: cannot create data_dir ",
                                     options.data_dir, ": ", ec.message()));
  }
  const std::string path = absl::StrCat(options.data_dir, "/forq.db");

  // Two writers on one file would each think they own every task; the
  // kernel drops the flock when the process dies, so kill -9 never leaves
  // a stale lock behind.
  const std::string lock_path = absl::StrCat(options.data_dir, "/forq.lock");
  ScopedFd lock(open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
  if (!lock.valid()) {
    const int err = errno;
    return ErrnoToStatus(err,
                         absl::StrCat("sqlite store: open lock ", lock_path));
  }
  if (flock(lock.get(), LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    if (err == EWOULDBLOCK) {
      return absl::FailedPreconditionError(absl::StrCat(
          "sqlite store: data_dir ", options.data_dir,
          " is in use by another forqd or store (", lock_path, " is locked)"));
    }
    return ErrnoToStatus(err, absl::StrCat("sqlite store: lock ", lock_path));
  }

  auto writer = std::make_unique<Writer>();
  FORQ_ASSIGN_OR_RETURN(
      writer->db,
      OpenConnection(path, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE));
  sqlite3* db = writer->db.get();
  // SQLite silently opens a file it may not write read-only; say so now
  // rather than at the first Submit.
  if (sqlite3_db_readonly(db, "main") == 1) {
    return absl::UnavailableError(
        absl::StrCat("sqlite store ", path, ": database file is not writable"));
  }
  // The first statement reads the header: a corrupt or foreign file fails
  // here with SQLITE_NOTADB (DataLoss).
  {
    FORQ_ASSIGN_OR_RETURN(Stmt mode,
                          Prepare(path, db, "PRAGMA journal_mode=WAL"));
    const int rc = sqlite3_step(mode.get());
    if (rc != SQLITE_ROW) {
      return SqliteError(path, db, rc, "enable WAL");
    }
    const auto* got =
        reinterpret_cast<const char*>(sqlite3_column_text(mode.get(), 0));
    if (got == nullptr || absl::string_view(got) != "wal") {
      return absl::UnavailableError(absl::StrCat(
          "sqlite store ", path, ": cannot enable WAL journal mode (got ",
          got == nullptr ? "nothing" : got, ")"));
    }
  }
  // kSync: FULL syncs the WAL in every commit, so an ack follows a durable
  // commit. kBatch: NORMAL commits without a sync and the writer syncs the
  // WAL itself at most once per batch_interval before releasing the acks
  // (SyncWal). kNone: OFF, never syncs; acked data is in the OS page cache.
  const char* synchronous =
      options.durability == Durability::kSync    ? "PRAGMA synchronous=FULL"
      : options.durability == Durability::kBatch ? "PRAGMA synchronous=NORMAL"
                                                 : "PRAGMA synchronous=OFF";
  FORQ_RETURN_IF_ERROR(Exec(path, db, synchronous));
  // Each insert touches the table and five indexes; with ~100k stored tasks
  // they outgrow SQLite's default 2 MiB cache and every miss is a pread.
  // 16 MiB (an upper bound, allocated as pages are used) keeps the hot index
  // pages in process and bounds forqd's memory however many finished tasks
  // the store holds; colder pages still come from the OS page cache.
  FORQ_RETURN_IF_ERROR(Exec(path, db, "PRAGMA cache_size=-16384"));
  // The writer checkpoints when the WAL passes this many pages. The default
  // (1000) copies a page back to the database for about every 40 tasks; at
  // 4096 (16 MiB of WAL) a hot index page rewritten by many commits is
  // copied once.
  FORQ_RETURN_IF_ERROR(Exec(path, db, "PRAGMA wal_autocheckpoint=4096"));

  int version = 0;
  {
    FORQ_ASSIGN_OR_RETURN(Stmt stmt, Prepare(path, db, "PRAGMA user_version"));
    const int rc = sqlite3_step(stmt.get());
    if (rc != SQLITE_ROW) {
      return SqliteError(path, db, rc, "read user_version");
    }
    version = sqlite3_column_int(stmt.get(), 0);
  }
  if (version > kSchemaVersion) {
    return absl::FailedPreconditionError(
        absl::StrCat("sqlite store ", path, ": schema version ", version,
                     " is newer than this forqd supports (", kSchemaVersion,
                     "); upgrade forqd or use another --data_dir"));
  }
  if (version < kSchemaVersion) {
    FORQ_RETURN_IF_ERROR(Exec(path, db, "BEGIN IMMEDIATE"));
    absl::Status created = Exec(path, db, kSchema);
    if (created.ok() && version > 0) {
      created = Exec(path, db, kMigrateTo3);
    }
    if (created.ok()) {
      created =
          Exec(path, db,
               absl::StrCat("PRAGMA user_version=", kSchemaVersion).c_str());
    }
    if (created.ok()) {
      created = Exec(path, db, "COMMIT");
    }
    if (!created.ok()) {
      sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
      return created;
    }
  }

  FORQ_ASSIGN_OR_RETURN(writer->begin, Prepare(path, db, "BEGIN IMMEDIATE"));
  FORQ_ASSIGN_OR_RETURN(writer->commit, Prepare(path, db, "COMMIT"));
  FORQ_ASSIGN_OR_RETURN(writer->rollback, Prepare(path, db, "ROLLBACK"));
  FORQ_ASSIGN_OR_RETURN(writer->savepoint, Prepare(path, db, "SAVEPOINT w"));
  FORQ_ASSIGN_OR_RETURN(writer->release, Prepare(path, db, "RELEASE w"));
  FORQ_ASSIGN_OR_RETURN(writer->rollback_to,
                        Prepare(path, db, "ROLLBACK TO w"));
  FORQ_ASSIGN_OR_RETURN(
      writer->insert_task,
      Prepare(path, db,
              "INSERT INTO tasks(id, queue, kind, state, priority, "
              "idempotency_key, finished_at_us, expires_at_us, data) "
              "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"));
  FORQ_ASSIGN_OR_RETURN(
      writer->find_by_key,
      Prepare(path, db, "SELECT data FROM tasks WHERE idempotency_key = ?1"));
  FORQ_ASSIGN_OR_RETURN(
      writer->update_task,
      Prepare(path, db,
              // Queue, kind, priority and idempotency key never change
              // after insert: leaving them out spares their indexes.
              "UPDATE tasks SET state = ?2, finished_at_us = ?3, "
              "expires_at_us = ?4, data = ?5 WHERE id = ?1"));
  FORQ_ASSIGN_OR_RETURN(
      writer->put_object,
      Prepare(path, db,
              "INSERT INTO objects(name, data) VALUES(?1, ?2) "
              "ON CONFLICT(name) DO UPDATE SET data = excluded.data"));
  FORQ_ASSIGN_OR_RETURN(
      writer->delete_object,
      Prepare(path, db, "DELETE FROM objects WHERE name = ?1"));
  FORQ_ASSIGN_OR_RETURN(
      writer->purge,
      Prepare(path, db,
              "DELETE FROM tasks WHERE expires_at_us IS NOT NULL AND "
              "expires_at_us <= ?1"));

  auto store = std::unique_ptr<SqliteStore>(
      new SqliteStore(options, path, std::move(lock), std::move(writer)));
  // Open one reader now so a file the readers cannot use fails OpenStore,
  // not the first Get.
  FORQ_ASSIGN_OR_RETURN(std::unique_ptr<Reader> reader, store->AcquireReader());
  store->ReleaseReader(std::move(reader));
  spdlog::info("sqlite store {} open (schema v{}, durability {})", path,
               kSchemaVersion,
               options.durability == Durability::kSync    ? "sync"
               : options.durability == Durability::kBatch ? "batch"
                                                          : "none");
  return store;
}

SqliteStore::SqliteStore(const StoreOptions& options, std::string path,
                         ScopedFd dir_lock, std::unique_ptr<Writer> writer)
    : path_(std::move(path)),
      durability_(options.durability),
      batch_interval_(options.batch_interval),
      lock_(std::move(dir_lock)),
      writer_(std::move(writer)) {
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
          queue_cv_.Wait(&queue_mu_);
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
  // Keys are copies: a folded insert has its task (and id) reassigned.
  absl::flat_hash_map<std::string, Last> last;
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
        group[prev.op]->tasks[prev.index] = op.tasks[j];
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
    txn_status = run(writer_->commit.get(), "commit");
  }
  if (!txn_status.ok() && !sqlite3_get_autocommit(db)) {
    StmtUse use(writer_->rollback.get());
    sqlite3_step(use.get());
  }
  return txn_status;
}

absl::Status SqliteStore::Apply(PendingWrite& op) {
  sqlite3* db = writer_->db.get();
  switch (op.type) {
    case PendingWrite::Type::kInsert:
      return ApplyInsert(op);
    case PendingWrite::Type::kUpdate:
      return ApplyUpdate(op);
    case PendingWrite::Type::kPutObject: {
      StmtUse use(writer_->put_object.get());
      BindText(use.get(), 1, op.name);
      sqlite3_bind_blob(use.get(), 2, op.blob.data(),
                        static_cast<int>(op.blob.size()), SQLITE_STATIC);
      return StepDone(path_, db, use.get(),
                      absl::StrCat("put object ", op.name));
    }
    case PendingWrite::Type::kDeleteObject: {
      StmtUse use(writer_->delete_object.get());
      BindText(use.get(), 1, op.name);
      return StepDone(path_, db, use.get(),
                      absl::StrCat("delete object ", op.name));
    }
    case PendingWrite::Type::kWriteObjects: {
      // One savepoint around the call (CommitGroup) makes these all or none.
      for (const ObjectWrite& w : op.object_writes) {
        if (w.blob) {
          StmtUse use(writer_->put_object.get());
          BindText(use.get(), 1, w.name);
          sqlite3_bind_blob(use.get(), 2, w.blob->data(),
                            static_cast<int>(w.blob->size()), SQLITE_STATIC);
          FORQ_RETURN_IF_ERROR(StepDone(path_, db, use.get(),
                                        absl::StrCat("put object ", w.name)));
        } else {
          StmtUse use(writer_->delete_object.get());
          BindText(use.get(), 1, w.name);
          FORQ_RETURN_IF_ERROR(StepDone(
              path_, db, use.get(), absl::StrCat("delete object ", w.name)));
        }
      }
      return absl::OkStatus();
    }
    case PendingWrite::Type::kPurge: {
      StmtUse use(writer_->purge.get());
      sqlite3_bind_int64(use.get(), 1, op.now_us);
      FORQ_RETURN_IF_ERROR(StepDone(path_, db, use.get(), "purge"));
      op.purged = sqlite3_changes64(db);
      return absl::OkStatus();
    }
  }
  return absl::InternalError("sqlite store: unknown write type");
}

absl::Status SqliteStore::ApplyInsert(PendingWrite& op) {
  sqlite3* db = writer_->db.get();
  // Fresh results: a group may be applied twice (see RunGroup). The stored
  // tasks move into them only after the commit (CommitGroup).
  op.results.assign(op.tasks.size(), InsertResult());
  for (size_t i = 0; i < op.tasks.size(); ++i) {
    v1::Task& task = op.tasks[i];
    if (task.id().empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("sqlite store ", path_, ": task without id"));
    }
    if (!task.idempotency_key().empty()) {
      // Sees rows of earlier calls and of earlier tasks in this call, since
      // both are in the open transaction.
      StmtUse use(writer_->find_by_key.get());
      BindText(use.get(), 1, task.idempotency_key());
      const int rc = sqlite3_step(use.get());
      if (rc == SQLITE_ROW) {
        FORQ_ASSIGN_OR_RETURN(op.results[i].task,
                              ParseTask(path_, use.get(), 0));
        op.results[i].existing = true;
        continue;
      }
      if (rc != SQLITE_DONE) {
        return SqliteError(path_, db, rc, "look up idempotency key");
      }
    }
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
  }
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
  }
  return absl::OkStatus();
}

void SqliteStore::Insert(std::vector<v1::Task> tasks, InsertDone done) {
  auto op = std::make_unique<PendingWrite>();
  op->type = PendingWrite::Type::kInsert;
  op->tasks = std::move(tasks);
  op->insert_done = std::move(done);
  if (auto rejected = Enqueue(std::move(op))) {
    rejected->Finish(absl::UnavailableError(
        absl::StrCat("sqlite store ", path_, ": closed")));
  }
}

void SqliteStore::Update(std::vector<v1::Task> tasks, WriteDone done) {
  auto op = std::make_unique<PendingWrite>();
  op->type = PendingWrite::Type::kUpdate;
  op->tasks = std::move(tasks);
  op->write_done = std::move(done);
  if (auto rejected = Enqueue(std::move(op))) {
    rejected->Finish(absl::UnavailableError(
        absl::StrCat("sqlite store ", path_, ": closed")));
  }
}

void SqliteStore::PutObject(std::string name, std::string blob,
                            WriteDone done) {
  auto op = std::make_unique<PendingWrite>();
  op->type = PendingWrite::Type::kPutObject;
  op->name = std::move(name);
  op->blob = std::move(blob);
  op->write_done = std::move(done);
  if (auto rejected = Enqueue(std::move(op))) {
    rejected->Finish(absl::UnavailableError(
        absl::StrCat("sqlite store ", path_, ": closed")));
  }
}

void SqliteStore::DeleteObject(std::string name, WriteDone done) {
  auto op = std::make_unique<PendingWrite>();
  op->type = PendingWrite::Type::kDeleteObject;
  op->name = std::move(name);
  op->write_done = std::move(done);
  if (auto rejected = Enqueue(std::move(op))) {
    rejected->Finish(absl::UnavailableError(
        absl::StrCat("sqlite store ", path_, ": closed")));
  }
}

void SqliteStore::WriteObjects(std::vector<ObjectWrite> writes,
                               WriteDone done) {
  auto op = std::make_unique<PendingWrite>();
  op->type = PendingWrite::Type::kWriteObjects;
  op->object_writes = std::move(writes);
  op->write_done = std::move(done);
  if (auto rejected = Enqueue(std::move(op))) {
    rejected->Finish(absl::UnavailableError(
        absl::StrCat("sqlite store ", path_, ": closed")));
  }
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

absl::StatusOr<std::unique_ptr<SqliteStore::Reader>>
SqliteStore::AcquireReader() {
  {
    MutexLock lock(&pool_mu_);
    if (!idle_readers_.empty()) {
      auto reader = std::move(idle_readers_.back());
      idle_readers_.pop_back();
      return reader;
    }
  }
  auto reader = std::make_unique<Reader>();
  FORQ_ASSIGN_OR_RETURN(reader->db,
                        OpenConnection(path_, SQLITE_OPEN_READWRITE));
  sqlite3* db = reader->db.get();
  // Read-write open (WAL readers need the -shm file) but refuse writes.
  FORQ_RETURN_IF_ERROR(Exec(path_, db, "PRAGMA query_only=1"));
  FORQ_ASSIGN_OR_RETURN(
      reader->get, Prepare(path_, db, "SELECT data FROM tasks WHERE id = ?1"));
  FORQ_ASSIGN_OR_RETURN(
      reader->unfinished,
      Prepare(path_, db,
              absl::StrCat("SELECT data FROM tasks WHERE state IN (",
                           static_cast<int>(v1::QUEUED), ", ",
                           static_cast<int>(v1::RUNNING), ") ORDER BY id")));
  FORQ_ASSIGN_OR_RETURN(
      reader->objects,
      Prepare(path_, db, "SELECT name, data FROM objects ORDER BY name"));
  return reader;
}

void SqliteStore::ReleaseReader(std::unique_ptr<Reader> reader) {
  MutexLock lock(&pool_mu_);
  if (idle_readers_.size() < kMaxIdleReaders) {
    idle_readers_.push_back(std::move(reader));
  }
}

absl::StatusOr<v1::Task> SqliteStore::Get(absl::string_view id) {
  FORQ_ASSIGN_OR_RETURN(std::unique_ptr<Reader> reader, AcquireReader());
  absl::Cleanup release = [&] { ReleaseReader(std::move(reader)); };
  StmtUse use(reader->get.get());
  BindText(use.get(), 1, id);
  const int rc = sqlite3_step(use.get());
  if (rc == SQLITE_DONE) {
    return absl::NotFoundError(absl::StrCat("task ", id, " not found"));
  }
  if (rc != SQLITE_ROW) {
    return SqliteError(path_, reader->db.get(), rc, absl::StrCat("get ", id));
  }
  return ParseTask(path_, use.get(), 0);
}

absl::StatusOr<ListPage> SqliteStore::List(const ListQuery& query) {
  FORQ_ASSIGN_OR_RETURN(std::string after, DecodePageToken(query.page_token));
  const int limit = EffectivePageSize(query.page_size);
  FORQ_ASSIGN_OR_RETURN(std::unique_ptr<Reader> reader, AcquireReader());
  absl::Cleanup release = [&] { ReleaseReader(std::move(reader)); };
  sqlite3* db = reader->db.get();

  // Only the filters in use appear in the SQL. QUEUED and RUNNING are
  // written as literals: the planner uses the partial tasks_unfinished
  // index (which also yields id order) only when the query implies its
  // WHERE at prepare time. Other filters read the table in id order.
  const bool by_queue = !query.queue.empty();
  const bool by_state = query.state != v1::TASK_STATE_UNSPECIFIED;
  const bool unfinished =
      query.state == v1::QUEUED || query.state == v1::RUNNING;
  const bool by_kind = !query.kind.empty();
  const int mask = (by_queue ? 1 : 0) | (by_state ? 2 : 0) | (by_kind ? 4 : 0) |
                   (unfinished ? static_cast<int>(query.state) << 3 : 0);
  Stmt& stmt = reader->list_by_filters[mask];
  if (stmt == nullptr) {
    std::string sql = "SELECT data FROM tasks WHERE id > ?1";
    if (by_queue) {
      absl::StrAppend(&sql, " AND queue = ?2");
    }
    if (unfinished) {
      absl::StrAppend(&sql, " AND state = ", static_cast<int>(query.state));
    } else if (by_state) {
      absl::StrAppend(&sql, " AND state = ?3");
    }
    if (by_kind) {
      absl::StrAppend(&sql, " AND kind = ?4");
    }
    absl::StrAppend(&sql, " ORDER BY id LIMIT ?5");
    FORQ_ASSIGN_OR_RETURN(stmt, Prepare(path_, db, sql));
  }
  StmtUse use(stmt.get());
  BindText(use.get(), 1, after);
  if (by_queue) {
    BindText(use.get(), 2, query.queue);
  }
  if (by_state && !unfinished) {
    sqlite3_bind_int(use.get(), 3, static_cast<int>(query.state));
  }
  if (by_kind) {
    BindText(use.get(), 4, query.kind);
  }
  // One extra row tells whether another page exists.
  sqlite3_bind_int(use.get(), 5, limit + 1);

  ListPage page;
  for (;;) {
    const int rc = sqlite3_step(use.get());
    if (rc == SQLITE_DONE) {
      break;
    }
    if (rc != SQLITE_ROW) {
      return SqliteError(path_, db, rc, "list");
    }
    if (static_cast<int>(page.tasks.size()) == limit) {
      page.next_page_token = EncodePageToken(page.tasks.back().id());
      break;
    }
    FORQ_ASSIGN_OR_RETURN(v1::Task task, ParseTask(path_, use.get(), 0));
    page.tasks.push_back(std::move(task));
  }
  return page;
}

absl::StatusOr<std::vector<v1::Task>> SqliteStore::LoadUnfinished() {
  FORQ_ASSIGN_OR_RETURN(std::unique_ptr<Reader> reader, AcquireReader());
  absl::Cleanup release = [&] { ReleaseReader(std::move(reader)); };
  StmtUse use(reader->unfinished.get());
  std::vector<v1::Task> out;
  for (;;) {
    const int rc = sqlite3_step(use.get());
    if (rc == SQLITE_DONE) {
      break;
    }
    if (rc != SQLITE_ROW) {
      return SqliteError(path_, reader->db.get(), rc, "load unfinished");
    }
    FORQ_ASSIGN_OR_RETURN(v1::Task task, ParseTask(path_, use.get(), 0));
    out.push_back(std::move(task));
  }
  return out;
}

absl::StatusOr<std::vector<std::pair<std::string, std::string>>>
SqliteStore::LoadObjects() {
  FORQ_ASSIGN_OR_RETURN(std::unique_ptr<Reader> reader, AcquireReader());
  absl::Cleanup release = [&] { ReleaseReader(std::move(reader)); };
  StmtUse use(reader->objects.get());
  std::vector<std::pair<std::string, std::string>> out;
  for (;;) {
    const int rc = sqlite3_step(use.get());
    if (rc == SQLITE_DONE) {
      break;
    }
    if (rc != SQLITE_ROW) {
      return SqliteError(path_, reader->db.get(), rc, "load objects");
    }
    const auto* name =
        reinterpret_cast<const char*>(sqlite3_column_text(use.get(), 0));
    const int name_size = sqlite3_column_bytes(use.get(), 0);
    const auto* data =
        static_cast<const char*>(sqlite3_column_blob(use.get(), 1));
    const int data_size = sqlite3_column_bytes(use.get(), 1);
    out.emplace_back(std::string(name, name_size),
                     std::string(data == nullptr ? "" : data, data_size));
  }
  return out;
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
  MutexLock lock(&pool_mu_);
  idle_readers_.clear();
}

}  // namespace forq::server
