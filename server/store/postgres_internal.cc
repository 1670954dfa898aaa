#include "server/store/postgres_internal.h"

#include <algorithm>
#include <optional>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "spdlog/spdlog.h"

#include "common/status_macros.h"

#include <libpq-fe.h>

namespace forq::server {
namespace postgres_internal {

void ResultDeleter::operator()(PGresult* res) const { PQclear(res); }

namespace {

absl::StatusCode CodeForState(absl::string_view state) {
  if (state == "23505") return absl::StatusCode::kAlreadyExists;
  if (absl::StartsWith(state, "08") || absl::StartsWith(state, "57P") ||
      state == "40001" || state == "40P01" || state == "25006") {
    // Connection lost, server shutting down, serialization failure,
    // deadlock, read-only (a standby): worth retrying.
    return absl::StatusCode::kUnavailable;
  }
  if (absl::StartsWith(state, "53")) {
    return absl::StatusCode::kResourceExhausted;
  }
  if (state == "42501" || absl::StartsWith(state, "28")) {
    return absl::StatusCode::kPermissionDenied;
  }
  if (state == "3F000" || state == "3D000") {
    return absl::StatusCode::kFailedPrecondition;  // No such schema/database.
  }
  return absl::StatusCode::kInternal;
}

absl::Status PgError(PGconn* conn, const PGresult* res,
                     absl::string_view what) {
  std::string message =
      res != nullptr ? PQresultErrorMessage(res) : PQerrorMessage(conn);
  if (message.empty()) message = PQerrorMessage(conn);
  absl::StripTrailingAsciiWhitespace(&message);
  absl::StatusCode code = absl::StatusCode::kInternal;
  const char* state =
      res != nullptr ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : nullptr;
  if (PQstatus(conn) == CONNECTION_BAD) {
    code = absl::StatusCode::kUnavailable;
  } else if (state != nullptr) {
    code = CodeForState(state);
  }
  return absl::Status(code,
                      absl::StrCat("postgres store: ", what, ": ", message));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Conn>> Conn::Connect(
    const std::string& uri, Durability durability,
    absl::Duration idle_txn_timeout, std::string session_sql) {
  std::unique_ptr<Conn> conn(
      new Conn(uri, durability, idle_txn_timeout, std::move(session_sql)));
  FORQ_RETURN_IF_ERROR(conn->Setup());
  return conn;
}

absl::StatusOr<std::vector<Result>> Conn::RunPipeline(
    const std::vector<Stmt>& stmts, absl::string_view what) {
  if (PQenterPipelineMode(conn_) != 1) {
    return PgError(conn_, nullptr, absl::StrCat(what, ": pipeline mode"));
  }
  std::vector<int> prepares(stmts.size(), 0);
  bool sent = true;
  for (size_t i = 0; sent && i < stmts.size(); ++i) {
    const Stmt& st = stmts[i];
    if (st.name == nullptr) {
      sent = PQsendQueryParams(conn_, st.sql->c_str(), 0, nullptr, nullptr,
                               nullptr, nullptr, 1) == 1;
      continue;
    }
    if (!prepared_.contains(st.name)) {
      sent = PQsendPrepare(conn_, st.name, st.sql->c_str(),
                           static_cast<int>(st.params.size()), nullptr) == 1;
      prepares[i] = 1;
      if (!sent) break;
    }
    std::vector<const char*> values(st.params.size());
    std::vector<int> lengths(st.params.size());
    std::vector<int> formats(st.params.size());
    for (size_t k = 0; k < st.params.size(); ++k) {
      values[k] = st.params[k].null ? nullptr : st.params[k].value.data();
      lengths[k] = static_cast<int>(st.params[k].value.size());
      formats[k] = st.params[k].binary ? 1 : 0;
    }
    sent =
        PQsendQueryPrepared(conn_, st.name, static_cast<int>(st.params.size()),
                            values.data(), lengths.data(), formats.data(),
                            /*resultFormat=*/1) == 1;
  }
  // A pipeline that cannot be completed leaves the session in an unknown
  // state: it is reconnected (and the group fails as Unavailable).
  auto broken = [&](absl::string_view why) {
    absl::Status s = PgError(conn_, nullptr, absl::StrCat(what, why));
    PQreset(conn_);
    prepared_.clear();
    if (!bad()) (void)Setup();
    return absl::Status(absl::StatusCode::kUnavailable, s.message());
  };
  if (!sent || PQpipelineSync(conn_) != 1) return broken("");
  std::vector<Result> out(stmts.size());
  absl::Status error;
  for (size_t i = 0; i < stmts.size(); ++i) {
    for (int k = 0; k <= prepares[i]; ++k) {
      Result res(PQgetResult(conn_));
      if (res == nullptr) return broken(": no result");
      const ExecStatusType st = PQresultStatus(res.get());
      const bool ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
      if (!ok && st != PGRES_PIPELINE_ABORTED && error.ok()) {
        error = PgError(conn_, res.get(), what);
      }
      if (k < prepares[i] && ok) prepared_.insert(stmts[i].name);
      if (k == prepares[i]) out[i] = std::move(res);
      // Each statement's results end with a null.
      while (PGresult* extra = PQgetResult(conn_)) PQclear(extra);
    }
    if (error.ok() && PQresultStatus(out[i].get()) == PGRES_PIPELINE_ABORTED) {
      error = absl::AbortedError(absl::StrCat(what, ": pipeline aborted"));
    }
  }
  Result sync(PQgetResult(conn_));
  if (sync == nullptr || PQresultStatus(sync.get()) != PGRES_PIPELINE_SYNC ||
      PQexitPipelineMode(conn_) != 1) {
    return broken(": pipeline end");
  }
  if (!error.ok()) return error;
  return out;
}

absl::Status Conn::EnsureOk() {
  if (!bad()) return absl::OkStatus();
  PQreset(conn_);
  prepared_.clear();
  return Setup();
}

absl::Status Conn::Command(const char* sql, absl::string_view what) {
  Result res(PQexec(conn_, sql));
  const ExecStatusType st = PQresultStatus(res.get());
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
    return PgError(conn_, res.get(), what);
  }
  return absl::OkStatus();
}

absl::StatusOr<Result> Conn::Run(const char* name, const std::string& sql,
                                 const std::vector<Param>& params,
                                 absl::string_view what) {
  if (!prepared_.contains(name)) {
    Result res(PQprepare(conn_, name, sql.c_str(),
                         static_cast<int>(params.size()), nullptr));
    if (PQresultStatus(res.get()) != PGRES_COMMAND_OK) {
      return PgError(conn_, res.get(), absl::StrCat("prepare ", what));
    }
    prepared_.insert(name);
  }
  std::vector<const char*> values(params.size());
  std::vector<int> lengths(params.size());
  std::vector<int> formats(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    values[i] = params[i].null ? nullptr : params[i].value.data();
    lengths[i] = static_cast<int>(params[i].value.size());
    formats[i] = params[i].binary ? 1 : 0;
  }
  Result res(PQexecPrepared(conn_, name, static_cast<int>(params.size()),
                            values.data(), lengths.data(), formats.data(),
                            /*resultFormat=*/1));
  const ExecStatusType st = PQresultStatus(res.get());
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
    return PgError(conn_, res.get(), what);
  }
  return res;
}

PGconn* Conn::ConnectWithDefaults(const std::string& uri) {
  const char* keys[] = {
      "connect_timeout",  "keepalives_idle", "keepalives_interval",
      "keepalives_count", "dbname",          nullptr};
  const char* values[] = {"5", "10", "5", "2", uri.c_str(), nullptr};
  return PQconnectdbParams(keys, values, /*expand_dbname=*/1);
}

absl::Status Conn::Setup() {
  if (PQstatus(conn_) != CONNECTION_OK) {
    // The message names host and port, never the password.
    return PgError(conn_, nullptr, "connect");
  }
  // Server notices ("relation already exists, skipping") go to the debug
  // log instead of libpq's default, stderr.
  PQsetNoticeProcessor(
      conn_,
      [](void*, const char* message) {
        spdlog::debug("postgres: {}",
                      std::string(absl::StripTrailingAsciiWhitespace(message)));
      },
      nullptr);
  if (durability_ == Durability::kNone) {
    FORQ_RETURN_IF_ERROR(
        Command("SET synchronous_commit = off", "set synchronous_commit"));
  }
  // Every statement is written for index access by primary key or a
  // partial index. With custom plans (PostgreSQL's default for a prepared
  // statement's first runs) the planner sees the real length of an
  // unnest() array and, on a table whose statistics are stale, may pick
  // a hash join over a scan of the whole table; the generic plan keeps
  // the nested loop over the key and saves the planning on every call.
  FORQ_RETURN_IF_ERROR(Command("SET plan_cache_mode = force_generic_plan",
                               "set plan_cache_mode"));
  // A generic plan is made once per connection, at a statement's first
  // run: on a new schema the tables are empty then, and the planner
  // picks a sequential scan of `tasks` that stays in the plan as the
  // table grows (one scan of every row per group of updates: measured
  // 10 ms per group at 40,000 rows). No statement of forqd's needs one.
  // With sequential scans priced out, a statement that still needs one
  // (the live-node count, the schema version: tables of a few rows) costs
  // more than jit_above_cost, and PostgreSQL compiles it with LLVM on
  // every run: 30-100 ms of the server's CPU for a scan of one row.
  FORQ_RETURN_IF_ERROR(Command("SET enable_seqscan = off; SET jit = off",
                               "set enable_seqscan, jit"));
  if (idle_txn_timeout_ > absl::ZeroDuration()) {
    FORQ_RETURN_IF_ERROR(
        Command(absl::StrCat("SET idle_in_transaction_session_timeout = ",
                             absl::ToInt64Milliseconds(idle_txn_timeout_))
                    .c_str(),
                "set idle_in_transaction_session_timeout"));
  }
  if (!session_sql_.empty()) {
    FORQ_RETURN_IF_ERROR(Command(session_sql_.c_str(), "session settings"));
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::Task> ParseTask(const PGresult* res, int row, int column) {
  v1::Task task;
  if (!task.ParseFromArray(PQgetvalue(res, row, column),
                           PQgetlength(res, row, column))) {
    return absl::DataLossError(
        "postgres store: stored task record does not parse");
  }
  return task;
}

Param OptionalInt(std::optional<int64_t> value) {
  return value.has_value() ? Param::Int(*value) : Param::Null();
}

// How long from now a QUEUED task waits (its not_before, by this node's
// clock); the database adds it to its own clock. nullopt: claimable now.
std::optional<int64_t> DelayMicros(const v1::Task& task) {
  if (task.state() != v1::QUEUED || !task.has_not_before()) {
    return std::nullopt;
  }
  const int64_t at = task.not_before().seconds() * 1'000'000 +
                     task.not_before().nanos() / 1000;
  return std::max<int64_t>(0, at - absl::ToUnixMicros(absl::Now()));
}

std::string TextValue(const PGresult* res, int row, int column) {
  return std::string(PQgetvalue(res, row, column),
                     PQgetlength(res, row, column));
}

int IntValue(const PGresult* res, int row, int column) {
  int v = 0;
  (void)absl::SimpleAtoi(TextValue(res, row, column), &v);
  return v;
}

// A row of (data, state, attempt). A cluster node writes no RUNNING
// record: its claim sets the state and attempt columns and leaves `data` as
// it was queued, so a claimed task reads as RUNNING at the claimed attempt.
absl::StatusOr<v1::Task> TaskFromRow(const PGresult* res, int row) {
  FORQ_ASSIGN_OR_RETURN(v1::Task task, ParseTask(res, row, 0));
  if (IntValue(res, row, 1) == static_cast<int>(v1::RUNNING) &&
      task.state() != v1::RUNNING) {
    task.set_state(v1::RUNNING);
    task.set_attempt(IntValue(res, row, 2));
    task.clear_not_before();
  }
  return task;
}

// Cluster mode: lease/2, so a paused node's open transaction is ended
// (and its row locks released) before its leases expire.
absl::Duration IdleTxnTimeout(const ClusterOptions& cluster) {
  return cluster.enabled ? cluster.lease / 2 : absl::ZeroDuration();
}

absl::StatusOr<int64_t> AffectedRows(const Result& res) {
  int64_t n = 0;
  if (!absl::SimpleAtoi(PQcmdTuples(res.get()), &n)) {
    return absl::InternalError("postgres store: no affected-row count");
  }
  return n;
}

}  // namespace postgres_internal
}  // namespace forq::server
