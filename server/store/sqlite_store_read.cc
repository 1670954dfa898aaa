// SqliteStore's readers: a pool of read connections serving Get, List and
// the loads of start-up.

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"

#include "common/status_macros.h"
#include "server/store/sqlite_internal.h"
#include "server/store/sqlite_store.h"
#include "server/store/task_record.h"

namespace forq::server {
namespace {

using sqlite_internal::BindText;
using sqlite_internal::Exec;
using sqlite_internal::OpenConnection;
using sqlite_internal::ParseTask;
using sqlite_internal::Prepare;
using sqlite_internal::SqliteError;
using sqlite_internal::StmtUse;
using store_internal::DecodePageToken;
using store_internal::EffectivePageSize;
using store_internal::EncodePageToken;

}  // namespace

absl::StatusOr<std::unique_ptr<SqliteStore::Reader>>
SqliteStore::AcquireReader() {
  if (std::unique_ptr<Reader> idle = readers_.Take()) return idle;
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
  readers_.Give(std::move(reader));
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

}  // namespace forq::server
