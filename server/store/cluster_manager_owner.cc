#include "server/store/cluster_manager_owner.h"

#include <poll.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include <spdlog/spdlog.h>

#include <libpq-fe.h>

namespace forq::server {
namespace {

// Second key of the Manager owner's advisory lock; the store uses 1 (its
// shared store lock) and 2 (schema changes) with the same first key.
constexpr const char* kOwnerLock =
    "hashtext(current_database() || '/' || current_schema()), 3";
constexpr const char* kSchemaLock =
    "hashtext(current_database() || '/' || current_schema()), 2";

constexpr const char* kCreateTable = R"sql(
CREATE TABLE IF NOT EXISTS forq_manager_owner(
  id INTEGER PRIMARY KEY CHECK (id = 1),
  node_id TEXT NOT NULL,
  address TEXT NOT NULL,
  term BIGINT NOT NULL,
  since TIMESTAMPTZ NOT NULL))sql";

std::string PgMessage(PGconn* conn, const PGresult* res) {
  const char* m = res != nullptr ? PQresultErrorMessage(res) : "";
  if (m == nullptr || *m == '\0') m = PQerrorMessage(conn);
  return std::string(absl::StripTrailingAsciiWhitespace(m));
}

}  // namespace

// The election's own connection: every statement bounded by a timeout, so
// an owner that lost the database notices within lease/3.
class ManagerOwnerElection::Session {
 public:
  static absl::StatusOr<std::unique_ptr<Session>> Connect(
      const std::string& uri, absl::Duration lease) {
    const char* keys[] = {
        "connect_timeout",  "keepalives_idle", "keepalives_interval",
        "keepalives_count", "dbname",          nullptr};
    const char* values[] = {"5", "5", "1", "3", uri.c_str(), nullptr};
    std::unique_ptr<Session> s(
        new Session(PQconnectdbParams(keys, values, /*expand_dbname=*/1)));
    if (PQstatus(s->conn_) != CONNECTION_OK) {
      return absl::UnavailableError(absl::StrCat(
          "manager owner election: connect: ", PgMessage(s->conn_, nullptr)));
    }
    PQsetNoticeProcessor(
        s->conn_, [](void*, const char*) {}, nullptr);
    // The server notices a vanished owner (host down, cable cut) after
    // about lease/2 + 2 s of silence and drops its lock then; the owner
    // has stopped serving by lease/3.
    const int64_t idle_s =
        std::max<int64_t>(1, absl::ToInt64Seconds(lease / 2));
    for (const std::string& set :
         {absl::StrCat("SET tcp_keepalives_idle = ", idle_s),
          std::string("SET tcp_keepalives_interval = 1"),
          std::string("SET tcp_keepalives_count = 2"),
          absl::StrCat(
              "SET tcp_user_timeout = ",
              std::max<int64_t>(1000, absl::ToInt64Milliseconds(lease / 2)))}) {
      absl::StatusOr<std::vector<std::string>> r =
          s->Query(set, {}, absl::Seconds(5));
      if (!r.ok()) return r.status();
    }
    return s;
  }

