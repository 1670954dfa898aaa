// Internals of the SQLite store shared by its files (sqlite_store.cc: the
// writer; sqlite_store_open.cc: opening and migrating; sqlite_store_read.cc:
// the readers): owning handles for connections and statements, error
// mapping, binding and parsing, and the store's nested structs.
#ifndef FORQ_SERVER_STORE_SQLITE_INTERNAL_H_
#define FORQ_SERVER_STORE_SQLITE_INTERNAL_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

#include "server/store/sqlite_store.h"

#include <sqlite3.h>

namespace forq::server {
namespace sqlite_internal {

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

// The absl code for a SQLite result code.
absl::StatusCode CodeFor(int rc);
// "sqlite store /x/forq.db: <what>: <sqlite message> (code N)".
absl::Status SqliteError(absl::string_view path, sqlite3* db, int rc,
                         absl::string_view what);
absl::StatusOr<Stmt> Prepare(absl::string_view path, sqlite3* db,
                             absl::string_view sql);
absl::Status Exec(absl::string_view path, sqlite3* db, const char* sql);
// Steps a statement that returns no rows.
absl::Status StepDone(absl::string_view path, sqlite3* db, sqlite3_stmt* stmt,
                      absl::string_view what);
// Opens a connection with the settings every connection of the store uses.
absl::StatusOr<Db> OpenConnection(absl::string_view path, int flags);
// The task serialized in `column` of the current row.
absl::StatusOr<v1::Task> ParseTask(absl::string_view path, sqlite3_stmt* stmt,
                                   int column);
void BindOptionalInt(sqlite3_stmt* stmt, int index,
                     std::optional<int64_t> value);
void BindText(sqlite3_stmt* stmt, int index, absl::string_view text);
// Binds the insert statement's columns of one row, ?first..?first+8
// (`data` is the serialized task, which must outlive the step).
void BindTaskColumns(sqlite3_stmt* stmt, const v1::Task& task,
                     const std::string& data, int first = 1);
// Rows per multi-row INSERT (Writer::insert_rows): one statement for many
// tasks spares most of SQLite's per-statement work. A call's rows go 16,
// then 4 at a time, the rest one by one.
constexpr int kRowsPerInsert = 16;
constexpr int kFewRowsPerInsert = 4;
// INSERT INTO tasks ... VALUES with `rows` rows of ?-parameters.
std::string InsertRowsSql(int rows);

}  // namespace sqlite_internal

using sqlite_internal::Db;
using sqlite_internal::Stmt;

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
  Stmt insert_task, find_by_key, update_task, put_object, delete_object;
  // Multi-row INSERTs by row count (kRowsPerInsert, kFewRowsPerInsert).
  std::map<int, Stmt> insert_rows;
  Stmt insert_expiry, expired, purge_task, delete_expiry;
  std::string scratch;                   // Serialised task, reused across rows.
  std::vector<std::string> row_scratch;  // The same for insert_rows' rows.
  // The finished tasks written by the open transaction, by second of
  // expiry: their ids (newline-separated) and latest expiry in that second,
  // stored as one `expiry` row per second at commit.
  struct Expiring {
    int64_t max_us = 0;
    std::string ids;
  };
  std::map<int64_t, Expiring> expiring;
};

// A read connection; List statements are cached per filter combination.
struct SqliteStore::Reader {
  Db db;
  Stmt get, unfinished, objects;
  std::map<int, Stmt> list_by_filters;
};

}  // namespace forq::server

#endif  // FORQ_SERVER_STORE_SQLITE_INTERNAL_H_
