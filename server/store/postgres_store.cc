#include "server/store/postgres_store.h"

#include <poll.h>
#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <optional>

#include "absl/cleanup/cleanup.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/random/random.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "spdlog/spdlog.h"

#include "common/status_macros.h"
#include "server/store/task_record.h"

#include <libpq-fe.h>

namespace forq::server {
namespace postgres_internal {

void ResultDeleter::operator()(PGresult* res) const { PQclear(res); }

// One bound parameter: text, or raw bytes sent in binary format (bytea).
struct Param {
  std::string value;
  bool null = false;
  bool binary = false;
  static Param Text(std::string v) { return Param{std::move(v)}; }
  static Param Null() { return Param{"", true}; }
  static Param Bytes(std::string v) { return Param{std::move(v), false, true}; }
  static Param Int(int64_t v) { return Param{absl::StrCat(v)}; }
};

namespace {

using store_internal::DecodePageToken;
using store_internal::EffectivePageSize;
using store_internal::EncodePageToken;
using store_internal::ExpiresAtMicros;
using store_internal::FinishedAtMicros;

absl::StatusCode CodeForState(absl::string_view state) {
  if (state == "23505") return absl::StatusCode::kAlreadyExists;
  if (absl::StartsWith(state, "08") || absl::StartsWith(state, "57P") ||
      state == "40001" || state == "40P01" || state == "25006") {
    // Connection lost, server shutting down, serialization failure,
    // deadlock, read-only (a standby): worth retrying.
    return absl::StatusCode::kUnavailable;
  }
  if (absl::StartsWith(state, "53"))
    return absl::StatusCode::kResourceExhausted;
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

// A one-dimensional array parameter for unnest(), in PostgreSQL's binary
// array format (array_recv): neither forqd nor the server formats, escapes,
// hex-encodes or parses text per element. The element type must be the
// one the statement casts the parameter to ($1::text[] and so on), or the
// server refuses it ("wrong element type").
class ArrayParam {
 public:
  // Element types by OID (pg_type.h).
  enum class Type : uint32_t {
    kBool = 16,
    kBytea = 17,
    kInt8 = 20,
    kInt4 = 23,
    kText = 25,
  };
  explicit ArrayParam(Type type) : type_(type), body_(kHeader, '\0') {}

  // text or bytea: the bytes as they are.
  void AddText(absl::string_view value) {
    AddLength(static_cast<uint32_t>(value.size()));
    body_.append(value.data(), value.size());
  }
  void AddBytes(absl::string_view bytes) { AddText(bytes); }
  // int4 or int8, by the array's type; nullopt is NULL.
  void AddInt(std::optional<int64_t> value) {
    if (!value.has_value()) {
      AddNull();
      return;
    }
    if (type_ == Type::kInt4) {
      AddLength(4);
      AppendBig(static_cast<uint32_t>(*value), 4);
    } else {
      AddLength(8);
      AppendBig(static_cast<uint64_t>(*value), 8);
    }
  }
  void AddBool(bool value) {
    AddLength(1);
    body_.push_back(value ? 1 : 0);
  }
  // Empty is NULL.
  void AddNullableText(absl::string_view value) {
    if (value.empty()) {
      AddNull();
    } else {
      AddText(value);
    }
  }
  void AddNull() {
    AddLength(0xffffffffu);  // -1
    has_null_ = true;
  }

  Param Finish() && {
    // ndim, flags (has nulls), element type; then per dimension its
    // length and lower bound. An empty array has no dimension.
    std::string header;
    header.reserve(kHeader);
    AppendBig(count_ > 0 ? 1 : 0, 4, header);
    AppendBig(has_null_ ? 1 : 0, 4, header);
    AppendBig(static_cast<uint32_t>(type_), 4, header);
    if (count_ == 0) return Param::Bytes(std::move(header));
    AppendBig(count_, 4, header);
    AppendBig(1, 4, header);
    body_.replace(0, kHeader, header);
    return Param::Bytes(std::move(body_));
  }

 private:
  static constexpr size_t kHeader = 20;
  void AddLength(uint32_t length) {
    ++count_;
    AppendBig(length, 4);
  }
  void AppendBig(uint64_t v, int bytes) { AppendBig(v, bytes, body_); }
  static void AppendBig(uint64_t v, int bytes, std::string& out) {
    for (int i = bytes - 1; i >= 0; --i) {
      out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
    }
  }

  const Type type_;
  // The header's room, then each element: its length (-1: NULL), bytes.
  std::string body_;
  uint32_t count_ = 0;
  bool has_null_ = false;
};

}  // namespace

// A libpq connection with its prepared statements (prepared on first use,
// again after a reconnect).
class Conn {
 public:
  // `idle_txn_timeout` > 0 (cluster mode): the server ends this session if
  // it sits in an open transaction that long, so a node that is paused
  // (SIGSTOP, a stalled VM) mid-transaction cannot hold row locks that keep
  // other nodes from reaping its leases.
  // `session_sql` runs after every (re)connect (session settings).
  static absl::StatusOr<std::unique_ptr<Conn>> Connect(
      const std::string& uri, Durability durability,
      absl::Duration idle_txn_timeout = absl::ZeroDuration(),
      std::string session_sql = "") {
    std::unique_ptr<Conn> conn(
        new Conn(uri, durability, idle_txn_timeout, std::move(session_sql)));
    FORQ_RETURN_IF_ERROR(conn->Setup());
    return conn;
  }
  ~Conn() { PQfinish(conn_); }
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;

  // One statement of RunPipeline: prepared `name`, or (name null) `sql`
  // without parameters (BEGIN, COMMIT).
  struct Stmt {
    const char* name = nullptr;
    const std::string* sql = nullptr;
    std::vector<Param> params;
  };