  ~Session() { PQfinish(conn_); }
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Runs `sql` (text parameters $1..) and returns the first row of the
  // last result (empty if none). DeadlineExceeded after `timeout`: the
  // session must then be dropped.
  absl::StatusOr<std::vector<std::string>> Query(
      const std::string& sql, const std::vector<std::string>& params,
      absl::Duration timeout) {
    std::vector<const char*> values;
    values.reserve(params.size());
    for (const std::string& p : params) values.push_back(p.c_str());
    const int sent =
        params.empty()
            ? PQsendQuery(conn_, sql.c_str())
            : PQsendQueryParams(conn_, sql.c_str(),
                                static_cast<int>(params.size()), nullptr,
                                values.data(), nullptr, nullptr, 0);
    if (sent != 1) {
      return absl::UnavailableError(
          absl::StrCat("manager owner election: ", PgMessage(conn_, nullptr)));
    }
    const absl::Time give_up = absl::Now() + timeout;
    while (true) {
      const int flushed = PQflush(conn_);
      if (flushed < 0) break;
      if (!PQconsumeInput(conn_)) break;
      if (flushed == 0 && !PQisBusy(conn_)) break;
      const absl::Duration left = give_up - absl::Now();
      if (left <= absl::ZeroDuration()) {
        return absl::DeadlineExceededError(absl::StrCat(
            "manager owner election: no answer from the database within ",
            absl::FormatDuration(timeout)));
      }
      pollfd p{PQsocket(conn_),
               static_cast<short>(POLLIN | (flushed ? POLLOUT : 0)), 0};
      (void)poll(&p, 1,
                 static_cast<int>(
                     std::max<int64_t>(1, absl::ToInt64Milliseconds(left))));
    }
    absl::Status error;
    std::vector<std::string> row;
    bool got_result = false;
    while (PGresult* res = PQgetResult(conn_)) {
      got_result = true;
      const ExecStatusType st = PQresultStatus(res);
      if (st == PGRES_TUPLES_OK) {
        row.clear();
        if (PQntuples(res) > 0) {
          for (int c = 0; c < PQnfields(res); ++c) {
            row.emplace_back(PQgetvalue(res, 0, c), PQgetlength(res, 0, c));
          }
        }
      } else if (st != PGRES_COMMAND_OK && error.ok()) {
        error = absl::UnavailableError(
            absl::StrCat("manager owner election: ", PgMessage(conn_, res)));
      }
      PQclear(res);
    }
    if (!got_result || PQstatus(conn_) != CONNECTION_OK) {
      return absl::UnavailableError(
          absl::StrCat("manager owner election: connection lost: ",
                       PgMessage(conn_, nullptr)));
    }
    if (!error.ok()) return error;
    return row;
  }

 private:
  explicit Session(PGconn* conn) : conn_(conn) {}
  PGconn* const conn_;
};

absl::StatusOr<std::unique_ptr<ManagerOwnerElection>>
ManagerOwnerElection::Start(ManagerOwnerOptions options,
                            ManagerOwnerCallbacks callbacks) {
  {
    absl::StatusOr<std::unique_ptr<Session>> s =
        Session::Connect(options.uri, options.lease);
    if (!s.ok()) return s.status();
    absl::StatusOr<std::vector<std::string>> r =
        (*s)->Query(absl::StrCat("BEGIN; SELECT pg_advisory_xact_lock(",
                                 kSchemaLock, "); ", kCreateTable, "; COMMIT"),
                    {}, absl::Seconds(30));
    if (!r.ok()) {
      (void)(*s)->Query("ROLLBACK", {}, absl::Seconds(5));
      return r.status();
    }
  }
  std::unique_ptr<ManagerOwnerElection> e(
      new ManagerOwnerElection(std::move(options), std::move(callbacks)));
  e->thread_ = std::thread([p = e.get()] { p->Loop(); });
  return e;
}

ManagerOwnerElection::ManagerOwnerElection(ManagerOwnerOptions options,
                                           ManagerOwnerCallbacks callbacks)
    : options_(std::move(options)), callbacks_(std::move(callbacks)) {}

ManagerOwnerElection::~ManagerOwnerElection() { Stop(); }

void ManagerOwnerElection::Stop() {
  {
    MutexLock lock(&mu_);
    stop_ = true;
    wake_.SignalAll();
  }
  if (thread_.joinable()) thread_.join();
}

void ManagerOwnerElection::Refresh() {
  MutexLock lock(&mu_);
  refresh_ = true;
  wake_.SignalAll();
}

bool ManagerOwnerElection::owner() const {
  MutexLock lock(&mu_);
  return owner_;
}

void ManagerOwnerElection::SetOwner(bool owner) {
  MutexLock lock(&mu_);
  owner_ = owner;
  if (owner) {
    last_confirmed_ = absl::Now();
  } else {
    // Whoever owns it next is reported afresh.
    followed_once_ = false;
  }
}

