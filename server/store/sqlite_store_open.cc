// SqliteStore::Open: the data directory, its lock, the schema and its
// migrations, and the writer's prepared statements.

#include <errno.h>
#include <fcntl.h>
#include <sys/file.h>

#include <filesystem>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

#include "common/errno_status.h"
#include "common/status_macros.h"
#include "server/store/sqlite_internal.h"
#include "server/store/sqlite_store.h"

namespace forq::server {
namespace {

using sqlite_internal::Exec;
using sqlite_internal::OpenConnection;
using sqlite_internal::Prepare;
using sqlite_internal::SqliteError;

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
CREATE TABLE IF NOT EXISTS expiry(
  expires_at_us INTEGER NOT NULL,
  ids TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS expiry_by_time ON expiry(expires_at_us);
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

// Version 3 indexed every finished task by expiry time: b-tree work for each
// task written. Since version 4 a write group records its finished tasks in
// one `expiry` row per second of expiry (their ids, newline-separated, under
// the latest expiry time among them), and the purge reads those rows: a
// task goes at most a second after its expiry time.
constexpr const char* kMigrateTo4 = R"sql(
INSERT INTO expiry(expires_at_us, ids)
  SELECT max(expires_at_us), group_concat(id, char(10)) FROM tasks
  WHERE expires_at_us IS NOT NULL GROUP BY expires_at_us / 1000000;
DROP INDEX IF EXISTS tasks_by_expiry;
)sql";

}  // namespace

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
    if (created.ok() && version > 0 && version < 3) {
      created = Exec(path, db, kMigrateTo3);
    }
    if (created.ok() && version > 0 && version < 4) {
      created = Exec(path, db, kMigrateTo4);
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
  for (int rows :
       {sqlite_internal::kRowsPerInsert, sqlite_internal::kFewRowsPerInsert}) {
    FORQ_ASSIGN_OR_RETURN(
        writer->insert_rows[rows],
        Prepare(path, db, sqlite_internal::InsertRowsSql(rows)));
  }
  writer->row_scratch.resize(sqlite_internal::kRowsPerInsert);
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
      writer->insert_expiry,
      Prepare(path, db,
              "INSERT INTO expiry(expires_at_us, ids) VALUES(?1, ?2)"));
  FORQ_ASSIGN_OR_RETURN(
      writer->expired,
      Prepare(path, db,
              "SELECT rowid, ids FROM expiry WHERE expires_at_us <= ?1 "
              "ORDER BY expires_at_us LIMIT 256"));
  // A task finished again later (retried) has a later expiry of its own and
  // stays until its newer expiry row comes due.
  FORQ_ASSIGN_OR_RETURN(
      writer->purge_task,
      Prepare(path, db,
              "DELETE FROM tasks WHERE id = ?1 AND expires_at_us <= ?2"));
  FORQ_ASSIGN_OR_RETURN(
      writer->delete_expiry,
      Prepare(path, db, "DELETE FROM expiry WHERE rowid = ?1"));

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

}  // namespace forq::server
