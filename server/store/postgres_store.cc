#include "server/store/postgres_store.h"

#include <pthread.h>

#include <algorithm>
#include <map>
#include <optional>

#include "absl/cleanup/cleanup.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "spdlog/spdlog.h"

#include "common/status_macros.h"
#include "server/store/task_record.h"

#include <libpq-fe.h>

namespace forq::server {
namespace postgres_internal {
namespace {

using store_internal::DecodePageToken;
using store_internal::EffectivePageSize;
using store_internal::EncodePageToken;
using store_internal::ExpiresAtMicros;
using store_internal::FinishedAtMicros;

struct ResultDeleter {
  void operator()(PGresult* res) const { PQclear(res); }
};
using Result = std::unique_ptr<PGresult, ResultDeleter>;

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

// Builds a PostgreSQL array literal ({"a","b",NULL}) for unnest().
class ArrayLiteral {
 public:
  void AddText(absl::string_view value) {
    Separate();
    text_.push_back('"');
    for (char c : value) {
      if (c == '"' || c == '\\') text_.push_back('\\');
      text_.push_back(c);
    }
    text_.push_back('"');
  }
  void AddBytes(absl::string_view bytes) {
    Separate();
    // bytea hex input "\x..", its backslash escaped for the array parser.
    absl::StrAppend(&text_, "\"\\\\x", absl::BytesToHexString(bytes), "\"");
  }
  void AddInt(std::optional<int64_t> value) {
    Separate();
    if (value.has_value()) {
      absl::StrAppend(&text_, *value);
    } else {
      text_.append("NULL");
    }
  }
  void AddNullableText(absl::string_view value) {
    if (value.empty()) {
      Separate();
      text_.append("NULL");
    } else {
      AddText(value);
    }
  }
  std::string Finish() && {
    text_.push_back('}');
    return std::move(text_);
  }

 private:
  void Separate() {
    if (text_.size() > 1) text_.push_back(',');
  }
  std::string text_ = "{";
};

}  // namespace

// A libpq connection with its prepared statements (prepared on first use,
// again after a reconnect).
class Conn {
 public:
  static absl::StatusOr<std::unique_ptr<Conn>> Connect(const std::string& uri,
                                                       Durability durability) {
    std::unique_ptr<Conn> conn(new Conn(uri, durability));
    FORQ_RETURN_IF_ERROR(conn->Setup());
    return conn;
  }
  ~Conn() { PQfinish(conn_); }
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;

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
  Conn(std::string uri, Durability durability)
      : conn_(ConnectWithDefaults(uri)), durability_(durability) {}

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
    return absl::OkStatus();
  }

  PGconn* const conn_;
  const Durability durability_;
  absl::flat_hash_set<std::string> prepared_;
};

}  // namespace postgres_internal

namespace {

using postgres_internal::ArrayLiteral;
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
CREATE INDEX IF NOT EXISTS tasks_by_state ON tasks(state, id);
CREATE INDEX IF NOT EXISTS tasks_by_queue ON tasks(queue, id);
CREATE INDEX IF NOT EXISTS tasks_by_kind ON tasks(kind, id);
CREATE INDEX IF NOT EXISTS tasks_by_expiry
  ON tasks(expires_at_us) WHERE expires_at_us IS NOT NULL;
CREATE TABLE IF NOT EXISTS objects(
  name TEXT COLLATE "C" PRIMARY KEY NOT NULL,
  data BYTEA NOT NULL);
)sql";

const std::string kInsertBulk =
    "INSERT INTO tasks(id, queue, kind, state, priority, idempotency_key, "
    "finished_at_us, expires_at_us, data) SELECT * FROM unnest($1::text[], "
    "$2::text[], $3::text[], $4::int4[], $5::int4[], $6::text[], $7::int8[], "
    "$8::int8[], $9::bytea[])";
const std::string kInsertKeyed =
    "INSERT INTO tasks(id, queue, kind, state, priority, idempotency_key, "
    "finished_at_us, expires_at_us, data) VALUES($1, $2, $3, $4, $5, $6, $7, "
    "$8, $9) ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL "
    "DO NOTHING";
