// PostgresStore: opening (schema creation and migration, the store lock,
// node registration) and closing.
#include <pthread.h>
#include <unistd.h>

#include <algorithm>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "spdlog/spdlog.h"

#include "common/status_macros.h"
#include "server/store/postgres_internal.h"

#include <libpq-fe.h>

namespace forq::server {

namespace {

using postgres_internal::Conn;
using postgres_internal::IdleTxnTimeout;
using postgres_internal::Param;
using postgres_internal::ParseTask;
using postgres_internal::Result;
using postgres_internal::TextArrayOrNull;
using postgres_internal::TextValue;

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
// Version 4: the task kinds each node runs (nodes may load different
// plugins): a node claims only its own, and accepts a kind another live
// node registered.
constexpr const char* kSchemaV4 = R"sql(
ALTER TABLE nodes ADD COLUMN IF NOT EXISTS kinds TEXT[];
)sql";
const std::string kRegister =
    "INSERT INTO nodes(node_id, incarnation, started_at, heartbeat_at) "
    "VALUES($1, nextval('forq_incarnation'), now(), now()) ON CONFLICT "
    "(node_id) DO UPDATE SET incarnation = excluded.incarnation, started_at "
    "= now(), heartbeat_at = now() RETURNING incarnation::text";

const std::string kAnnounce = "SELECT pg_notify('forq_node', $1)";
const std::string kSetKinds =
    "UPDATE nodes SET kinds = $2::text[] WHERE node_id = $1";
// The live other nodes: how many, and the kinds they run (newline-joined).
const std::string kOtherNodes =
    "WITH live AS (SELECT kinds FROM nodes WHERE node_id <> $1 AND "
    "heartbeat_at > now() - $2::int8 * interval '1 microsecond') SELECT "
    "(SELECT count(*) FROM live)::text, COALESCE((SELECT string_agg(DISTINCT "
    "k, E'\\n') FROM live, unnest(live.kinds) AS k), '')";

std::string DefaultNodeId() {
  char host[256] = {0};
  if (gethostname(host, sizeof(host) - 1) != 0) host[0] = 0;
  return absl::StrCat(host[0] != 0 ? host : "forqd", "-", getpid(), "-",
                      absl::ToUnixSeconds(absl::Now()));
}

// Version 1 kept the attempt only inside `data`: copies it into its column
// for the unfinished tasks (finished ones are never claimed again except
// through Retry, which writes the column).
absl::Status CopyAttemptsOut(Conn& writer) {
  FORQ_ASSIGN_OR_RETURN(
      Result rows,
      writer.Run("migrate_read",
                 absl::StrCat("SELECT data FROM tasks WHERE state IN (",
                              static_cast<int>(v1::QUEUED), ", ",
                              static_cast<int>(v1::RUNNING), ")"),
                 {}, "read unfinished tasks to migrate"));
  for (int r = 0; r < PQntuples(rows.get()); ++r) {
    FORQ_ASSIGN_OR_RETURN(v1::Task task, ParseTask(rows.get(), r, 0));
    FORQ_RETURN_IF_ERROR(
        writer
            .Run("migrate_attempt",
                 "UPDATE tasks SET attempt = $2 WHERE id = $1",
                 {Param::Text(task.id()), Param::Int(task.attempt())},
                 "migrate attempt")
            .status());
  }
  return absl::OkStatus();
}

// Creates the schema or migrates it to PostgresStore::kSchemaVersion in one
// transaction, under a transaction-scoped advisory lock so that nodes starting
// together do it once; refuses a schema newer than this forqd.
absl::Status CreateOrMigrateSchema(Conn& writer) {
  FORQ_RETURN_IF_ERROR(writer.Command("BEGIN", "begin migration"));
  absl::Cleanup rollback = [&] {
    (void)writer.Command("ROLLBACK", "rollback migration");
  };
  // The cluster's idle-in-transaction timeout (lease/2) is for a paused
  // node's row locks; a migration paused between its statements (a busy
  // host) must not lose its session to it.
  FORQ_RETURN_IF_ERROR(
      writer.Command("SET LOCAL idle_in_transaction_session_timeout = 0",
                     "migration timeout"));
  FORQ_RETURN_IF_ERROR(writer.Command(
      absl::StrCat("SELECT pg_advisory_xact_lock(", kLockKey, ", 2)").c_str(),
      "lock schema"));
  FORQ_RETURN_IF_ERROR(writer.Command(
      "CREATE TABLE IF NOT EXISTS forq_schema_version(version INTEGER NOT "
      "NULL)",
      "create forq_schema_version"));
  FORQ_ASSIGN_OR_RETURN(
      Result res, writer.Run("version",
                             "SELECT COALESCE(max(version), 0)::text FROM "
                             "forq_schema_version",
                             {}, "read schema version"));
  int version = 0;
  // Binary format of a text column is its bytes.
  (void)absl::SimpleAtoi(absl::string_view(PQgetvalue(res.get(), 0, 0),
                                           PQgetlength(res.get(), 0, 0)),
                         &version);
  if (version > PostgresStore::kSchemaVersion) {
    return absl::FailedPreconditionError(absl::StrCat(
        "postgres store: schema version ", version,
        " is newer than this forqd supports (", PostgresStore::kSchemaVersion,
        "); upgrade forqd or use another database or schema"));
  }
  if (version < PostgresStore::kSchemaVersion) {
    FORQ_RETURN_IF_ERROR(writer.Command(kSchema, "create schema"));
    FORQ_RETURN_IF_ERROR(writer.Command(kSchemaV2, "migrate schema to v2"));
    FORQ_RETURN_IF_ERROR(writer.Command(kSchemaV3, "migrate schema to v3"));
    FORQ_RETURN_IF_ERROR(writer.Command(kSchemaV4, "migrate schema to v4"));
    if (version == 1) FORQ_RETURN_IF_ERROR(CopyAttemptsOut(writer));
    FORQ_RETURN_IF_ERROR(writer.Command(
        absl::StrCat("DELETE FROM forq_schema_version; INSERT INTO "
                     "forq_schema_version VALUES(",
                     PostgresStore::kSchemaVersion, ")")
            .c_str(),
        "write schema version"));
  }
  std::move(rollback).Cancel();
  return writer.Command("COMMIT", "commit migration");
}

// Takes the store's advisory lock on `lock`'s session: shared by cluster
// nodes, exclusive for a single-node forqd.
absl::Status TakeStoreLock(Conn& lock, bool shared) {
  FORQ_ASSIGN_OR_RETURN(
      Result res,
      lock.Run(shared ? "lock_shared" : "lock",
               absl::StrCat("SELECT pg_try_advisory_lock",
                            shared ? "_shared(" : "(", kLockKey, ", 1)::text"),
               {}, "take the store lock"));
  if (absl::string_view(PQgetvalue(res.get(), 0, 0)) != "true") {
    return absl::FailedPreconditionError(
        shared ? "postgres store: the database schema is in use by a "
                 "single-node forqd (advisory lock held); cluster nodes "
                 "cannot share it"
               : "postgres store: the database schema is in use by another "
                 "forqd or store (advisory lock held)");
  }
  return absl::OkStatus();
}

}  // namespace

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
  FORQ_RETURN_IF_ERROR(CreateOrMigrateSchema(*writer));
  // One writer per database and schema: a second forqd would load the same
  // unfinished tasks and run them twice. Cluster nodes share the lock (they
  // coordinate through leases); a single-node forqd and a cluster never
  // mix. The lock is the session's, so it goes away with the connection
  // (kill -9 leaves nothing stale).
  FORQ_ASSIGN_OR_RETURN(std::unique_ptr<Conn> lock,
                        Conn::Connect(options.postgres_uri, options.durability,
                                      IdleTxnTimeout(options.cluster)));
  FORQ_RETURN_IF_ERROR(TakeStoreLock(*lock, options.cluster.enabled));
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
      writer_(std::move(writer)),
      readers_(static_cast<size_t>(std::max(1, options.pool_size))),
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
  // The other nodes stop taking everything for themselves at once.
  FORQ_RETURN_IF_ERROR(
      conn.Run("announce", kAnnounce, {Param::Text(node_id_)}, "announce node")
          .status());
  return CountOtherNodes(conn);
}

