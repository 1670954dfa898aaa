#include "server/store/sqlite_internal.h"

#include <utility>

#include "absl/strings/str_cat.h"

#include "server/store/sqlite_page_cache.h"
#include "server/store/task_record.h"

namespace forq::server::sqlite_internal {

using store_internal::ExpiresAtMicros;
using store_internal::FinishedAtMicros;

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
  // Process-wide settings; they must precede sqlite3_initialize(), and if
  // something initialized SQLite first they are harmless no-ops. SQLite
  // keeps allocation statistics behind a mutex taken on every malloc; forq
  // never reads them. The page cache layer spares each commit a scan of
  // the whole cache (sqlite_page_cache.h).
  static std::once_flag configured;
  std::call_once(configured, [] {
    sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
    InstallPageCacheLayer();
  });
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

std::string InsertRowsSql(int rows) {
  std::string sql =
      "INSERT INTO tasks(id, queue, kind, state, priority, idempotency_key, "
      "finished_at_us, expires_at_us, data) VALUES";
  for (int row = 0; row < rows; ++row) {
    absl::StrAppend(&sql, row == 0 ? "(" : ",(");
    for (int col = 1; col <= 9; ++col) {
      absl::StrAppend(&sql, col == 1 ? "?" : ", ?", row * 9 + col);
    }
    absl::StrAppend(&sql, ")");
  }
  return sql;
}

// Binds ?first..?first+8 (the insert's columns, in order) from `task`;
// `data` must stay alive until the statement is reset.
void BindTaskColumns(sqlite3_stmt* stmt, const v1::Task& task,
                     const std::string& data, int first) {
  BindText(stmt, first, task.id());
  BindText(stmt, first + 1, task.queue());
  BindText(stmt, first + 2, task.kind());
  sqlite3_bind_int(stmt, first + 3, static_cast<int>(task.state()));
  sqlite3_bind_int(stmt, first + 4, task.priority());
  // NULL, not "", so the partial unique index ignores tasks without a key.
  if (task.idempotency_key().empty()) {
    sqlite3_bind_null(stmt, first + 5);
  } else {
    BindText(stmt, first + 5, task.idempotency_key());
  }
  BindOptionalInt(stmt, first + 6, FinishedAtMicros(task));
  BindOptionalInt(stmt, first + 7, ExpiresAtMicros(task));
  sqlite3_bind_blob(stmt, first + 8, data.data(), static_cast<int>(data.size()),
                    SQLITE_STATIC);
}

}  // namespace forq::server::sqlite_internal
