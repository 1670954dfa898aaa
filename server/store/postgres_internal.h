// Internal to the PostgreSQL store (postgres_store*.cc, one file per
// role): the libpq connection and statement parameters, row helpers, and
// the store's private structs. Nothing else includes it.
#ifndef FORQ_SERVER_STORE_POSTGRES_INTERNAL_H_
#define FORQ_SERVER_STORE_POSTGRES_INTERNAL_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

#include "server/store/postgres_store.h"

#include <libpq-fe.h>

namespace forq::server {
namespace postgres_internal {

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
  // One append per value (a push_back per byte cost more than the rest of
  // building the arrays).
  static void AppendBig(uint64_t v, int bytes, std::string& out) {
    char big[8];
    for (int i = bytes - 1; i >= 0; --i) {
      big[i] = static_cast<char>(v & 0xff);
      v >>= 8;
    }
    out.append(big, bytes);
  }

  const Type type_;
  // The header's room, then each element: its length (-1: NULL), bytes.
  std::string body_;
  uint32_t count_ = 0;
  bool has_null_ = false;
};

// A text[] parameter of `values`; NULL when there are none.
inline Param TextArrayOrNull(const std::vector<std::string>& values) {
  if (values.empty()) return Param::Null();
  ArrayParam a{ArrayParam::Type::kText};
  for (const std::string& v : values) a.AddText(v);
  return std::move(a).Finish();
}

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
      std::string session_sql = "");
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
      const std::vector<Stmt>& stmts, absl::string_view what);

  PGconn* get() const { return conn_; }
  bool bad() const { return PQstatus(conn_) != CONNECTION_OK; }

  // Reconnects a broken connection.
  absl::Status EnsureOk();

  // A simple-protocol command without parameters (BEGIN, DDL...).
  absl::Status Command(const char* sql, absl::string_view what);

  // Runs the statement `sql`, prepared once per connection under `name`.
  // Results come back in binary format (bytea raw, int8 big-endian).
  absl::StatusOr<Result> Run(const char* name, const std::string& sql,
                             const std::vector<Param>& params,
                             absl::string_view what);

 private:
  Conn(const std::string& uri, Durability durability,
       absl::Duration idle_txn_timeout, std::string session_sql)
      : conn_(ConnectWithDefaults(uri)),
        durability_(durability),
        idle_txn_timeout_(idle_txn_timeout),
        session_sql_(std::move(session_sql)) {}

  // A connect attempt gives up after 5 s and TCP keepalives notice a dead
  // server within ~20 s, unless the URI sets its own values (keywords
  // after the expanded URI would override it, so they come first).
  static PGconn* ConnectWithDefaults(const std::string& uri);

  absl::Status Setup();

  PGconn* const conn_;
  const Durability durability_;
  const absl::Duration idle_txn_timeout_;
  const std::string session_sql_;
  absl::flat_hash_set<std::string> prepared_;
};

absl::StatusOr<v1::Task> ParseTask(const PGresult* res, int row, int column);

Param OptionalInt(std::optional<int64_t> value);

// How long from now a QUEUED task waits (its not_before, by this node's
// clock); the database adds it to its own clock. nullopt: claimable now.
std::optional<int64_t> DelayMicros(const v1::Task& task);

std::string TextValue(const PGresult* res, int row, int column);

int IntValue(const PGresult* res, int row, int column);

// A row of (data, state, attempt). A cluster node writes no RUNNING
// record: its claim sets the state and attempt columns and leaves `data` as
// it was queued, so a claimed task reads as RUNNING at the claimed attempt.
absl::StatusOr<v1::Task> TaskFromRow(const PGresult* res, int row);

// Cluster mode: lease/2, so a paused node's open transaction is ended
// (and its row locks released) before its leases expire.
absl::Duration IdleTxnTimeout(const ClusterOptions& cluster);

absl::StatusOr<int64_t> AffectedRows(const Result& res);

// The write of task rows that no attempt fences (also the reaper's).
extern const std::string kUpdateBulk;

}  // namespace postgres_internal

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

// The task statements of a group (or of one call), built before any is
// sent, so they can go to the server in one pipeline.
struct PostgresStore::TaskWrites {
  using ArrayParam = postgres_internal::ArrayParam;
  using Param = postgres_internal::Param;
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

template <typename Fn>
auto PostgresStore::WithReader(Fn fn) -> decltype(fn(std::declval<Conn&>())) {
  for (int attempt = 0;; ++attempt) {
    absl::StatusOr<std::unique_ptr<Conn>> conn = AcquireReader();
    if (!conn.ok()) return conn.status();
    auto out = fn(**conn);
    const bool lost = !out.ok() && (*conn)->bad();
    ReleaseReader(std::move(*conn));
    if (!lost || attempt == 1) return out;
    readers_.Clear();
  }
}

}  // namespace forq::server

#endif  // FORQ_SERVER_STORE_POSTGRES_INTERNAL_H_