bool ManagerOwnerElection::Round(Session& s) {
  const absl::Duration check = std::max(options_.lease / 3, options_.poll);
  if (owner()) {
    // The lock is the session's: as long as the session answers, this
    // node still holds it.
    absl::StatusOr<std::vector<std::string>> r = s.Query("SELECT 1", {}, check);
    if (!r.ok()) {
      spdlog::error("manager: node {} lost its Manager ownership: {}",
                    options_.node_id, r.status().ToString());
      return false;
    }
    MutexLock lock(&mu_);
    last_confirmed_ = absl::Now();
    return true;
  }
  absl::StatusOr<std::vector<std::string>> got = s.Query(
      absl::StrCat("SELECT pg_try_advisory_lock(", kOwnerLock, ")::text"), {},
      check);
  if (!got.ok()) return false;
  if (!got->empty() && (*got)[0] == "true") {
    absl::Status loaded = callbacks_.acquired();
    if (!loaded.ok()) {
      spdlog::error("manager: node {} cannot take over the Manager: {}",
                    options_.node_id, loaded.ToString());
      absl::StatusOr<std::vector<std::string>> r =
          s.Query(absl::StrCat("SELECT pg_advisory_unlock(", kOwnerLock, ")"),
                  {}, check);
      return r.ok();
    }
    absl::StatusOr<std::vector<std::string>> term = s.Query(
        "INSERT INTO forq_manager_owner(id, node_id, address, term, since) "
        "VALUES (1, $1, $2, 1, now()) ON CONFLICT (id) DO UPDATE SET "
        "node_id = EXCLUDED.node_id, address = EXCLUDED.address, "
        "term = forq_manager_owner.term + 1, since = now() RETURNING term",
        {options_.node_id, options_.address}, check);
    SetOwner(true);
    if (!term.ok()) {
      // Followers cannot find this node: give the lock up (by dropping
      // the session) and let the next round try again.
      spdlog::error("manager: cannot publish the Manager owner: {}",
                    term.status().ToString());
      return false;
    }
    spdlog::info("manager: node {} owns the Manager objects (term {}, {})",
                 options_.node_id, term->empty() ? "?" : (*term)[0],
                 options_.address);
    return true;
  }
  absl::StatusOr<std::vector<std::string>> row =
      s.Query("SELECT node_id, address FROM forq_manager_owner WHERE id = 1",
              {}, check);
  if (!row.ok()) return false;
  std::string node = row->size() == 2 ? (*row)[0] : "";
  std::string address = row->size() == 2 ? (*row)[1] : "";
  {
    MutexLock lock(&mu_);
    const std::string key = absl::StrCat(node, "\n", address);
    if (followed_once_ && followed_ == key) return true;
    followed_once_ = true;
    followed_ = key;
  }
  spdlog::info("manager: node {} forwards Manager calls to node {} at {}",
               options_.node_id, node.empty() ? "(none)" : node,
               address.empty() ? "(none)" : address);
  callbacks_.follow(node, address);
  return true;
}

void ManagerOwnerElection::Loop() {
  std::unique_ptr<Session> session;
  while (true) {
    {
      MutexLock lock(&mu_);
      if (stop_) break;
    }
    if (session == nullptr) {
      absl::StatusOr<std::unique_ptr<Session>> s =
          Session::Connect(options_.uri, options_.lease);
      if (s.ok()) {
        session = *std::move(s);
      } else {
        spdlog::warn("manager: {}", s.status().ToString());
      }
    }
    if (session == nullptr || !Round(*session)) {
      // A broken session has lost the lock (or soon will, on the server):
      // stop serving before anyone else can start.
      session.reset();
      if (owner()) {
        SetOwner(false);
        callbacks_.lost();
      }
    }
    MutexLock lock(&mu_);
    if (!stop_ && !refresh_) {
      wake_.WaitWithTimeout(&mu_, options_.poll);
    }
    refresh_ = false;
  }
  if (owner()) {
    SetOwner(false);
    callbacks_.lost();
    if (session != nullptr) {
      // Others stop forwarding here and take over within a poll.
      (void)session->Query(
          "UPDATE forq_manager_owner SET address = '' WHERE node_id = $1",
          {options_.node_id}, absl::Seconds(2));
      (void)session->Query(
          absl::StrCat("SELECT pg_advisory_unlock(", kOwnerLock, ")"), {},
          absl::Seconds(2));
    }
  }
}

}  // namespace forq::server