  // Sends every statement at once (libpq pipeline mode) and reads their
  // results after one Sync: one round trip. A statement after a failed one
  // is not run; the error is the first failure's (Aborted if none told).
  absl::StatusOr<std::vector<Result>> RunPipeline(
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
      sent = PQsendQueryPrepared(conn_, st.name,
                                 static_cast<int>(st.params.size()),
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
      if (error.ok() &&
          PQresultStatus(out[i].get()) == PGRES_PIPELINE_ABORTED) {
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

  PGconn* get() const { return conn_; }
  bool bad() const { return PQstatus(conn_) != CONNECTION_OK; }

  // Reconnects a broken connection.
  absl::Status EnsureOk() {
    if (!bad()) return absl::OkStatus();
    PQreset(conn_);
    prepared_.clear();
    return Setup();
  }

  // A simple-protocol command without parameters (BEGIN, DDL...).
  absl::Status Command(const char* sql, absl::string_view what) {
    Result res(PQexec(conn_, sql));
    const ExecStatusType st = PQresultStatus(res.get());
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
      return PgError(conn_, res.get(), what);
    }
    return absl::OkStatus();
  }

  // Runs the statement `sql`, prepared once per connection under `name`.
  // Results come back in binary format (bytea raw, int8 big-endian).
  absl::StatusOr<Result> Run(const char* name, const std::string& sql,
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

 private:
  Conn(std::string uri, Durability durability, absl::Duration idle_txn_timeout,
       std::string session_sql)
      : conn_(ConnectWithDefaults(uri)),
        durability_(durability),
        idle_txn_timeout_(idle_txn_timeout),
        session_sql_(std::move(session_sql)) {}

  // A connect attempt gives up after 5 s and TCP keepalives notice a dead
  // server within ~20 s, unless the URI sets its own values (keywords
  // after the expanded URI would override it, so they come first).
  static PGconn* ConnectWithDefaults(const std::string& uri) {
    const char* keys[] = {
        "connect_timeout",  "keepalives_idle", "keepalives_interval",
        "keepalives_count", "dbname",          nullptr};
    const char* values[] = {"5", "10", "5", "2", uri.c_str(), nullptr};
    return PQconnectdbParams(keys, values, /*expand_dbname=*/1);
  }

  absl::Status Setup() {
    if (PQstatus(conn_) != CONNECTION_OK) {
      // The message names host and port, never the password.
      return PgError(conn_, nullptr, "connect");
    }
    // Server notices ("relation already exists, skipping") go to the debug
    // log instead of libpq's default, stderr.
    PQsetNoticeProcessor(
        conn_,
        [](void*, const char* message) {
          spdlog::debug(
              "postgres: {}",
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
    FORQ_RETURN_IF_ERROR(
        Command("SET enable_seqscan = off", "set enable_seqscan"));
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

  PGconn* const conn_;
  const Durability durability_;
  const absl::Duration idle_txn_timeout_;
  const std::string session_sql_;
  absl::flat_hash_set<std::string> prepared_;
};

}  // namespace postgres_internal

namespace {

using postgres_internal::ArrayParam;
using postgres_internal::Conn;
using postgres_internal::Param;
using postgres_internal::Result;
using store_internal::DecodePageToken;
using store_internal::EffectivePageSize;
using store_internal::EncodePageToken;
using store_internal::ExpiresAtMicros;
using store_internal::FinishedAtMicros;

constexpr size_t kMaxWritesPerGroup = 2048;
// Rows deleted per statement by PurgeExpired: short transactions, and
// autovacuum keeps up between them.
constexpr int kPurgeBatch = 5000;
// Second key of the store's advisory locks ('forq'); the first is a hash
// of database and schema names.
constexpr const char* kLockKey =
    "hashtext(current_database() || '/' || current_schema())";

constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS tasks(
  id TEXT COLLATE "C" PRIMARY KEY NOT NULL,
  queue TEXT COLLATE "C" NOT NULL,
  kind TEXT COLLATE "C" NOT NULL,
  state INTEGER NOT NULL,
  priority INTEGER NOT NULL,
  idempotency_key TEXT COLLATE "C",
  finished_at_us BIGINT,
  expires_at_us BIGINT,
  data BYTEA NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS tasks_by_idempotency_key
  ON tasks(idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_by_expiry
  ON tasks(expires_at_us) WHERE expires_at_us IS NOT NULL;
CREATE TABLE IF NOT EXISTS objects(
  name TEXT COLLATE "C" PRIMARY KEY NOT NULL,
  data BYTEA NOT NULL);
)sql";

// Version 2 (cluster mode): the attempt, its owner and lease, and
// not_before on the database clock live in columns, so claims, heartbeats
// and the reaper are single statements. Single-node forqd keeps attempt
// and not_before current too, so a schema can move to cluster mode.
constexpr const char* kSchemaV2 = R"sql(
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS attempt INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS owner_node TEXT;
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS owner_incarnation BIGINT;
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS lease_until TIMESTAMPTZ;
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS not_before TIMESTAMPTZ;
CREATE INDEX IF NOT EXISTS tasks_claimable
  ON tasks(priority DESC, id) WHERE state = 1;
CREATE INDEX IF NOT EXISTS tasks_by_lease
  ON tasks(lease_until) WHERE state = 2;
CREATE SEQUENCE IF NOT EXISTS forq_incarnation;
CREATE TABLE IF NOT EXISTS nodes(
  node_id TEXT COLLATE "C" PRIMARY KEY NOT NULL,
  incarnation BIGINT NOT NULL,
  started_at TIMESTAMPTZ NOT NULL,
  heartbeat_at TIMESTAMPTZ NOT NULL);
CREATE TABLE IF NOT EXISTS task_events(
  seq BIGSERIAL PRIMARY KEY,
  task_id TEXT COLLATE "C" NOT NULL,
  attempt INTEGER NOT NULL,
  state INTEGER NOT NULL,
  node_id TEXT,
  reason TEXT NOT NULL,
  at TIMESTAMPTZ NOT NULL DEFAULT now());
CREATE INDEX IF NOT EXISTS task_events_by_task ON task_events(task_id, seq);
)sql";

// Version 3: fewer indexes, since each costs b-tree work for every row
// version of every task (three per task in a cluster: insert, claim,
// outcome). Only unfinished tasks are indexed by state (List of QUEUED or
// RUNNING tasks, recovery); nothing by queue or kind (List with those
// filters walks the primary key, as on SQLite); the lease index serves the
// heartbeat too (it holds only RUNNING rows). cancel_requested: a cancel
// of a RUNNING attempt asked through another node, read by the owner's
// heartbeat (a fallback for the notification).
constexpr const char* kSchemaV3 = R"sql(
DROP INDEX IF EXISTS tasks_by_state;
DROP INDEX IF EXISTS tasks_by_queue;
DROP INDEX IF EXISTS tasks_by_kind;
DROP INDEX IF EXISTS tasks_by_owner;
CREATE INDEX IF NOT EXISTS tasks_unfinished ON tasks(state, id)
  WHERE state IN (1, 2);
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS cancel_requested BOOLEAN NOT NULL
  DEFAULT false;
)sql";

// $10 attempt, $11 delay in microseconds from now (NULL: claimable at
// once), so delays are measured on the database clock.
// $12 (cluster mode): the row is inserted as claimed by this node ($13
// node, $14 its incarnation per row, $15 lease in microseconds), RUNNING
// at the next attempt, as kClaim would leave it.
const std::string kInsertBulk =
    "INSERT INTO tasks(id, queue, kind, state, priority, idempotency_key, "
    "finished_at_us, expires_at_us, data, attempt, not_before, owner_node, "
    "owner_incarnation, lease_until) SELECT u.id, u.queue, u.kind, CASE "
    "WHEN u.own THEN 2 ELSE u.state END, u.priority, u.key, u.fin, u.exp, "
    "u.data, u.attempt + CASE WHEN u.own THEN 1 ELSE 0 END, CASE WHEN u.own "
    "THEN NULL ELSE now() + u.delay * interval '1 microsecond' END, CASE "
    "WHEN u.own THEN $13::text END, CASE WHEN u.own THEN u.inc END, "
    "CASE WHEN u.own THEN now() + $15::int8 * interval '1 microsecond' END "
    "FROM unnest($1::text[], $2::text[], $3::text[], $4::int4[], "
    "$5::int4[], $6::text[], $7::int8[], $8::int8[], $9::bytea[], "
    "$10::int4[], $11::int8[], $12::bool[], $14::int8[]) AS u(id, queue, "
    "kind, state, priority, key, fin, exp, data, attempt, delay, own, inc)";
const std::string kInsertKeyed =
    "INSERT INTO tasks(id, queue, kind, state, priority, idempotency_key, "
    "finished_at_us, expires_at_us, data, attempt, not_before) VALUES($1, "
    "$2, $3, $4, $5, $6, $7, $8, $9, $10, now() + $11::int8 * interval '1 "
    "microsecond') ON CONFLICT (idempotency_key) WHERE idempotency_key IS "
    "NOT NULL DO NOTHING";
const std::string kFindByKey =
    "SELECT data FROM tasks WHERE idempotency_key = $1";
// Queue, kind, priority and idempotency key never change after insert. A
// write that is not an owned attempt's clears any lease.
constexpr const char* kUpdateColumns =
    "state = u.state, finished_at_us = u.fin, expires_at_us = u.exp, data = "
    "u.data, attempt = u.attempt, not_before = now() + u.delay * interval "
    "'1 microsecond', cancel_requested = (u.state = 2 AND "
    "t.cancel_requested)";
constexpr const char* kUpdateFrom =
    " FROM unnest($1::text[], $2::int4[], $3::int8[], $4::int8[], "
    "$5::bytea[], $6::int4[], $7::int8[], $8::int4[]) AS u(id, state, fin, "
    "exp, data, attempt, delay, fence) WHERE t.id = u.id";
const std::string kUpdateBulk = absl::StrCat(
    "UPDATE tasks AS t SET ", kUpdateColumns,
    ", owner_node = NULL, owner_incarnation = NULL, lease_until = NULL",
    kUpdateFrom);
// Cluster mode, a write that is no attempt of this node's (Retry of a
// finished task): never over a row some node is running.
const std::string kUpdateUnowned = kUpdateBulk + " AND t.state <> 2";
// Cluster mode: a write of an attempt this node claimed applies only while
// the row still is that attempt, RUNNING, owned by this incarnation ($9).
// A write that keeps it RUNNING keeps the lease. The "+ 0" keeps the
// planner off tasks_by_owner (and the other state = 2 partial indexes):
// driving the join from there scans every attempt the node has claimed
// since the last vacuum for each row written. The join must run from the
// rows given, by primary key.
const std::string kUpdateFenced = absl::StrCat(
    "UPDATE tasks AS t SET ", kUpdateColumns,
    ", owner_node = CASE WHEN u.state = 2 THEN t.owner_node END, "
    "owner_incarnation = CASE WHEN u.state = 2 THEN t.owner_incarnation END, "
    "lease_until = CASE WHEN u.state = 2 THEN t.lease_until END",
    kUpdateFrom,
    " AND t.attempt = u.fence AND t.state + 0 = 2 AND t.owner_incarnation + "
    "0 = $9::int8 RETURNING t.id");
// $1 node, $2 incarnation, $3 lease in microseconds, $4 how many.
const std::string kClaim =
    "UPDATE tasks AS t SET state = 2, attempt = t.attempt + 1, owner_node = "
    "$1, owner_incarnation = $2::int8, lease_until = now() + $3::int8 * "
    "interval '1 microsecond' FROM (SELECT id FROM tasks WHERE state = 1 AND "
    "(not_before IS NULL OR not_before <= now()) ORDER BY priority DESC, id "
    "FOR UPDATE SKIP LOCKED LIMIT $4) AS c WHERE t.id = c.id RETURNING "
    "t.data, t.attempt::text";
// Extends the leases of the node's RUNNING attempts and returns them all.
// Rows another transaction holds are skipped rather than waited for: the
// writer finishing them (its lock held across a group commit) would
// otherwise stall the heartbeat, and updating them in another order than
// the writer deadlocks. The final SELECT reads the statement's snapshot,
// so a row being finished still counts as this node's; a row a reaper is
// taking back is seen as lost by the next heartbeat.
const std::string kHeartbeat =
    "WITH n AS (UPDATE nodes SET heartbeat_at = now() WHERE node_id = $1), "
    "x AS (UPDATE tasks SET lease_until = now() + $3::int8 * interval '1 "
    "microsecond' WHERE id IN (SELECT id FROM tasks WHERE owner_incarnation "
    "= $2::int8 AND state = 2 FOR UPDATE SKIP LOCKED)) SELECT id, "
    "attempt::text, cancel_requested::int::text FROM tasks WHERE "
    "owner_incarnation = $2::int8 AND state = 2";
const std::string kRegister =
    "INSERT INTO nodes(node_id, incarnation, started_at, heartbeat_at) "
    "VALUES($1, nextval('forq_incarnation'), now(), now()) ON CONFLICT "
    "(node_id) DO UPDATE SET incarnation = excluded.incarnation, started_at "
    "= now(), heartbeat_at = now() RETURNING incarnation::text";
const std::string kReapSelect =
    "SELECT id, data, attempt::text, COALESCE(owner_node, '') FROM tasks "
    "WHERE state = 2 AND lease_until < now() ORDER BY lease_until LIMIT 500 "
    "FOR UPDATE SKIP LOCKED";
// One statement for every notification of a transaction.
const std::string kNotify =
    "SELECT pg_notify(c, p) FROM unnest($1::text[], $2::text[]) AS u(c, p)";
// Cancel through a node that does not hold the task (CancelTask).
const std::string kCancelRead =
    "SELECT data, state::text, attempt::text FROM tasks WHERE id = $1 FOR "
    "UPDATE";
const std::string kCancelQueued =
    "WITH u AS (UPDATE tasks SET state = $2, finished_at_us = $3, "
    "expires_at_us = $4, data = $5, not_before = NULL WHERE id = $1) SELECT "
    "pg_notify('forq_done', $1)";
const std::string kCancelRunning =
    "WITH u AS (UPDATE tasks SET data = $2, cancel_requested = true WHERE id "
    "= $1) SELECT pg_notify('forq_cancel', $3)";
const std::string kLostEvents =
    "INSERT INTO task_events(task_id, attempt, state, node_id, reason) "
    "SELECT * FROM unnest($1::text[], $2::int4[], $3::int4[], $4::text[], "
    "$5::text[])";
const std::string kPutObject =
    "INSERT INTO objects(name, data) VALUES($1, $2) ON CONFLICT (name) DO "
    "UPDATE SET data = excluded.data";
const std::string kDeleteObject = "DELETE FROM objects WHERE name = $1";
// Reads return the state and attempt columns beside `data` (TaskFromRow).
const std::string kGet =
    "SELECT data, state::text, attempt::text FROM tasks WHERE id = $1";
const std::string kGetMany =
    "SELECT data, state::text, attempt::text FROM tasks WHERE id = "
    "ANY($1::text[])";
const std::string kUnfinished = absl::StrCat(
    "SELECT data FROM tasks WHERE state IN (", static_cast<int>(v1::QUEUED),
    ", ", static_cast<int>(v1::RUNNING), ") ORDER BY id");
const std::string kObjects = "SELECT name, data FROM objects ORDER BY name";
const std::string kPurge = absl::StrCat(
    "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks WHERE "
    "expires_at_us <= $1 LIMIT ",
    kPurgeBatch, ")");

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

// Retry backoff: base * 2^(attempt-1), capped, +-25% jitter.
absl::Duration LostBackoff(const ClusterOptions& o, int attempt) {
  thread_local absl::BitGen gen;
  double base = absl::ToDoubleSeconds(o.backoff_base) *
                std::pow(2.0, std::max(0, attempt - 1));
  base = std::min(base, absl::ToDoubleSeconds(o.backoff_max));
  return absl::Seconds(base * absl::Uniform(gen, 0.75, 1.25));
}

// Cluster mode: lease/2, so a paused node's open transaction is ended
// (and its row locks released) before its leases expire.
absl::Duration IdleTxnTimeout(const ClusterOptions& cluster) {
  return cluster.enabled ? cluster.lease / 2 : absl::ZeroDuration();
}

std::string DefaultNodeId() {
  char host[256] = {0};
  if (gethostname(host, sizeof(host) - 1) != 0) host[0] = 0;
  return absl::StrCat(host[0] != 0 ? host : "forqd", "-", getpid(), "-",
                      absl::ToUnixSeconds(absl::Now()));
}

absl::StatusOr<int64_t> AffectedRows(const Result& res) {
  int64_t n = 0;
  if (!absl::SimpleAtoi(PQcmdTuples(res.get()), &n)) {
    return absl::InternalError("postgres store: no affected-row count");
  }
  return n;
}

}  // namespace

struct PostgresStore::PendingWrite {
  // kNotify: only notifications (cluster events and watches), sent with
  // the group's others at its commit.
  enum class Type {
    kInsert,
    kUpdate,
    kPutObject,
    kDeleteObject,
    kObjects,
    kNotify
  };
  Type type = Type::kInsert;
  std::vector<v1::Task> tasks;
  std::string name;
  std::string blob;
  std::vector<ObjectWrite> objects;  // kObjects
  // (channel, payload) to notify at commit.
  std::vector<std::pair<std::string, std::string>> notes;
  InsertDone insert_done;
  WriteDone write_done;
  std::vector<bool> superseded;
  std::vector<InsertResult> results;
  // kInsert of InsertOwned: which tasks are inserted as this node's
  // attempts, under which incarnation, and their claims (Owned::claim).
  std::vector<bool> own;
  int64_t own_incarnation = 0;
  std::vector<std::pair<std::string, uint64_t>> own_claims;
  // Cluster mode, filled by Apply: the write queued claimable work; tasks
  // it finished (for NOTIFY); owned attempts it wrote out of RUNNING or
  // that the fence refused.
  bool queued = false;
  std::vector<std::string> finished;
  // With the claim (Owned::claim) the write was fenced by: a give-back
  // writes the attempt before the claimed one, so a new claim of the task
  // can carry the same attempt number as the write it follows.
  std::vector<std::pair<AttemptRef, uint64_t>> released;
  std::vector<std::pair<AttemptRef, uint64_t>> fenced;
  void ClearEffects() {
    queued = false;
    finished.clear();
    released.clear();
    fenced.clear();
  }

  void Finish(absl::Status status) {
    if (type == Type::kInsert) {
      if (status.ok()) {
        insert_done(std::move(results));
      } else {
        insert_done(std::move(status));
      }
      return;
    }
    write_done(std::move(status));
  }
};

bool PostgresStore::IsUri(absl::string_view text) {
  return absl::StartsWith(text, "postgres://") ||
         absl::StartsWith(text, "postgresql://");
}

absl::StatusOr<std::unique_ptr<PostgresStore>> PostgresStore::Open(
    const StoreOptions& options) {
  if (!IsUri(options.postgres_uri)) {
    return absl::InvalidArgumentError(
        "postgres store: want a postgres://user@host:port/db URI");
  }
  FORQ_ASSIGN_OR_RETURN(std::unique_ptr<Conn> writer,
                        Conn::Connect(options.postgres_uri, options.durability,
                                      IdleTxnTimeout(options.cluster)));
  // Schema: created or migrated under a transaction-scoped advisory lock,
  // so nodes starting together do it once.
  {
    FORQ_RETURN_IF_ERROR(writer->Command("BEGIN", "begin migration"));
    absl::Cleanup rollback = [&] {
      (void)writer->Command("ROLLBACK", "rollback migration");
    };
    FORQ_RETURN_IF_ERROR(writer->Command(
        absl::StrCat("SELECT pg_advisory_xact_lock(", kLockKey, ", 2)").c_str(),
        "lock schema"));
    FORQ_RETURN_IF_ERROR(writer->Command(
        "CREATE TABLE IF NOT EXISTS forq_schema_version(version INTEGER NOT "
        "NULL)",
        "create forq_schema_version"));
    FORQ_ASSIGN_OR_RETURN(
        Result res, writer->Run("version",
                                "SELECT COALESCE(max(version), 0)::text FROM "
                                "forq_schema_version",
                                {}, "read schema version"));
    int version = 0;
    // Binary format of a text column is its bytes.
    (void)absl::SimpleAtoi(absl::string_view(PQgetvalue(res.get(), 0, 0),
                                             PQgetlength(res.get(), 0, 0)),
                           &version);
    if (version > kSchemaVersion) {
      return absl::FailedPreconditionError(
          absl::StrCat("postgres store: schema version ", version,
                       " is newer than this forqd supports (", kSchemaVersion,
                       "); upgrade forqd or use another database or schema"));
    }
    if (version < kSchemaVersion) {
      FORQ_RETURN_IF_ERROR(writer->Command(kSchema, "create schema"));
      FORQ_RETURN_IF_ERROR(writer->Command(kSchemaV2, "migrate schema to v2"));
      FORQ_RETURN_IF_ERROR(writer->Command(kSchemaV3, "migrate schema to v3"));
      if (version == 1) {
        // Version 1 kept the attempt only inside `data`: copy it out for
        // the unfinished tasks (finished ones are never claimed again
        // except through Retry, which writes the column).
        FORQ_ASSIGN_OR_RETURN(
            Result rows,
            writer->Run("migrate_read",
                        absl::StrCat("SELECT data FROM tasks WHERE state IN (",
                                     static_cast<int>(v1::QUEUED), ", ",
                                     static_cast<int>(v1::RUNNING), ")"),
                        {}, "read unfinished tasks to migrate"));
        for (int r = 0; r < PQntuples(rows.get()); ++r) {
          FORQ_ASSIGN_OR_RETURN(v1::Task task, ParseTask(rows.get(), r, 0));
          FORQ_RETURN_IF_ERROR(
              writer
                  ->Run("migrate_attempt",
                        "UPDATE tasks SET attempt = $2 WHERE id = $1",
                        {Param::Text(task.id()), Param::Int(task.attempt())},
                        "migrate attempt")
                  .status());
        }
      }
      FORQ_RETURN_IF_ERROR(writer->Command(
          absl::StrCat("DELETE FROM forq_schema_version; INSERT INTO "
                       "forq_schema_version VALUES(",
                       kSchemaVersion, ")")
              .c_str(),
          "write schema version"));
    }
    std::move(rollback).Cancel();
    FORQ_RETURN_IF_ERROR(writer->Command("COMMIT", "commit migration"));
  }
  // One writer per database and schema: a second forqd would load the same
  // unfinished tasks and run them twice. Cluster nodes share the lock (they
  // coordinate through leases); a single-node forqd and a cluster never
  // mix. The lock is the session's, so it goes away with the connection
  // (kill -9 leaves nothing stale).
  FORQ_ASSIGN_OR_RETURN(std::unique_ptr<Conn> lock,
                        Conn::Connect(options.postgres_uri, options.durability,
                                      IdleTxnTimeout(options.cluster)));
  {
    const bool shared = options.cluster.enabled;
    FORQ_ASSIGN_OR_RETURN(
        Result res, lock->Run(shared ? "lock_shared" : "lock",
                              absl::StrCat("SELECT pg_try_advisory_lock",
                                           shared ? "_shared(" : "(", kLockKey,
                                           ", 1)::text"),
                              {}, "take the store lock"));
    if (absl::string_view(PQgetvalue(res.get(), 0, 0)) != "true") {
      return absl::FailedPreconditionError(
          shared ? "postgres store: the database schema is in use by a "
                   "single-node forqd (advisory lock held); cluster nodes "
                   "cannot share it"
                 : "postgres store: the database schema is in use by another "
                   "forqd or store (advisory lock held)");
    }
  }
  auto store = std::unique_ptr<PostgresStore>(
      new PostgresStore(options, std::move(writer), std::move(lock)));
  if (options.cluster.enabled) {
    // The claim reads the head of the partial index tasks_claimable in
    // index order. On a table whose statistics are stale (a new schema,
    // autovacuum not yet run) the planner may instead pick a bitmap scan of
    // every queued row plus a sort: each claim would cost O(queue length).
    // This connection runs only the claim, so the settings are its own.
    // A claim acknowledges nothing, so it commits without waiting for the
    // flush: if the database crashed before its commit record reached the
    // disk, the task is QUEUED again at the attempt before and the node's
    // fenced outcome write is refused (the task runs again, as after any
    // lost attempt). Any later durable commit flushes it anyway (the log
    // is written in order).
    FORQ_ASSIGN_OR_RETURN(
        std::unique_ptr<Conn> claim,
        Conn::Connect(options.postgres_uri, options.durability,
                      IdleTxnTimeout(options.cluster),
                      "SET enable_bitmapscan = off; "
                      "SET synchronous_commit = off"));
    FORQ_ASSIGN_OR_RETURN(
        std::unique_ptr<Conn> upkeep,
        Conn::Connect(options.postgres_uri, options.durability,
                      IdleTxnTimeout(options.cluster)));
    FORQ_RETURN_IF_ERROR(store->Register(*upkeep));
    {
      MutexLock l(&store->claim_mu_);
      store->claim_conn_ = std::move(claim);
    }
    MutexLock l(&store->upkeep_mu_);
    store->upkeep_conn_ = std::move(upkeep);
    spdlog::info("cluster node {} incarnation {} (lease {})", store->node_id_,
                 store->incarnation(),
                 absl::FormatDuration(options.cluster.lease));
  }
  spdlog::info("postgres store {}:{}/{} open (schema v{}, durability {})",
               PQhost(store->writer_->get()), PQport(store->writer_->get()),
               PQdb(store->writer_->get()), kSchemaVersion,
               options.durability == Durability::kNone ? "none" : "sync");
  return store;
}

PostgresStore::PostgresStore(const StoreOptions& options,
                             std::unique_ptr<Conn> writer,
                             std::unique_ptr<Conn> lock)
    : uri_(options.postgres_uri),
      durability_(options.durability),
      pool_size_(static_cast<size_t>(std::max(1, options.pool_size))),
      writer_(std::move(writer)),
      cluster_(options.cluster),
      node_id_(options.cluster.node_id.empty() ? DefaultNodeId()
                                               : options.cluster.node_id) {
  {
    MutexLock l(&owned_mu_);
    last_heartbeat_ = absl::Now();
  }
  MutexLock l(&close_mu_);
  lock_ = std::move(lock);
  writer_thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "forq-store");
    WriterLoop();
  });
  callback_thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "forq-store-cb");
    CallbackLoop();
  });
}

PostgresStore::~PostgresStore() { Close(); }

std::unique_ptr<PostgresStore::PendingWrite> PostgresStore::Enqueue(
    std::unique_ptr<PendingWrite> op) {
  MutexLock lock(&queue_mu_);
  if (closing_) return op;
  const bool was_empty = queue_.empty();
  queue_.push_back(std::move(op));
  if (was_empty) queue_cv_.Signal();
  return nullptr;
}

void PostgresStore::Refuse(std::unique_ptr<PendingWrite> op) {
  if (op != nullptr) {
    op->Finish(absl::UnavailableError("postgres store: closed"));
  }
}

void PostgresStore::WriterLoop() {
  for (;;) {
    std::vector<std::unique_ptr<PendingWrite>> group;
    {
      MutexLock lock(&queue_mu_);
      while (queue_.empty() && !closing_) queue_cv_.Wait(&queue_mu_);
      if (queue_.empty()) return;  // Closing, all written.
      const size_t n = std::min(queue_.size(), kMaxWritesPerGroup);
      group.reserve(n);
      for (size_t i = 0; i < n; ++i) {
        group.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
    }
    CommitGroup(group);
  }
}

void PostgresStore::Deliver(std::vector<Committed> done) {
  if (done.empty()) return;
  MutexLock lock(&done_mu_);
  const bool was_empty = done_.empty();
  for (Committed& c : done) done_.push_back(std::move(c));
  if (was_empty) done_cv_.Signal();
}

void PostgresStore::CallbackLoop() {
  for (;;) {
    std::vector<Committed> batch;
    {
      MutexLock lock(&done_mu_);
      while (done_.empty() && !done_closing_) done_cv_.Wait(&done_mu_);
      if (done_.empty()) return;
      batch.swap(done_);
    }
    for (auto& [op, status] : batch) op->Finish(std::move(status));
  }
}

void PostgresStore::CommitGroup(
    std::vector<std::unique_ptr<PendingWrite>>& group) {
  // Of several updates of one task in a group only the last needs a row.
  absl::flat_hash_map<absl::string_view, std::pair<size_t, size_t>> last;
  for (size_t i = 0; i < group.size(); ++i) {
    PendingWrite& op = *group[i];
    if (op.type != PendingWrite::Type::kUpdate) continue;
    op.superseded.assign(op.tasks.size(), false);
    for (size_t j = 0; j < op.tasks.size(); ++j) {
      auto [it, inserted] = last.try_emplace(op.tasks[j].id(), i, j);
      if (!inserted) {
        group[it->second.first]->superseded[it->second.second] = true;
        it->second = {i, j};
      }
    }
  }
  std::vector<absl::Status> statuses(group.size());
  absl::Status txn_status = writer_->EnsureOk();
  if (txn_status.ok()) {
    txn_status = RunGroup(group, statuses, /*isolated=*/false);
  }
  if (txn_status.code() == absl::StatusCode::kAborted) {
    for (auto& op : group) op->superseded.clear();
    txn_status = RunGroup(group, statuses, /*isolated=*/true);
  }
  std::vector<Committed> done;
  done.reserve(group.size());
  if (!txn_status.ok()) {
    spdlog::error("{} ({} writes failed)", std::string(txn_status.message()),
                  group.size());
    for (auto& op : group) {
      SettleOwnedInserts(*op, /*committed=*/false);
      done.push_back({std::move(op), txn_status});
    }
    Deliver(std::move(done));
    return;
  }
  for (size_t i = 0; i < group.size(); ++i) {
    SettleOwnedInserts(*group[i], statuses[i].ok());
  }
  if (after_commit_hook_) after_commit_hook_();
  if (cluster_.enabled) {
    // Committed: attempts written out of RUNNING (or refused) are no longer
    // this node's. The refusals are reported before any ack, so the
    // scheduler drops those outcomes instead of announcing them.
    std::vector<AttemptRef> fenced;
    {
      MutexLock lock(&owned_mu_);
      for (size_t i = 0; i < group.size(); ++i) {
        if (!statuses[i].ok()) continue;
        // Only the claim the write was fenced by: the task may have been
        // claimed again since the commit (a give-back re-claimed at once).
        for (const auto& [a, claim] : group[i]->released) {
          auto it = owned_.find(a.task_id);
          if (it != owned_.end() && it->second.claim == claim) {
            owned_.erase(it);
          }
        }
        // Refused ones stay fenced: a later write of the same attempt must
        // not pass as a plain write.
        for (const auto& [a, claim] : group[i]->fenced) {
          auto it = owned_.find(a.task_id);
          if (it != owned_.end() && it->second.claim == claim &&
              !it->second.lost) {
            it->second.lost = true;
            it->second.lost_at = absl::Now();
          }
          fenced.push_back(a);
        }
      }
    }
    if (!fenced.empty()) {
      fenced_writes_.fetch_add(static_cast<int64_t>(fenced.size()),
                               std::memory_order_relaxed);
      for (const AttemptRef& a : fenced) {
        spdlog::warn(
            "write of task {} attempt {} refused: the attempt is no longer "
            "this node's",
            a.task_id, a.attempt);
      }
      Callbacks cb = callbacks();
      if (cb.fenced) cb.fenced(fenced);
    }
  }
  for (size_t i = 0; i < group.size(); ++i) {
    PendingWrite& op = *group[i];
    if (op.type == PendingWrite::Type::kInsert && statuses[i].ok()) {
      for (size_t j = 0; j < op.results.size(); ++j) {
        if (!op.results[j].existing) {
          op.results[j].task = std::move(op.tasks[j]);
        }
      }
    }
    done.push_back({std::move(group[i]), std::move(statuses[i])});
  }
  Deliver(std::move(done));
}

// The task statements of a group (or of one call), built before any is
// sent, so they can go to the server in one pipeline.
struct PostgresStore::TaskWrites {
  // A row of the calls: (call, task index).
  using Row = std::pair<PendingWrite*, size_t>;
  struct Batch {
    ArrayParam ids{ArrayParam::Type::kText}, states{ArrayParam::Type::kInt4},
        finished{ArrayParam::Type::kInt8}, expires{ArrayParam::Type::kInt8},
        datas{ArrayParam::Type::kBytea}, attempts{ArrayParam::Type::kInt4},
        delays{ArrayParam::Type::kInt8}, fences{ArrayParam::Type::kInt4};
    std::vector<Row> rows;
    std::vector<Param> Params() {
      return {std::move(ids).Finish(),      std::move(states).Finish(),
              std::move(finished).Finish(), std::move(expires).Finish(),
              std::move(datas).Finish(),    std::move(attempts).Finish(),
              std::move(delays).Finish(),   std::move(fences).Finish()};
    }
  };
  // Inserts without idempotency keys, in one statement.
  int inserts = 0;
  std::vector<Param> insert_params;
  // Updates: plain ones, and fenced ones (attempts this node claimed).
  Batch plain, fenced;
  absl::flat_hash_map<std::string, Owned> fence;
  // RunGroupPipelined: the tasks the group inserts (no idempotency key),
  // and those of them it also updates, with the version to insert instead
  // (one row version rather than two).
  absl::flat_hash_map<absl::string_view, Row> inserted;
  absl::flat_hash_map<absl::string_view, const v1::Task*> coalesced;
};

absl::Status PostgresStore::RunGroup(
    std::vector<std::unique_ptr<PendingWrite>>& group,
    std::vector<absl::Status>& statuses, bool isolated) {
  if (!isolated && Pipelinable(group)) return RunGroupPipelined(group);
  absl::Status txn_status = writer_->Command("BEGIN", "begin transaction");
  if (txn_status.ok() && !isolated) {
    // Every call of the group at once: the task rows of all its inserts in
    // one statement, of all its updates in one (two with fenced attempts),
    // so a group costs a handful of round trips however many calls it
    // holds. If anything fails, the group runs again call by call.
    txn_status = ApplyMerged(group);
  }
  for (size_t i = 0; isolated && txn_status.ok() && i < group.size(); ++i) {
    txn_status = writer_->Command("SAVEPOINT w", "savepoint");
    if (!txn_status.ok()) break;
    group[i]->ClearEffects();
    absl::Status status = Apply(*group[i]);
    if (!status.ok()) group[i]->ClearEffects();
    if (!status.ok() && writer_->bad()) {
      txn_status = status;  // Connection lost: the whole group fails.
      break;
    }
    if (!status.ok()) {
      txn_status = writer_->Command("ROLLBACK TO SAVEPOINT w", "rollback to");
    }
    if (txn_status.ok()) {
      txn_status = writer_->Command("RELEASE SAVEPOINT w", "release");
    }
    statuses[i] = std::move(status);
  }
  if (txn_status.ok()) {
    std::vector<Param> notify = NotifyParams(group, statuses);
    if (!notify.empty()) {
      txn_status = writer_->Run("notify", kNotify, notify, "notify").status();
    }
  }
  if (txn_status.ok()) {
    // With synchronous_commit=on COMMIT returns once the commit record is
    // flushed on the server: the acks that follow are durable.
    txn_status = writer_->Command("COMMIT", "commit");
  } else if (!writer_->bad()) {
    (void)writer_->Command("ROLLBACK", "rollback");
  }
  return txn_status;
}

std::vector<Param> PostgresStore::NotifyParams(
    const std::vector<std::unique_ptr<PendingWrite>>& group,
    const std::vector<absl::Status>& statuses) {
  if (!cluster_.enabled) return {};
  // Delivered to the other nodes' LISTEN connections at commit: claimable
  // work (forq_work), finished tasks for their waiters (forq_done,
  // comma-separated ids, payloads under PostgreSQL's 8000-byte limit),
  // events and watches, all in one statement.
  bool queued = false;
  std::vector<std::string> payloads;
  ArrayParam channels{ArrayParam::Type::kText}, texts{ArrayParam::Type::kText};
  bool any = false;
  for (size_t i = 0; i < group.size(); ++i) {
    if (!statuses[i].ok()) continue;
    queued = queued || group[i]->queued;
    for (const auto& [channel, text] : group[i]->notes) {
      channels.AddText(channel);
      texts.AddText(text);
      any = true;
    }
    for (const std::string& id : group[i]->finished) {
      if (payloads.empty() || payloads.back().size() + id.size() > 7000) {
        payloads.emplace_back();
      } else {
        payloads.back().push_back(',');
      }
      payloads.back().append(id);
    }
  }
  if (queued) {
    channels.AddText("forq_work");
    texts.AddText("");
  }
  for (const std::string& p : payloads) {
    channels.AddText("forq_done");
    texts.AddText(p);
  }
  if (!any && !queued && payloads.empty()) return {};
  return {std::move(channels).Finish(), std::move(texts).Finish()};
}

bool PostgresStore::Pipelinable(
    const std::vector<std::unique_ptr<PendingWrite>>& group) {
  for (const auto& op : group) {
    switch (op->type) {
      case PendingWrite::Type::kInsert:
        for (const v1::Task& t : op->tasks) {
          if (!t.idempotency_key().empty()) return false;
        }
        break;
      case PendingWrite::Type::kUpdate:
      case PendingWrite::Type::kNotify:
        break;
      default:
        return false;  // Manager objects: statement by statement.
    }
  }
  return true;
}

absl::Status PostgresStore::RunGroupPipelined(
    std::vector<std::unique_ptr<PendingWrite>>& group) {
  // Two round trips: BEGIN and the task statements in one pipeline; once
  // their results are checked, the notifications and COMMIT in another.
  // If a statement fails the transaction is rolled back and the group runs
  // again call by call (Aborted), as in ApplyMerged.
  static const std::string kBegin = "BEGIN", kCommit = "COMMIT";
  std::vector<PendingWrite*> inserts, updates;
  for (auto& op : group) {
    op->ClearEffects();
    if (op->type == PendingWrite::Type::kInsert) inserts.push_back(op.get());
    if (op->type == PendingWrite::Type::kUpdate) updates.push_back(op.get());
  }
  TaskWrites w;
  for (PendingWrite* op : inserts) {
    for (size_t i = 0; i < op->tasks.size(); ++i) {
      w.inserted[op->tasks[i].id()] = TaskWrites::Row{op, i};
    }
  }
  // Updates first: those of tasks inserted here become the inserted rows.
  absl::Status status = BuildUpdate(updates, w);
  if (status.ok()) status = BuildInsert(inserts, w);
  if (!status.ok()) return absl::AbortedError(status.message());
  std::vector<Conn::Stmt> stmts;
  stmts.push_back(Conn::Stmt{nullptr, &kBegin, {}});
  if (w.inserts > 0) {
    stmts.push_back(
        Conn::Stmt{"insert_bulk", &kInsertBulk, std::move(w.insert_params)});
  }
  const size_t plain_at = stmts.size();
  if (!w.plain.rows.empty()) {
    stmts.push_back(Conn::Stmt{
        cluster_.enabled ? "update_unowned" : "update_bulk",
        cluster_.enabled ? &kUpdateUnowned : &kUpdateBulk, w.plain.Params()});
  }
  const size_t fenced_at = stmts.size();
  if (!w.fenced.rows.empty()) {
    stmts.push_back(
        Conn::Stmt{"update_fenced", &kUpdateFenced, FencedParams(w)});
  }
  absl::StatusOr<std::vector<Result>> res =
      writer_->RunPipeline(stmts, "write tasks");
  status = res.status();
  if (status.ok() && !w.plain.rows.empty()) {
    status = FinishPlainUpdate(w, (*res)[plain_at]);
  }
  if (status.ok() && !w.fenced.rows.empty()) {
    FinishFencedUpdate(w, (*res)[fenced_at]);
  }
  if (!status.ok()) {
    for (auto& op : group) op->ClearEffects();
    if (writer_->bad()) return status;  // Connection lost: the group fails.
    (void)writer_->Command("ROLLBACK", "rollback");
    return absl::AbortedError("a call of the group failed");
  }
  std::vector<Conn::Stmt> end;
  std::vector<absl::Status> ok(group.size());
  std::vector<Param> notify = NotifyParams(group, ok);
  if (!notify.empty()) {
    end.push_back(Conn::Stmt{"notify", &kNotify, std::move(notify)});
  }
  // With synchronous_commit=on COMMIT returns once the commit record is
  // flushed on the server: the acks that follow are durable.
  end.push_back(Conn::Stmt{nullptr, &kCommit, {}});
  status = writer_->RunPipeline(end, "commit").status();
  if (!status.ok() && !writer_->bad()) {
    (void)writer_->Command("ROLLBACK", "rollback");
  }
  return status;
}

absl::Status PostgresStore::ApplyMerged(
    std::vector<std::unique_ptr<PendingWrite>>& group) {
  std::vector<PendingWrite*> inserts, updates;
  absl::Status status;
  for (auto& op : group) {
    op->ClearEffects();
    if (op->type == PendingWrite::Type::kInsert) {
      inserts.push_back(op.get());
    } else if (op->type == PendingWrite::Type::kUpdate) {
      updates.push_back(op.get());
    } else if (status.ok()) {
      status = Apply(*op);  // Manager objects, in queue order.
    }
  }
  // Inserts before updates: a task inserted and updated in one group
  // (single-node forqd) is written in that order.
  if (status.ok()) status = ApplyInsert(inserts);
  if (status.ok()) status = ApplyUpdate(updates);
  if (status.ok()) return status;
  for (auto& op : group) op->ClearEffects();
  if (writer_->bad()) return status;  // Connection lost: the group fails.
  return absl::AbortedError("a call of the group failed");
}

absl::Status PostgresStore::Apply(PendingWrite& op) {
  switch (op.type) {
    case PendingWrite::Type::kInsert:
      return ApplyInsert({&op});
    case PendingWrite::Type::kUpdate:
      return ApplyUpdate({&op});
    case PendingWrite::Type::kPutObject:
      return writer_
          ->Run("put_object", kPutObject,
                {Param::Text(op.name), Param::Bytes(op.blob)},
                absl::StrCat("put object ", op.name))
          .status();
    case PendingWrite::Type::kDeleteObject:
      return writer_
          ->Run("delete_object", kDeleteObject, {Param::Text(op.name)},
                absl::StrCat("delete object ", op.name))
          .status();
    case PendingWrite::Type::kNotify:
      return absl::OkStatus();  // RunGroup sends the notes.
    case PendingWrite::Type::kObjects:
      // One call: inside the group's transaction (and its own savepoint
      // when the group is re-run), so all of them or none.
      for (const ObjectWrite& w : op.objects) {
        absl::Status status =
            w.blob.has_value()
                ? writer_
                      ->Run("put_object", kPutObject,
                            {Param::Text(w.name), Param::Bytes(*w.blob)},
                            absl::StrCat("put object ", w.name))
                      .status()
                : writer_
                      ->Run("delete_object", kDeleteObject,
                            {Param::Text(w.name)},
                            absl::StrCat("delete object ", w.name))
                      .status();
        FORQ_RETURN_IF_ERROR(status);
      }
      return absl::OkStatus();
  }
  return absl::InternalError("postgres store: unknown write type");
}

absl::Status PostgresStore::BuildInsert(const std::vector<PendingWrite*>& ops,
                                        TaskWrites& w) {
  ArrayParam ids{ArrayParam::Type::kText}, queues{ArrayParam::Type::kText},
      kinds{ArrayParam::Type::kText}, states{ArrayParam::Type::kInt4},
      priorities{ArrayParam::Type::kInt4}, keys{ArrayParam::Type::kText},
      finished{ArrayParam::Type::kInt8}, expires{ArrayParam::Type::kInt8},
      datas{ArrayParam::Type::kBytea}, attempts{ArrayParam::Type::kInt4},
      delays{ArrayParam::Type::kInt8}, owns{ArrayParam::Type::kBool},
      incs{ArrayParam::Type::kInt8};
  std::string scratch;
  for (PendingWrite* op : ops) {
    op->results.assign(op->tasks.size(), InsertResult());
    for (size_t i = 0; i < op->tasks.size(); ++i) {
      const v1::Task& task = op->tasks[i];
      if (task.id().empty()) {
        return absl::InvalidArgumentError("postgres store: task without id");
      }
      bool own = i < op->own.size() && op->own[i];
      if (task.state() == v1::QUEUED && !own) op->queued = true;
      if (!task.idempotency_key().empty()) continue;
      auto c = w.coalesced.find(task.id());
      // Inserted as its later version (BuildUpdate noted its effects).
      const v1::Task& row = c != w.coalesced.end() ? *c->second : task;
      if (c != w.coalesced.end()) own = false;
      if (!row.SerializeToString(&scratch)) {
        return absl::InternalError(
            absl::StrCat("postgres store: cannot serialise task ", task.id()));
      }
      ids.AddText(row.id());
      queues.AddText(row.queue());
      kinds.AddText(row.kind());
      states.AddInt(static_cast<int>(row.state()));
      priorities.AddInt(row.priority());
      keys.AddNullableText("");
      finished.AddInt(FinishedAtMicros(row));
      expires.AddInt(ExpiresAtMicros(row));
      datas.AddBytes(scratch);
      attempts.AddInt(row.attempt());
      delays.AddInt(DelayMicros(row));
      owns.AddBool(own);
      incs.AddInt(op->own_incarnation);
      ++w.inserts;
    }
  }
  if (w.inserts > 0) {
    w.insert_params = {std::move(ids).Finish(),
                       std::move(queues).Finish(),
                       std::move(kinds).Finish(),
                       std::move(states).Finish(),
                       std::move(priorities).Finish(),
                       std::move(keys).Finish(),
                       std::move(finished).Finish(),
                       std::move(expires).Finish(),
                       std::move(datas).Finish(),
                       std::move(attempts).Finish(),
                       std::move(delays).Finish(),
                       std::move(owns).Finish(),
                       Param::Text(node_id_),
                       std::move(incs).Finish(),
                       Param::Int(absl::ToInt64Microseconds(cluster_.lease))};
  }
  return absl::OkStatus();
}

absl::Status PostgresStore::ApplyInsert(const std::vector<PendingWrite*>& ops) {
  // Tasks without an idempotency key go in one multi-row statement; keyed
  // ones one by one, in order, each seeing the rows before it.
  TaskWrites w;
  FORQ_RETURN_IF_ERROR(BuildInsert(ops, w));
  auto duplicate_id = [](absl::Status status) {
    if (status.code() == absl::StatusCode::kAlreadyExists) {
      return absl::AlreadyExistsError(absl::StrCat(
          "postgres store: task id already stored (", status.message(), ")"));
    }
    return status;
  };
  if (w.inserts > 0) {
    absl::StatusOr<Result> res = writer_->Run("insert_bulk", kInsertBulk,
                                              w.insert_params, "insert tasks");
    if (!res.ok()) return duplicate_id(res.status());
  }
  std::string scratch;
  for (PendingWrite* op : ops) {
    for (size_t i = 0; i < op->tasks.size(); ++i) {
      const v1::Task& task = op->tasks[i];
      if (task.idempotency_key().empty()) continue;
      if (!task.SerializeToString(&scratch)) {
        return absl::InternalError(
            absl::StrCat("postgres store: cannot serialise task ", task.id()));
      }
      absl::StatusOr<Result> res = writer_->Run(
          "insert_keyed", kInsertKeyed,
          {Param::Text(task.id()), Param::Text(task.queue()),
           Param::Text(task.kind()), Param::Int(static_cast<int>(task.state())),
           Param::Int(task.priority()), Param::Text(task.idempotency_key()),
           OptionalInt(FinishedAtMicros(task)),
           OptionalInt(ExpiresAtMicros(task)), Param::Bytes(scratch),
           Param::Int(task.attempt()), OptionalInt(DelayMicros(task))},
          absl::StrCat("insert ", task.id()));
      if (!res.ok()) return duplicate_id(res.status());
      FORQ_ASSIGN_OR_RETURN(int64_t inserted, AffectedRows(*res));
      if (inserted == 1) continue;
      // The key is taken: by an earlier call, an earlier task of this call,
      // or a concurrent writer whose commit the insert waited for.
      FORQ_ASSIGN_OR_RETURN(Result found,
                            writer_->Run("find_by_key", kFindByKey,
                                         {Param::Text(task.idempotency_key())},
                                         "look up idempotency key"));
      if (PQntuples(found.get()) != 1) {
        return absl::UnavailableError(
            "postgres store: idempotency key conflict with a row that is "
            "gone; retry");
      }
      FORQ_ASSIGN_OR_RETURN(op->results[i].task, ParseTask(found.get(), 0, 0));
      op->results[i].existing = true;
    }
  }
  return absl::OkStatus();
}

absl::Status PostgresStore::BuildUpdate(const std::vector<PendingWrite*>& ops,
                                        TaskWrites& w) {
  using Row = TaskWrites::Row;
  // A later version of a task wins, as in order (CommitGroup marked the
  // earlier ones of other calls superseded).
  absl::flat_hash_map<absl::string_view, Row> last;
  for (PendingWrite* op : ops) {
    for (size_t i = 0; i < op->tasks.size(); ++i) {
      if (i < op->superseded.size() && op->superseded[i]) continue;
      last[op->tasks[i].id()] = Row{op, i};
    }
  }
  if (last.empty()) return absl::OkStatus();
  // In cluster mode the writes of attempts this node claimed are fenced;
  // other writes (Retry of a finished task, say) are plain.
  if (cluster_.enabled) {
    MutexLock lock(&owned_mu_);
    for (const auto& [id, row] : last) {
      auto it = owned_.find(id);
      if (it != owned_.end()) w.fence.emplace(it->first, it->second);
    }
  }
  std::string scratch;
  for (PendingWrite* op : ops) {
    for (size_t i = 0; i < op->tasks.size(); ++i) {
      const v1::Task& task = op->tasks[i];
      auto it = last.find(task.id());
      if (it == last.end() || it->second != Row{op, i}) continue;
      auto f = w.fence.find(task.id());
      if (Coalesce(w, Row{op, i}, f != w.fence.end() ? &f->second : nullptr)) {
        continue;
      }
      if (!task.SerializeToString(&scratch)) {
        return absl::InternalError(
            absl::StrCat("postgres store: cannot serialise task ", task.id()));
      }
      TaskWrites::Batch& b = f != w.fence.end() ? w.fenced : w.plain;
      b.ids.AddText(task.id());
      b.states.AddInt(static_cast<int>(task.state()));
      b.finished.AddInt(FinishedAtMicros(task));
      b.expires.AddInt(ExpiresAtMicros(task));
      b.datas.AddBytes(scratch);
      b.attempts.AddInt(task.attempt());
      b.delays.AddInt(DelayMicros(task));
      b.fences.AddInt(f != w.fence.end() ? f->second.attempt : 0);
      b.rows.push_back(Row{op, i});
    }
  }
  return absl::OkStatus();
}

bool PostgresStore::Coalesce(TaskWrites& w, const TaskWrites::Row& row,
                             const Owned* owned) {
  const v1::Task& task = row.first->tasks[row.second];
  auto ins = w.inserted.find(task.id());
  // A write that keeps the attempt RUNNING keeps its lease columns: it
  // goes as an update.
  if (ins == w.inserted.end() || task.state() == v1::RUNNING) return false;
  if (owned != nullptr) {
    // The fence: the attempt this group's insert made this node's, not
    // lost since (then the insert and the update go as they are, and the
    // update is refused).
    const PendingWrite& insert = *ins->second.first;
    bool mine = false;
    for (const auto& [id, claim] : insert.own_claims) {
      mine = mine || (id == task.id() && claim == owned->claim);
    }
    if (!mine || owned->lost) return false;
    row.first->released.emplace_back(AttemptRef{task.id(), owned->attempt},
                                     owned->claim);
  }
  w.coalesced[task.id()] = &task;
  NoteWritten(row);
  return true;
}

absl::Status PostgresStore::FinishPlainUpdate(TaskWrites& w,
                                              const Result& res) {
  FORQ_ASSIGN_OR_RETURN(int64_t updated, AffectedRows(res));
  const size_t rows = w.plain.rows.size();
  if (cluster_.enabled && updated != static_cast<int64_t>(rows)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "postgres store: ", rows - updated, " of ", rows,
        " tasks not written: unknown, or running on a cluster node"));
  }
  if (updated != static_cast<int64_t>(rows)) {
    return absl::NotFoundError(absl::StrCat(
        "postgres store: update of unknown task(s): ", rows - updated, " of ",
        rows, " ids not stored"));
  }
  for (const TaskWrites::Row& row : w.plain.rows) NoteWritten(row);
  return absl::OkStatus();
}

void PostgresStore::FinishFencedUpdate(TaskWrites& w, const Result& res) {
  absl::flat_hash_set<std::string> applied;
  for (int r = 0; r < PQntuples(res.get()); ++r) {
    applied.insert(TextValue(res.get(), r, 0));
  }
  for (const TaskWrites::Row& row : w.fenced.rows) {
    const v1::Task& task = row.first->tasks[row.second];
    const Owned& owned = w.fence[task.id()];
    if (!applied.contains(task.id())) {
      row.first->fenced.emplace_back(AttemptRef{task.id(), owned.attempt},
                                     owned.claim);
      continue;
    }
    NoteWritten(row);
    if (task.state() != v1::RUNNING) {
      row.first->released.emplace_back(AttemptRef{task.id(), owned.attempt},
                                       owned.claim);
    }
  }
}

std::vector<Param> PostgresStore::FencedParams(TaskWrites& w) {
  std::vector<Param> p = w.fenced.Params();
  p.push_back(Param::Int(incarnation()));
  return p;
}

absl::Status PostgresStore::ApplyUpdate(const std::vector<PendingWrite*>& ops) {
  TaskWrites w;
  FORQ_RETURN_IF_ERROR(BuildUpdate(ops, w));
  if (!w.plain.rows.empty()) {
    FORQ_ASSIGN_OR_RETURN(
        Result res,
        writer_->Run(cluster_.enabled ? "update_unowned" : "update_bulk",
                     cluster_.enabled ? kUpdateUnowned : kUpdateBulk,
                     w.plain.Params(), "update tasks"));
    FORQ_RETURN_IF_ERROR(FinishPlainUpdate(w, res));
  }
  if (!w.fenced.rows.empty()) {
    FORQ_ASSIGN_OR_RETURN(Result res,
                          writer_->Run("update_fenced", kUpdateFenced,
                                       FencedParams(w), "update attempts"));
    FinishFencedUpdate(w, res);
  }
  return absl::OkStatus();
}

void PostgresStore::NoteWritten(const std::pair<PendingWrite*, size_t>& row) {
  const v1::Task& task = row.first->tasks[row.second];
  if (task.state() == v1::QUEUED) row.first->queued = true;
  if (store_internal::IsTerminal(task.state())) {
    row.first->finished.push_back(task.id());
  }
}

void PostgresStore::Insert(std::vector<v1::Task> tasks, InsertDone done) {
  auto op = std::make_unique<PendingWrite>();
  op->type = PendingWrite::Type::kInsert;
  op->tasks = std::move(tasks);
  op->insert_done = std::move(done);
  Refuse(Enqueue(std::move(op)));
}

std::vector<bool> PostgresStore::InsertOwned(
    std::vector<v1::Task> tasks, std::vector<bool> own,
    std::function<void(absl::StatusOr<std::vector<v1::Task>>)> done) {
  own.resize(tasks.size(), false);
  auto op = std::make_unique<PendingWrite>();
  op->type = PendingWrite::Type::kInsert;
  {
    // Registered before the insert is queued, so every later write of
    // these attempts is fenced like a claimed attempt's.
    MutexLock lock(&owned_mu_);
    const bool can = cluster_.enabled && !self_fenced_;
    op->own_incarnation = incarnation();
    for (size_t i = 0; i < tasks.size(); ++i) {
      const v1::Task& t = tasks[i];
      if (!own[i]) continue;
      if (!can || !t.idempotency_key().empty() || t.state() != v1::QUEUED) {
        own[i] = false;
        continue;
      }
      Owned o;
      o.attempt = t.attempt() + 1;
      o.claim = ++last_claim_;
      o.inserting = true;
      owned_[t.id()] = o;
      op->own_claims.emplace_back(t.id(), o.claim);
    }
  }
  op->own = own;
  op->tasks = std::move(tasks);
  op->insert_done =
      [done = std::move(done)](absl::StatusOr<std::vector<InsertResult>> r) {
        if (!r.ok()) {
          done(r.status());
          return;
        }
        std::vector<v1::Task> tasks;
        tasks.reserve(r->size());
        for (InsertResult& one : *r) tasks.push_back(std::move(one.task));
        done(std::move(tasks));
      };
  std::unique_ptr<PendingWrite> refused = Enqueue(std::move(op));
  if (refused != nullptr) {
    SettleOwnedInserts(*refused, /*committed=*/false);
    Refuse(std::move(refused));
  }
  return own;
}

void PostgresStore::SettleOwnedInserts(const PendingWrite& op, bool committed) {
  if (op.own_claims.empty()) return;
  MutexLock lock(&owned_mu_);
  const absl::Time now = absl::Now();
  for (const auto& [id, claim] : op.own_claims) {
    auto it = owned_.find(id);
    if (it == owned_.end() || it->second.claim != claim) continue;
    it->second.inserting = false;
    if (!committed && !it->second.lost) {
      // No row: a later write of the attempt is refused as fenced.
      it->second.lost = true;
      it->second.lost_at = now;
    }
  }
}

void PostgresStore::Update(std::vector<v1::Task> tasks, WriteDone done) {
  auto op = std::make_unique<PendingWrite>();
  op->type = PendingWrite::Type::kUpdate;
  op->tasks = std::move(tasks);
  op->write_done = std::move(done);
  Refuse(Enqueue(std::move(op)));
}

void PostgresStore::PutObject(std::string name, std::string blob,
                              WriteDone done) {
  auto op = std::make_unique<PendingWrite>();
  op->type = PendingWrite::Type::kPutObject;
  op->name = std::move(name);
  op->blob = std::move(blob);
  op->write_done = std::move(done);
  Refuse(Enqueue(std::move(op)));
}

void PostgresStore::DeleteObject(std::string name, WriteDone done) {
  auto op = std::make_unique<PendingWrite>();
  op->type = PendingWrite::Type::kDeleteObject;
  op->name = std::move(name);
  op->write_done = std::move(done);
  Refuse(Enqueue(std::move(op)));
}

void PostgresStore::WriteObjects(std::vector<ObjectWrite> writes,
                                 WriteDone done) {
  auto op = std::make_unique<PendingWrite>();
  op->type = PendingWrite::Type::kObjects;
  op->objects = std::move(writes);
  op->write_done = std::move(done);
  Refuse(Enqueue(std::move(op)));
}

absl::StatusOr<std::unique_ptr<Conn>> PostgresStore::AcquireReader() {
  {
    MutexLock lock(&pool_mu_);
    while (!idle_readers_.empty()) {
      std::unique_ptr<Conn> conn = std::move(idle_readers_.back());
      idle_readers_.pop_back();
      if (conn->EnsureOk().ok()) return conn;
    }
  }
  return Conn::Connect(uri_, durability_, IdleTxnTimeout(cluster_));
}

void PostgresStore::ReleaseReader(std::unique_ptr<Conn> conn) {
  if (conn == nullptr || conn->bad()) return;
  MutexLock lock(&pool_mu_);
  if (idle_readers_.size() < pool_size_) {
    idle_readers_.push_back(std::move(conn));
  }
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

template <typename Fn>
auto PostgresStore::WithReader(Fn fn) -> decltype(fn(std::declval<Conn&>())) {
  for (int attempt = 0;; ++attempt) {
    absl::StatusOr<std::unique_ptr<Conn>> conn = AcquireReader();
    if (!conn.ok()) return conn.status();
    auto out = fn(**conn);
    const bool lost = !out.ok() && (*conn)->bad();
    ReleaseReader(std::move(*conn));
    if (!lost || attempt == 1) return out;
    MutexLock lock(&pool_mu_);
    idle_readers_.clear();
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

absl::StatusOr<std::vector<v1::Task>> PostgresStore::ReadTasks(
    const std::vector<std::string>& ids) {
  std::vector<v1::Task> out;
  if (ids.empty()) return out;
  ArrayParam array(ArrayParam::Type::kText);
  for (const std::string& id : ids) array.AddText(id);
  const Param ids_param = std::move(array).Finish();
  FORQ_ASSIGN_OR_RETURN(Result res, WithReader([&](Conn& conn) {
                          return conn.Run("get_many", kGetMany, {ids_param},
                                          "get tasks");
                        }));
  const int rows = PQntuples(res.get());
  out.reserve(rows);
  for (int r = 0; r < rows; ++r) {
    FORQ_ASSIGN_OR_RETURN(v1::Task task, TaskFromRow(res.get(), r));
    out.push_back(std::move(task));
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
  for (int r = 0; r < rows; ++r) {
    out.emplace_back(
        std::string(PQgetvalue(res.get(), r, 0), PQgetlength(res.get(), r, 0)),
        std::string(PQgetvalue(res.get(), r, 1), PQgetlength(res.get(), r, 1)));
  }
  return out;
}

absl::Status PostgresStore::Register(Conn& conn) {
  FORQ_RETURN_IF_ERROR(conn.EnsureOk());
  FORQ_ASSIGN_OR_RETURN(Result res,
                        conn.Run("register", kRegister, {Param::Text(node_id_)},
                                 "register node"));
  int64_t inc = 0;
  if (PQntuples(res.get()) != 1 ||
      !absl::SimpleAtoi(TextValue(res.get(), 0, 0), &inc)) {
    return absl::InternalError("postgres store: no incarnation returned");
  }
  incarnation_.store(inc, std::memory_order_release);
  return absl::OkStatus();
}

PostgresStore::Callbacks PostgresStore::callbacks() {
  MutexLock lock(&callbacks_mu_);
  return callbacks_;
}

absl::StatusOr<std::vector<v1::Task>> PostgresStore::Claim(int n) {
  if (!cluster_.enabled) {
    return absl::FailedPreconditionError("postgres store: not in cluster mode");
  }
  std::vector<v1::Task> out;
  if (n <= 0) return out;
  {
    MutexLock lock(&owned_mu_);
    if (self_fenced_) return out;
  }
  MutexLock lock(&claim_mu_);
  FORQ_RETURN_IF_ERROR(claim_conn_->EnsureOk());
  const int64_t inc = incarnation();
  FORQ_ASSIGN_OR_RETURN(
      Result res,
      claim_conn_->Run("claim", kClaim,
                       {Param::Text(node_id_), Param::Int(inc),
                        Param::Int(absl::ToInt64Microseconds(cluster_.lease)),
                        Param::Int(n)},
                       "claim tasks"));
  const int rows = PQntuples(res.get());
  out.reserve(rows);
  for (int r = 0; r < rows; ++r) {
    FORQ_ASSIGN_OR_RETURN(v1::Task task, ParseTask(res.get(), r, 0));
    task.set_attempt(IntValue(res.get(), r, 1));
    out.push_back(std::move(task));
  }
  // RETURNING keeps no order: priority, then FIFO, as claimed.
  std::sort(out.begin(), out.end(), [](const v1::Task& a, const v1::Task& b) {
    if (a.priority() != b.priority()) return a.priority() > b.priority();
    return a.id() < b.id();
  });
  {
    MutexLock owned(&owned_mu_);
    if (incarnation() != inc || self_fenced_) {
      // Fenced while claiming: these leases expire unrenewed and the
      // reaper gives the tasks back.
      out.clear();
    } else {
      for (const v1::Task& t : out) {
        owned_[t.id()] = Owned{t.attempt(), ++last_claim_};
      }
    }
  }
  return out;
}

absl::Status PostgresStore::Heartbeat() {
  std::vector<AttemptRef> before;
  bool fenced = false;
  {
    MutexLock lock(&owned_mu_);
    for (const auto& [id, o] : owned_) {
      if (!o.lost && !o.inserting) before.push_back(AttemptRef{id, o.attempt});
    }
    fenced = self_fenced_;
  }
  const absl::Time sent = absl::Now();
  MutexLock lock(&upkeep_mu_);
  if (fenced) {
    // Back after a self-fence: a new incarnation, so nothing written under
    // the old one can pass the fence; its leases expire and are reaped.
    FORQ_RETURN_IF_ERROR(Register(*upkeep_conn_));
    MutexLock owned(&owned_mu_);
    self_fenced_ = false;
    last_heartbeat_ = sent;
    spdlog::warn("cluster node {} reconnected as incarnation {}", node_id_,
                 incarnation());
    return absl::OkStatus();
  }
  FORQ_RETURN_IF_ERROR(upkeep_conn_->EnsureOk());
  const int64_t inc = incarnation();
  FORQ_ASSIGN_OR_RETURN(
      Result res,
      upkeep_conn_->Run("heartbeat", kHeartbeat,
                        {Param::Text(node_id_), Param::Int(inc),
                         Param::Int(absl::ToInt64Microseconds(cluster_.lease))},
                        "heartbeat"));
  // The attempts the database holds as this node's: number, cancel asked.
  absl::flat_hash_map<std::string, std::pair<int, bool>> extended;
  for (int r = 0; r < PQntuples(res.get()); ++r) {
    extended[TextValue(res.get(), r, 0)] = {IntValue(res.get(), r, 1),
                                            IntValue(res.get(), r, 2) == 1};
  }
  std::vector<AttemptRef> lost, cancel;
  {
    MutexLock owned(&owned_mu_);
    if (incarnation() != inc || self_fenced_) return absl::OkStatus();
    last_heartbeat_ = sent;
    for (const AttemptRef& a : before) {
      auto e = extended.find(a.task_id);
      if (e != extended.end() && e->second.first == a.attempt) {
        // A cancel asked through another node whose notification this
        // node may have missed: told once per attempt.
        auto it = owned_.find(a.task_id);
        if (e->second.second && it != owned_.end() &&
            it->second.attempt == a.attempt && !it->second.cancel_told) {
          it->second.cancel_told = true;
          cancel.push_back(a);
        }
        continue;
      }
      // Still ours locally (no write took it out of RUNNING meanwhile) but
      // not in the database any more: reclaimed by the reaper.
      auto it = owned_.find(a.task_id);
      if (it == owned_.end() || it->second.attempt != a.attempt ||
          it->second.lost) {
        continue;
      }
      it->second.lost = true;
      it->second.lost_at = sent;
      lost.push_back(a);
    }
    // Lost attempts whose outcome never came are forgotten after a while.
    absl::erase_if(owned_, [&](const auto& entry) {
      return entry.second.lost &&
             entry.second.lost_at + 10 * cluster_.lease < sent;
    });
  }
  Callbacks cb = callbacks();
  if (!lost.empty()) {
    spdlog::warn("{} attempts lost their lease; stopping them", lost.size());
    if (cb.lost) cb.lost(lost);
  }
  if (!cancel.empty() && cb.cancel) cb.cancel(cancel);
  return absl::OkStatus();
}

bool PostgresStore::CheckSelfFence() {
  std::vector<AttemptRef> lost;
  {
    MutexLock lock(&owned_mu_);
    if (self_fenced_) return true;
    if (absl::Now() - last_heartbeat_ <= cluster_.lease / 2) return false;
    self_fenced_ = true;
    for (auto& [id, o] : owned_) {
      if (o.lost) continue;
      lost.push_back(AttemptRef{id, o.attempt});
      o.lost = true;
      o.lost_at = absl::Now();
    }
  }
  spdlog::error(
      "cluster node {}: no heartbeat for {}; fencing itself: {} attempts "
      "stopped, no claims until the database answers",
      node_id_, absl::FormatDuration(cluster_.lease / 2), lost.size());
  Callbacks cb = callbacks();
  if (cb.lost && !lost.empty()) cb.lost(lost);
  return true;
}

absl::StatusOr<int> PostgresStore::ReapExpired() {
  MutexLock lock(&upkeep_mu_);
  Conn& conn = *upkeep_conn_;
  FORQ_RETURN_IF_ERROR(conn.EnsureOk());
  FORQ_RETURN_IF_ERROR(conn.Command("BEGIN", "begin reap"));
  absl::Cleanup rollback = [&] {
    if (!conn.bad()) (void)conn.Command("ROLLBACK", "rollback reap");
  };
  FORQ_ASSIGN_OR_RETURN(
      Result res, conn.Run("reap_select", kReapSelect, {}, "find lost leases"));
  const int rows = PQntuples(res.get());
  if (rows == 0) return 0;
  const absl::Time now = absl::Now();
  ArrayParam ids{ArrayParam::Type::kText}, states{ArrayParam::Type::kInt4},
      finished{ArrayParam::Type::kInt8}, expires{ArrayParam::Type::kInt8},
      datas{ArrayParam::Type::kBytea}, attempts{ArrayParam::Type::kInt4},
      delays{ArrayParam::Type::kInt8}, fences{ArrayParam::Type::kInt4};
  ArrayParam ev_ids{ArrayParam::Type::kText},
      ev_attempts{ArrayParam::Type::kInt4}, ev_states{ArrayParam::Type::kInt4},
      ev_nodes{ArrayParam::Type::kText}, ev_reasons{ArrayParam::Type::kText};
  bool queued = false;
  std::vector<std::string> done;
  std::string scratch;
  for (int r = 0; r < rows; ++r) {
    FORQ_ASSIGN_OR_RETURN(v1::Task t, ParseTask(res.get(), r, 1));
    const int attempt = IntValue(res.get(), r, 2);
    const std::string owner = TextValue(res.get(), r, 3);
    t.set_attempt(attempt);
    v1::TaskError* e = t.mutable_error();
    e->set_code(static_cast<int>(absl::StatusCode::kUnavailable));
    e->set_message(absl::StrCat("lease expired (LOST): node ", owner,
                                " stopped renewing attempt ", attempt));
    e->set_reason(v1::WORKER_LOST);
    e->set_signal(0);
    if (t.cancel_requested()) {
      t.set_state(v1::CANCELLED);
    } else if (attempt - t.attempt_base() >= t.max_attempts()) {
      t.set_state(v1::DEAD);
    } else {
      t.set_state(v1::QUEUED);
      const absl::Time at = now + LostBackoff(cluster_, attempt);
      t.mutable_not_before()->set_seconds(absl::ToUnixSeconds(at));
      t.mutable_not_before()->set_nanos(
          static_cast<int32_t>(absl::ToUnixNanos(at) % 1'000'000'000));
      queued = true;
    }
    if (t.state() != v1::QUEUED) {
      t.mutable_finished_at()->set_seconds(absl::ToUnixSeconds(now));
      t.mutable_finished_at()->set_nanos(
          static_cast<int32_t>(absl::ToUnixNanos(now) % 1'000'000'000));
      done.push_back(t.id());
    }
    if (!t.SerializeToString(&scratch)) {
      return absl::InternalError("postgres store: cannot serialise task");
    }
    ids.AddText(t.id());
    states.AddInt(static_cast<int>(t.state()));
    finished.AddInt(FinishedAtMicros(t));
    expires.AddInt(ExpiresAtMicros(t));
    datas.AddBytes(scratch);
    attempts.AddInt(attempt);
    delays.AddInt(DelayMicros(t));
    fences.AddInt(0);
    ev_ids.AddText(t.id());
    ev_attempts.AddInt(attempt);
    ev_states.AddInt(static_cast<int>(t.state()));
    ev_nodes.AddNullableText(owner);
    ev_reasons.AddText("LOST");
  }
  FORQ_RETURN_IF_ERROR(
      conn.Run("update_bulk", kUpdateBulk,
               {std::move(ids).Finish(), std::move(states).Finish(),
                std::move(finished).Finish(), std::move(expires).Finish(),
                std::move(datas).Finish(), std::move(attempts).Finish(),
                std::move(delays).Finish(), std::move(fences).Finish()},
               "requeue lost attempts")
          .status());
  FORQ_RETURN_IF_ERROR(
      conn.Run("lost_events", kLostEvents,
               {std::move(ev_ids).Finish(), std::move(ev_attempts).Finish(),
                std::move(ev_states).Finish(), std::move(ev_nodes).Finish(),
                std::move(ev_reasons).Finish()},
               "record lost attempts")
          .status());
  if (queued) FORQ_RETURN_IF_ERROR(conn.Command("NOTIFY forq_work", "notify"));
  if (!done.empty()) {
    FORQ_RETURN_IF_ERROR(
        conn.Run("notify_done", "SELECT pg_notify('forq_done', $1)",
                 {Param::Text(absl::StrJoin(done, ","))}, "notify")
            .status());
  }
  std::move(rollback).Cancel();
  FORQ_RETURN_IF_ERROR(conn.Command("COMMIT", "commit reap"));
  spdlog::warn("reaped {} attempts whose lease expired", rows);
  return rows;
}

absl::Status PostgresStore::StartCluster(Callbacks callbacks) {
  if (!cluster_.enabled) {
    return absl::FailedPreconditionError("postgres store: not in cluster mode");
  }
  {
    MutexLock lock(&callbacks_mu_);
    callbacks_ = std::move(callbacks);
  }
  if (!cluster_.background) return absl::OkStatus();
  MutexLock lock(&close_mu_);
  if (upkeep_thread_.joinable()) return absl::OkStatus();
  upkeep_thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "forq-cluster");
    UpkeepLoop();
  });
  return absl::OkStatus();
}

void PostgresStore::StopCluster() {
  std::thread t;
  {
    MutexLock lock(&close_mu_);
    t = std::move(upkeep_thread_);
  }
  {
    MutexLock lock(&upkeep_stop_mu_);
    upkeep_stop_ = true;
  }
  if (t.joinable()) t.join();
  MutexLock lock(&callbacks_mu_);
  callbacks_ = Callbacks();
}

void PostgresStore::HandleNotifications(Conn& listen, const Callbacks& cb) {
  PQconsumeInput(listen.get());
  bool work = false;
  std::vector<std::string> finished;
  std::vector<AttemptRef> cancels;
  std::vector<v1::TaskEvent> events;
  std::vector<std::string> watches;
  while (PGnotify* n = PQnotifies(listen.get())) {
    const absl::string_view channel(n->relname);
    const absl::string_view extra(n->extra);
    // Events and watches carry "<sender node>|<body>"; a node ignores its
    // own (its watchers see its own tasks' events directly).
    const size_t bar = extra.rfind('|');
    const bool own =
        bar == absl::string_view::npos || extra.substr(0, bar) == node_id_;
    const absl::string_view body =
        bar == absl::string_view::npos ? "" : extra.substr(bar + 1);
    if (channel == "forq_work") {
      work = true;
    } else if (channel == "forq_done") {
      for (absl::string_view id : absl::StrSplit(extra, ',', absl::SkipEmpty()))
        finished.emplace_back(id);
    } else if (channel == "forq_cancel") {
      for (absl::string_view one :
           absl::StrSplit(extra, ',', absl::SkipEmpty())) {
        std::pair<absl::string_view, absl::string_view> p =
            absl::StrSplit(one, absl::MaxSplits(':', 1));
        int attempt = 0;
        if (absl::SimpleAtoi(p.second, &attempt)) {
          cancels.push_back(AttemptRef{std::string(p.first), attempt});
        }
      }
    } else if (channel == "forq_event" && !own) {
      std::string bytes;
      v1::TaskEvent e;
      if (absl::Base64Unescape(body, &bytes) && e.ParseFromString(bytes)) {
        events.push_back(std::move(e));
      }
    } else if (channel == "forq_watch" && !own) {
      for (absl::string_view key : absl::StrSplit(body, ',', absl::SkipEmpty()))
        watches.emplace_back(key);
    }
    PQfreemem(n);
  }
  if (!watches.empty()) {
    MutexLock lock(&watch_mu_);
    const absl::Time until = absl::Now() + 3 * kWatchRefresh;
    for (std::string& key : watches) remote_watches_[std::move(key)] = until;
    any_remote_watch_.store(true, std::memory_order_release);
  }
  if (!cancels.empty()) {
    // Only attempts this node runs (every node hears every cancel).
    MutexLock lock(&owned_mu_);
    std::vector<AttemptRef> mine;
    for (AttemptRef& a : cancels) {
      auto it = owned_.find(a.task_id);
      if (it == owned_.end() || it->second.lost ||
          it->second.attempt != a.attempt) {
        continue;
      }
      it->second.cancel_told = true;  // the heartbeat need not tell again
      mine.push_back(std::move(a));
    }
    cancels.swap(mine);
  }
  if (work && cb.wake) cb.wake();
  if (!finished.empty() && cb.finished) cb.finished(finished);
  if (!cancels.empty() && cb.cancel) cb.cancel(cancels);
  if (!events.empty() && cb.events) cb.events(events);
}

void PostgresStore::SetWatched(const std::string& key, bool watched) {
  if (!cluster_.enabled) return;
  bool added = false;
  {
    MutexLock lock(&watch_mu_);
    if (watched) {
      added = ++local_watches_[key] == 1;
    } else if (auto it = local_watches_.find(key);
               it != local_watches_.end() && --it->second <= 0) {
      // The other nodes forget it when it is not refreshed.
      local_watches_.erase(it);
    }
  }
  if (!added) return;
  // A new key: the other nodes hear of it at once.
  auto op = std::make_unique<PendingWrite>();
  op->type = PendingWrite::Type::kNotify;
  op->notes.emplace_back("forq_watch", absl::StrCat(node_id_, "|", key));
  op->write_done = [](absl::Status) {};
  Refuse(Enqueue(std::move(op)));
}

void PostgresStore::RefreshWatches() {
  auto op = std::make_unique<PendingWrite>();
  op->type = PendingWrite::Type::kNotify;
  op->write_done = [](absl::Status) {};
  {
    MutexLock lock(&watch_mu_);
    const absl::Time now = absl::Now();
    absl::erase_if(remote_watches_,
                   [&](const auto& w) { return w.second <= now; });
    any_remote_watch_.store(!remote_watches_.empty(),
                            std::memory_order_release);
    std::string payload;
    for (const auto& [key, n] : local_watches_) {
      if (!payload.empty() && payload.size() + key.size() > 7000) {
        op->notes.emplace_back("forq_watch",
                               absl::StrCat(node_id_, "|", payload));
        payload.clear();
      }
      if (!payload.empty()) payload.push_back(',');
      payload.append(key);
    }
    if (!payload.empty()) {
      op->notes.emplace_back("forq_watch",
                             absl::StrCat(node_id_, "|", payload));
    }
  }
  if (op->notes.empty()) return;
  Refuse(Enqueue(std::move(op)));
}

bool PostgresStore::Watched(const v1::Task& task) {
  if (!any_remote_watch_.load(std::memory_order_acquire)) return false;
  MutexLock lock(&watch_mu_);
  const absl::Time now = absl::Now();
  for (const std::string& key :
       {absl::StrCat("t:", task.id()), absl::StrCat("q:", task.queue()),
        std::string("q:*")}) {
    auto it = remote_watches_.find(key);
    if (it != remote_watches_.end() && it->second > now) return true;
  }
  return false;
}

void PostgresStore::PublishEvent(const v1::TaskEvent& event) {
  // A notification holds under 8000 bytes: a large task goes without its
  // payload and result (the watcher can Get them).
  constexpr size_t kMaxEventBytes = 5000;
  std::string bytes;
  if (event.ByteSizeLong() + node_id_.size() > kMaxEventBytes) {
    v1::TaskEvent small = event;
    small.mutable_task()->clear_payload();
    small.mutable_task()->clear_result();
    if (small.ByteSizeLong() + node_id_.size() > kMaxEventBytes) return;
    small.SerializeToString(&bytes);
  } else {
    event.SerializeToString(&bytes);
  }
  auto op = std::make_unique<PendingWrite>();
  op->type = PendingWrite::Type::kNotify;
  op->notes.emplace_back(
      "forq_event", absl::StrCat(node_id_, "|", absl::Base64Escape(bytes)));
  op->write_done = [](absl::Status) {};
  Refuse(Enqueue(std::move(op)));
}

absl::StatusOr<WorkSource::CancelResult> PostgresStore::CancelTask(
    const std::string& id) {
  if (!cluster_.enabled) {
    return absl::FailedPreconditionError("postgres store: not in cluster mode");
  }
  return WithReader([&](Conn& conn) -> absl::StatusOr<CancelResult> {
    FORQ_RETURN_IF_ERROR(conn.Command("BEGIN", "begin cancel"));
    absl::Cleanup rollback = [&] {
      if (!conn.bad()) (void)conn.Command("ROLLBACK", "rollback cancel");
    };
    FORQ_ASSIGN_OR_RETURN(
        Result res, conn.Run("cancel_read", kCancelRead, {Param::Text(id)},
                             absl::StrCat("read task ", id, " to cancel")));
    if (PQntuples(res.get()) == 0) {
      return absl::NotFoundError(absl::StrCat("task ", id, " not found"));
    }
    CancelResult out;
    FORQ_ASSIGN_OR_RETURN(v1::Task stored, ParseTask(res.get(), 0, 0));
    FORQ_ASSIGN_OR_RETURN(out.task, TaskFromRow(res.get(), 0));
    const int state = IntValue(res.get(), 0, 1);
    std::string scratch;
    if (state == static_cast<int>(v1::QUEUED)) {
      v1::Task& t = out.task;
      const absl::Time now = absl::Now();
      t.set_state(v1::CANCELLED);
      t.clear_not_before();
      v1::TaskError* e = t.mutable_error();
      e->set_code(static_cast<int>(absl::StatusCode::kCancelled));
      e->set_message("cancelled before it ran");
      e->set_reason(v1::FAILURE_REASON_UNSPECIFIED);
      e->set_signal(0);
      t.mutable_finished_at()->set_seconds(absl::ToUnixSeconds(now));
      t.mutable_finished_at()->set_nanos(
          static_cast<int32_t>(absl::ToUnixNanos(now) % 1'000'000'000));
      t.SerializeToString(&scratch);
      FORQ_RETURN_IF_ERROR(
          conn.Run("cancel_queued", kCancelQueued,
                   {Param::Text(id), Param::Int(static_cast<int>(t.state())),
                    OptionalInt(FinishedAtMicros(t)),
                    OptionalInt(ExpiresAtMicros(t)), Param::Bytes(scratch)},
                   "cancel queued task")
              .status());
      out.cancelled = true;
    } else if (state == static_cast<int>(v1::RUNNING)) {
      // The stored record keeps what the owner wrote last; the flag also
      // makes the reaper end it CANCELLED if the owner dies.
      stored.set_cancel_requested(true);
      stored.SerializeToString(&scratch);
      FORQ_RETURN_IF_ERROR(
          conn.Run("cancel_running", kCancelRunning,
                   {Param::Text(id), Param::Bytes(scratch),
                    Param::Text(absl::StrCat(id, ":", out.task.attempt()))},
                   "request cancel")
              .status());
      out.task.set_cancel_requested(true);
      out.requested = true;
    } else {
      return out;  // Terminal: nothing to do (the rollback ends it).
    }
    std::move(rollback).Cancel();
    FORQ_RETURN_IF_ERROR(conn.Command("COMMIT", "commit cancel"));
    return out;
  });
}

// One thread: the LISTEN connection (woken by notifications, waited on
// with poll() so the timers below keep running), the heartbeat every
// lease/3, the self-fence check, the reaper every lease/2, and the
// fallback polls for work and for finished tasks.
void PostgresStore::UpkeepLoop() {
  std::unique_ptr<Conn> listen;
  absl::Time next_listen_try = absl::InfinitePast();
  absl::Time next_heartbeat = absl::Now() + cluster_.lease / 3;
  absl::Time next_reap = absl::Now();
  absl::Time next_poll = absl::Now() + cluster_.poll_interval;
  absl::Time next_recheck = absl::Now() + absl::Seconds(1);
  absl::Time next_watch_refresh = absl::Now() + kWatchRefresh;
  for (;;) {
    {
      MutexLock lock(&upkeep_stop_mu_);
      if (upkeep_stop_) return;
    }
    Callbacks cb = callbacks();
    absl::Time now = absl::Now();
    if (listen == nullptr || listen->bad()) {
      if (now >= next_listen_try) {
        next_listen_try = now + absl::Seconds(1);
        listen.reset();
        absl::StatusOr<std::unique_ptr<Conn>> c =
            Conn::Connect(uri_, durability_, IdleTxnTimeout(cluster_));
        if (c.ok() &&
            (*c)->Command("LISTEN forq_work; LISTEN forq_done; LISTEN "
                          "forq_cancel; LISTEN forq_event; LISTEN forq_watch",
                          "listen")
                .ok()) {
          listen = std::move(*c);
          // Notifications sent while not listening are lost: look again.
          if (cb.wake) cb.wake();
          if (cb.finished) cb.finished({});
        }
      }
    }
    // Waits for a notification or the next timer (at most the poll
    // interval, so a stop request is seen soon).
    absl::Time until = std::min({next_heartbeat, next_reap, next_poll});
    absl::Duration wait = std::max(absl::ZeroDuration(), until - now);
    if (listen != nullptr && !listen->bad()) {
      struct pollfd pfd = {PQsocket(listen->get()), POLLIN, 0};
      int ms = static_cast<int>(absl::ToInt64Milliseconds(wait));
      if (poll(&pfd, 1, ms) > 0) HandleNotifications(*listen, cb);
    } else if (wait > absl::ZeroDuration()) {
      MutexLock lock(&upkeep_stop_mu_);
      // Nothing signals this: it is a timed wait, not synchronisation.
      CondVar idle;
      idle.WaitWithTimeout(&upkeep_stop_mu_, wait);
    }
    now = absl::Now();
    if (now >= next_poll) {
      next_poll = now + cluster_.poll_interval;
      if (cb.wake) cb.wake();
    }
    if (now >= next_recheck) {
      next_recheck = now + absl::Seconds(1);
      if (cb.finished) cb.finished({});
    }
    if (now >= next_watch_refresh) {
      next_watch_refresh = now + kWatchRefresh;
      RefreshWatches();
    }
    CheckSelfFence();
    if (now >= next_heartbeat) {
      absl::Status s = Heartbeat();
      // After a failure try again soon: the self-fence deadline is lease/2.
      next_heartbeat =
          absl::Now() + (s.ok() ? cluster_.lease / 3 : cluster_.lease / 10);
      if (!s.ok()) spdlog::error("cluster heartbeat: {}", s.ToString());
      CheckSelfFence();
    }
    if (now >= next_reap) {
      absl::StatusOr<int> n = ReapExpired();
      // Every lease/2, at most 500 ms: an expired lease is taken back
      // well within a second.
      next_reap = absl::Now() +
                  ((n.ok() && *n == 500)
                       ? absl::ZeroDuration()
                       : std::min(cluster_.lease / 2, absl::Milliseconds(500)));
      if (!n.ok()) spdlog::error("cluster reaper: {}", n.status().ToString());
    }
  }
}

void PostgresStore::Close() {
  StopCluster();
  MutexLock close_lock(&close_mu_);
  {
    MutexLock lock(&queue_mu_);
    closing_ = true;
    queue_cv_.SignalAll();
  }
  if (writer_thread_.joinable()) writer_thread_.join();
  {
    MutexLock lock(&done_mu_);
    done_closing_ = true;
    done_cv_.SignalAll();
  }
  if (callback_thread_.joinable()) callback_thread_.join();
  // Releases the store lock: another store may open the schema now. An
  // explicit unlock, because the server drops a closed session's locks
  // only when its backend notices the disconnect, a moment later.
  if (lock_ != nullptr && !lock_->bad()) {
    (void)lock_->Command("SELECT pg_advisory_unlock_all()", "release lock");
  }
  lock_.reset();
  MutexLock lock(&pool_mu_);
  idle_readers_.clear();
}

}  // namespace forq::server