const std::string kFindByKey =
    "SELECT data FROM tasks WHERE idempotency_key = $1";
// Queue, kind, priority and idempotency key never change after insert.
const std::string kUpdateBulk =
    "UPDATE tasks AS t SET state = u.state, finished_at_us = u.fin, "
    "expires_at_us = u.exp, data = u.data FROM unnest($1::text[], "
    "$2::int4[], $3::int8[], $4::int8[], $5::bytea[]) AS u(id, state, fin, "
    "exp, data) WHERE t.id = u.id";
const std::string kPutObject =
    "INSERT INTO objects(name, data) VALUES($1, $2) ON CONFLICT (name) DO "
    "UPDATE SET data = excluded.data";
const std::string kDeleteObject = "DELETE FROM objects WHERE name = $1";
const std::string kGet = "SELECT data FROM tasks WHERE id = $1";
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

absl::StatusOr<int64_t> AffectedRows(const Result& res) {
  int64_t n = 0;
  if (!absl::SimpleAtoi(PQcmdTuples(res.get()), &n)) {
    return absl::InternalError("postgres store: no affected-row count");
  }
  return n;
}

}  // namespace

struct PostgresStore::PendingWrite {
  enum class Type { kInsert, kUpdate, kPutObject, kDeleteObject, kObjects };
  Type type = Type::kInsert;
  std::vector<v1::Task> tasks;
  std::string name;
  std::string blob;
  std::vector<ObjectWrite> objects;  // kObjects
  InsertDone insert_done;
  WriteDone write_done;
  std::vector<bool> superseded;
  std::vector<InsertResult> results;

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
  FORQ_ASSIGN_OR_RETURN(
      std::unique_ptr<Conn> writer,
      Conn::Connect(options.postgres_uri, options.durability));
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
  // unfinished tasks and run them twice. The lock is the session's, so it
  // goes away with the connection (kill -9 leaves nothing stale).
  FORQ_ASSIGN_OR_RETURN(
      std::unique_ptr<Conn> lock,
      Conn::Connect(options.postgres_uri, options.durability));
  {
    FORQ_ASSIGN_OR_RETURN(Result res,
                          lock->Run("lock",
                                    absl::StrCat("SELECT pg_try_advisory_lock(",
                                                 kLockKey, ", 1)::text"),
                                    {}, "take the store lock"));
    if (absl::string_view(PQgetvalue(res.get(), 0, 0)) != "true") {
      return absl::FailedPreconditionError(
          "postgres store: the database schema is in use by another forqd "
          "or store (advisory lock held)");
    }
  }
  auto store = std::unique_ptr<PostgresStore>(
      new PostgresStore(options, std::move(writer), std::move(lock)));
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
      writer_(std::move(writer)) {
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
    for (auto& op : group) done.push_back({std::move(op), txn_status});
    Deliver(std::move(done));
    return;
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

absl::Status PostgresStore::RunGroup(
    std::vector<std::unique_ptr<PendingWrite>>& group,
    std::vector<absl::Status>& statuses, bool isolated) {
  absl::Status txn_status = writer_->Command("BEGIN", "begin transaction");
  for (size_t i = 0; txn_status.ok() && i < group.size(); ++i) {
    if (isolated) {
      txn_status = writer_->Command("SAVEPOINT w", "savepoint");
      if (!txn_status.ok()) break;
    }
    absl::Status status = Apply(*group[i]);
    if (!status.ok() && writer_->bad()) {
      txn_status = status;  // Connection lost: the whole group fails.
      break;
    }
    if (!status.ok() && !isolated) {
      txn_status = absl::AbortedError("a call of the group failed");
      break;
    }
    if (!status.ok()) {
      txn_status = writer_->Command("ROLLBACK TO SAVEPOINT w", "rollback to");
    }
    if (isolated && txn_status.ok()) {
      txn_status = writer_->Command("RELEASE SAVEPOINT w", "release");
    }
    statuses[i] = std::move(status);
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

absl::Status PostgresStore::Apply(PendingWrite& op) {
  switch (op.type) {
    case PendingWrite::Type::kInsert:
      return ApplyInsert(op);
    case PendingWrite::Type::kUpdate:
      return ApplyUpdate(op);
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

absl::Status PostgresStore::ApplyInsert(PendingWrite& op) {
  op.results.assign(op.tasks.size(), InsertResult());
  // Tasks without an idempotency key go in one multi-row statement; keyed
  // ones one by one, in order, each seeing the rows before it.
  ArrayLiteral ids, queues, kinds, states, priorities, keys, finished, expires,
      datas;
  int bulk = 0;
  std::string scratch;
  for (const v1::Task& task : op.tasks) {
    if (task.id().empty()) {
      return absl::InvalidArgumentError("postgres store: task without id");
    }
    if (!task.SerializeToString(&scratch)) {
      return absl::InternalError(
          absl::StrCat("postgres store: cannot serialise task ", task.id()));
    }
    if (!task.idempotency_key().empty()) continue;
    ids.AddText(task.id());
    queues.AddText(task.queue());
    kinds.AddText(task.kind());
    states.AddInt(static_cast<int>(task.state()));
    priorities.AddInt(task.priority());
    keys.AddNullableText("");
    finished.AddInt(FinishedAtMicros(task));
    expires.AddInt(ExpiresAtMicros(task));
    datas.AddBytes(scratch);
    ++bulk;
  }
  auto duplicate_id = [](absl::Status status) {
    if (status.code() == absl::StatusCode::kAlreadyExists) {
      return absl::AlreadyExistsError(absl::StrCat(
          "postgres store: task id already stored (", status.message(), ")"));
    }
    return status;
  };
  if (bulk > 0) {
    absl::StatusOr<Result> res =
        writer_->Run("insert_bulk", kInsertBulk,
                     {Param::Text(std::move(ids).Finish()),
                      Param::Text(std::move(queues).Finish()),
                      Param::Text(std::move(kinds).Finish()),
                      Param::Text(std::move(states).Finish()),
                      Param::Text(std::move(priorities).Finish()),
                      Param::Text(std::move(keys).Finish()),
                      Param::Text(std::move(finished).Finish()),
                      Param::Text(std::move(expires).Finish()),
                      Param::Text(std::move(datas).Finish())},
                     "insert tasks");
    if (!res.ok()) return duplicate_id(res.status());
  }
  for (size_t i = 0; i < op.tasks.size(); ++i) {
    const v1::Task& task = op.tasks[i];
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
         OptionalInt(ExpiresAtMicros(task)), Param::Bytes(scratch)},
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
          "postgres store: idempotency key conflict with a row that is gone; "
          "retry");
    }
    FORQ_ASSIGN_OR_RETURN(op.results[i].task, ParseTask(found.get(), 0, 0));
    op.results[i].existing = true;
  }
  return absl::OkStatus();
}

absl::Status PostgresStore::ApplyUpdate(PendingWrite& op) {
  // Within one call a later version of a task wins, as in order.
  absl::flat_hash_map<absl::string_view, size_t> last;
  for (size_t i = 0; i < op.tasks.size(); ++i) {
    if (i < op.superseded.size() && op.superseded[i]) continue;
    last[op.tasks[i].id()] = i;
  }
  if (last.empty()) return absl::OkStatus();
  ArrayLiteral ids, states, finished, expires, datas;
  std::string scratch;
  for (size_t i = 0; i < op.tasks.size(); ++i) {
    const v1::Task& task = op.tasks[i];
    auto it = last.find(task.id());
    if (it == last.end() || it->second != i) continue;
    if (!task.SerializeToString(&scratch)) {
      return absl::InternalError(
          absl::StrCat("postgres store: cannot serialise task ", task.id()));
    }
    ids.AddText(task.id());
    states.AddInt(static_cast<int>(task.state()));
    finished.AddInt(FinishedAtMicros(task));
    expires.AddInt(ExpiresAtMicros(task));
    datas.AddBytes(scratch);
  }
  FORQ_ASSIGN_OR_RETURN(Result res,
                        writer_->Run("update_bulk", kUpdateBulk,
                                     {Param::Text(std::move(ids).Finish()),
                                      Param::Text(std::move(states).Finish()),
                                      Param::Text(std::move(finished).Finish()),
                                      Param::Text(std::move(expires).Finish()),
                                      Param::Text(std::move(datas).Finish())},
                                     "update tasks"));
  FORQ_ASSIGN_OR_RETURN(int64_t updated, AffectedRows(res));
  if (updated != static_cast<int64_t>(last.size())) {
    return absl::NotFoundError(absl::StrCat(
        "postgres store: update of unknown task(s): ", last.size() - updated,
        " of ", last.size(), " ids not stored"));
  }
  return absl::OkStatus();
}

void PostgresStore::Insert(std::vector<v1::Task> tasks, InsertDone done) {
  auto op = std::make_unique<PendingWrite>();
  op->type = PendingWrite::Type::kInsert;
  op->tasks = std::move(tasks);
  op->insert_done = std::move(done);
  Refuse(Enqueue(std::move(op)));
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
  return Conn::Connect(uri_, durability_);
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

absl::StatusOr<v1::Task> PostgresStore::Get(absl::string_view id) {
  FORQ_ASSIGN_OR_RETURN(std::unique_ptr<Conn> conn, AcquireReader());
  absl::Cleanup release = [&] { ReleaseReader(std::move(conn)); };
  FORQ_ASSIGN_OR_RETURN(Result res,
                        conn->Run("get", kGet, {Param::Text(std::string(id))},
                                  absl::StrCat("get ", id)));
  if (PQntuples(res.get()) == 0) {
    return absl::NotFoundError(absl::StrCat("task ", id, " not found"));
  }
  return ParseTask(res.get(), 0, 0);
}

absl::StatusOr<ListPage> PostgresStore::List(const ListQuery& query) {
  FORQ_ASSIGN_OR_RETURN(std::string after, DecodePageToken(query.page_token));
  const int limit = EffectivePageSize(query.page_size);
  const bool by_queue = !query.queue.empty();
  const bool by_state = query.state != v1::TASK_STATE_UNSPECIFIED;
  const bool by_kind = !query.kind.empty();
  // Only the filters in use appear in the SQL, so the planner can use the
  // (filter, id) index that also yields id order.
  std::string sql = "SELECT data FROM tasks WHERE id > $1";
  std::vector<Param> params = {Param::Text(std::move(after))};
  std::string name = "list";
  if (by_queue) {
    params.push_back(Param::Text(query.queue));
    absl::StrAppend(&sql, " AND queue = $", params.size());
    name += "_q";
  }
  if (by_state) {
    params.push_back(Param::Int(static_cast<int>(query.state)));
    absl::StrAppend(&sql, " AND state = $", params.size());
    name += "_s";
  }
  if (by_kind) {
    params.push_back(Param::Text(query.kind));
    absl::StrAppend(&sql, " AND kind = $", params.size());
    name += "_k";
  }
  // One extra row tells whether another page exists.
  params.push_back(Param::Int(limit + 1));
  absl::StrAppend(&sql, " ORDER BY id LIMIT $", params.size());

  FORQ_ASSIGN_OR_RETURN(std::unique_ptr<Conn> conn, AcquireReader());
  absl::Cleanup release = [&] { ReleaseReader(std::move(conn)); };
  FORQ_ASSIGN_OR_RETURN(Result res,
                        conn->Run(name.c_str(), sql, params, "list"));
  ListPage page;
  const int rows = PQntuples(res.get());
  for (int r = 0; r < rows; ++r) {
    if (r == limit) {
      page.next_page_token = EncodePageToken(page.tasks.back().id());
      break;
    }
    FORQ_ASSIGN_OR_RETURN(v1::Task task, ParseTask(res.get(), r, 0));
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

void PostgresStore::Close() {
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
  // Releases the store lock: another store may open the schema now.
  lock_.reset();
  MutexLock lock(&pool_mu_);
  idle_readers_.clear();
}

}  // namespace forq::server