absl::Status PostgresStore::CountOtherNodes(Conn& conn) {
  // An announcement heard while counting may be of a node the count
  // missed: then this node is not alone.
  const uint64_t notices = node_notices_.load(std::memory_order_acquire);
  FORQ_ASSIGN_OR_RETURN(
      Result res,
      conn.Run("other_nodes", kOtherNodes,
               {Param::Text(node_id_),
                Param::Int(absl::ToInt64Microseconds(cluster_.lease))},
               "count live nodes"));
  int64_t others = 0;
  if (PQntuples(res.get()) != 1 ||
      !absl::SimpleAtoi(TextValue(res.get(), 0, 0), &others)) {
    return absl::InternalError("postgres store: no node count returned");
  }
  {
    MutexLock lock(&kinds_mu_);
    other_kinds_.clear();
    for (absl::string_view k :
         absl::StrSplit(TextValue(res.get(), 0, 1), '\n', absl::SkipEmpty())) {
      other_kinds_.emplace(k);
    }
  }
  alone_.store(
      others == 0 && node_notices_.load(std::memory_order_acquire) == notices,
      std::memory_order_release);
  return absl::OkStatus();
}

absl::Status PostgresStore::CountOtherNodesNow() {
  MutexLock lock(&upkeep_mu_);
  FORQ_RETURN_IF_ERROR(upkeep_conn_->EnsureOk());
  return CountOtherNodes(*upkeep_conn_);
}

absl::Status PostgresStore::RegisterKinds(std::vector<std::string> kinds) {
  Param kinds_param = TextArrayOrNull(kinds);
  {
    MutexLock lock(&kinds_mu_);
    kinds_ = std::move(kinds);
  }
  MutexLock lock(&upkeep_mu_);
  FORQ_RETURN_IF_ERROR(upkeep_conn_->EnsureOk());
  FORQ_RETURN_IF_ERROR(
      upkeep_conn_
          ->Run("set_kinds", kSetKinds,
                {Param::Text(node_id_), std::move(kinds_param)},
                "register kinds")
          .status());
  // The others count again, and so read these kinds, at once.
  return upkeep_conn_
      ->Run("announce", kAnnounce, {Param::Text(node_id_)}, "announce node")
      .status();
}

bool PostgresStore::OtherNodeRuns(absl::string_view kind) {
  MutexLock lock(&kinds_mu_);
  return other_kinds_.contains(kind);
}

absl::Duration PostgresStore::HoldAlone() const {
  return alone_.load(std::memory_order_acquire) ? cluster_.lease / 10
                                                : absl::ZeroDuration();
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
  readers_.Clear();
}

}  // namespace forq::server
