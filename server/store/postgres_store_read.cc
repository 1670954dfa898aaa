// PostgresStore: reads on the pool of read connections, and the purge of
// expired tasks.
#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"

#include "common/status_macros.h"
#include "server/store/postgres_internal.h"
#include "server/store/task_record.h"

#include <libpq-fe.h>

namespace forq::server {

namespace {

using postgres_internal::AffectedRows;
using postgres_internal::ArrayParam;
using postgres_internal::Conn;
using postgres_internal::IdleTxnTimeout;
using postgres_internal::Param;
using postgres_internal::ParseTask;
using postgres_internal::Result;
using postgres_internal::TaskFromRow;
using postgres_internal::TextValue;
using store_internal::DecodePageToken;
using store_internal::EffectivePageSize;
using store_internal::EncodePageToken;

// Rows deleted per statement by PurgeExpired: short transactions, and
// autovacuum keeps up between them.
constexpr int kPurgeBatch = 5000;
// Reads return the state and attempt columns beside `data` (TaskFromRow).
const std::string kGet =
    "SELECT data, state::text, attempt::text FROM tasks WHERE id = $1";
// The ended (terminal) or unknown tasks among $1: an unknown one has a
// NULL data column.
const std::string kGetEnded = absl::StrCat(
    "SELECT t.data, t.state::text, t.attempt::text, u.id FROM "
    "unnest($1::text[]) AS u(id) LEFT JOIN tasks t ON t.id = u.id WHERE t.id "
    "IS NULL OR t.state NOT IN (",
    static_cast<int>(v1::QUEUED), ", ", static_cast<int>(v1::RUNNING), ")");
const std::string kUnfinished = absl::StrCat(
    "SELECT data FROM tasks WHERE state IN (", static_cast<int>(v1::QUEUED),
    ", ", static_cast<int>(v1::RUNNING), ") ORDER BY id");
const std::string kObjects = "SELECT name, data FROM objects ORDER BY name";
const std::string kPurge = absl::StrCat(
    "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks WHERE "
    "expires_at_us <= $1 LIMIT ",
    kPurgeBatch, ")");

}  // namespace

absl::StatusOr<std::unique_ptr<Conn>> PostgresStore::AcquireReader() {
  while (std::unique_ptr<Conn> conn = readers_.Take()) {
    if (conn->EnsureOk().ok()) return conn;
  }
  return Conn::Connect(uri_, durability_, IdleTxnTimeout(cluster_));
}

void PostgresStore::ReleaseReader(std::unique_ptr<Conn> conn) {
  if (conn == nullptr || conn->bad()) return;
  readers_.Give(std::move(conn));
}

absl::StatusOr<int64_t> PostgresStore::PurgeExpired(absl::Time now) {
  {
    MutexLock lock(&queue_mu_);
    if (closing_) return absl::UnavailableError("postgres store: closed");
  }
  FORQ_ASSIGN_OR_RETURN(std::unique_ptr<Conn> conn, AcquireReader());
  absl::Cleanup release = [&] { ReleaseReader(std::move(conn)); };
  // Batches of kPurgeBatch rows, each its own short transaction.
  int64_t total = 0;
  for (;;) {
    FORQ_ASSIGN_OR_RETURN(
        Result res, conn->Run("purge", kPurge,
                              {Param::Int(absl::ToUnixMicros(now))}, "purge"));
    FORQ_ASSIGN_OR_RETURN(int64_t n, AffectedRows(res));
    total += n;
    if (n < kPurgeBatch) return total;
  }
}

absl::StatusOr<v1::Task> PostgresStore::Get(absl::string_view id) {
  FORQ_ASSIGN_OR_RETURN(Result res, WithReader([&](Conn& conn) {
                          return conn.Run("get", kGet,
                                          {Param::Text(std::string(id))},
                                          absl::StrCat("get ", id));
                        }));
  if (PQntuples(res.get()) == 0) {
    return absl::NotFoundError(absl::StrCat("task ", id, " not found"));
  }
  return TaskFromRow(res.get(), 0);
}

absl::StatusOr<WorkSource::Ended> PostgresStore::ReadEnded(
    const std::vector<std::string>& ids) {
  Ended out;
  if (ids.empty()) return out;
  ArrayParam array(ArrayParam::Type::kText);
  for (const std::string& id : ids) array.AddText(id);
  const Param ids_param = std::move(array).Finish();
  FORQ_ASSIGN_OR_RETURN(Result res, WithReader([&](Conn& conn) {
                          return conn.Run("get_ended", kGetEnded, {ids_param},
                                          "read ended tasks");
                        }));
  const int rows = PQntuples(res.get());
  for (int r = 0; r < rows; ++r) {
    if (PQgetisnull(res.get(), r, 0)) {
      out.unknown.push_back(TextValue(res.get(), r, 3));
      continue;
    }
    FORQ_ASSIGN_OR_RETURN(v1::Task task, TaskFromRow(res.get(), r));
    out.terminal.push_back(std::move(task));
  }
  return out;
}

absl::StatusOr<ListPage> PostgresStore::List(const ListQuery& query) {
  FORQ_ASSIGN_OR_RETURN(std::string after, DecodePageToken(query.page_token));
  const int limit = EffectivePageSize(query.page_size);
  const bool by_queue = !query.queue.empty();
  const bool by_state = query.state != v1::TASK_STATE_UNSPECIFIED;
  const bool by_kind = !query.kind.empty();
  // Only the filters in use appear in the SQL, so the planner can use the
  // (filter, id) index that also yields id order.
  std::string sql =
      "SELECT data, state::text, attempt::text FROM tasks WHERE id > $1";
  std::vector<Param> params = {Param::Text(std::move(after))};
  std::string name = "list";
  if (by_queue) {
    params.push_back(Param::Text(query.queue));
    absl::StrAppend(&sql, " AND queue = $", params.size());
    name += "_q";
  }
  if (by_state) {
    // A literal, not a parameter: with generic plans only a literal lets
    // the planner use the partial index tasks_unfinished (QUEUED,
    // RUNNING). The state is an enum number, one statement per state.
    const int state = static_cast<int>(query.state);
    absl::StrAppend(&sql, " AND state = ", state);
    absl::StrAppend(&name, "_s", state);
  }
  if (by_kind) {
    params.push_back(Param::Text(query.kind));
    absl::StrAppend(&sql, " AND kind = $", params.size());
    name += "_k";
  }
  // One extra row tells whether another page exists.
  params.push_back(Param::Int(limit + 1));
  absl::StrAppend(&sql, " ORDER BY id LIMIT $", params.size());

  FORQ_ASSIGN_OR_RETURN(Result res, WithReader([&](Conn& conn) {
                          return conn.Run(name.c_str(), sql, params, "list");
                        }));
  ListPage page;
  const int rows = PQntuples(res.get());
  for (int r = 0; r < rows; ++r) {
    if (r == limit) {
      page.next_page_token = EncodePageToken(page.tasks.back().id());
      break;
    }
    FORQ_ASSIGN_OR_RETURN(v1::Task task, TaskFromRow(res.get(), r));
    page.tasks.push_back(std::move(task));
  }
  return page;
}

absl::StatusOr<std::vector<v1::Task>> PostgresStore::LoadUnfinished() {
  FORQ_ASSIGN_OR_RETURN(std::unique_ptr<Conn> conn, AcquireReader());
  absl::Cleanup release = [&] { ReleaseReader(std::move(conn)); };
  FORQ_ASSIGN_OR_RETURN(
      Result res, conn->Run("unfinished", kUnfinished, {}, "load unfinished"));
  std::vector<v1::Task> out;
  const int rows = PQntuples(res.get());
  out.reserve(rows);
  for (int r = 0; r < rows; ++r) {
    FORQ_ASSIGN_OR_RETURN(v1::Task task, ParseTask(res.get(), r, 0));
    out.push_back(std::move(task));
  }
  return out;
}

absl::StatusOr<std::vector<std::pair<std::string, std::string>>>
PostgresStore::LoadObjects() {
  FORQ_ASSIGN_OR_RETURN(std::unique_ptr<Conn> conn, AcquireReader());
  absl::Cleanup release = [&] { ReleaseReader(std::move(conn)); };
  FORQ_ASSIGN_OR_RETURN(Result res,
                        conn->Run("objects", kObjects, {}, "load objects"));
  std::vector<std::pair<std::string, std::string>> out;
  const int rows = PQntuples(res.get());
  out.reserve(rows);
  for (int r = 0; r < rows; ++r) {
    out.emplace_back(
        std::string(PQgetvalue(res.get(), r, 0), PQgetlength(res.get(), r, 0)),
        std::string(PQgetvalue(res.get(), r, 1), PQgetlength(res.get(), r, 1)));
  }
  return out;
}

}  // namespace forq::server
