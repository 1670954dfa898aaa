// PostgresStore in cluster mode: claims, leases (heartbeat, self-fence,
// reaper of expired leases) and cancels through a node that does not hold
// the task.
#include <algorithm>
#include <cmath>

#include "absl/cleanup/cleanup.h"
#include "absl/container/flat_hash_map.h"
#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "spdlog/spdlog.h"

#include "common/status_macros.h"
#include "server/store/postgres_internal.h"
#include "server/store/task_record.h"

#include <libpq-fe.h>

namespace forq::server {

namespace {

using postgres_internal::ArrayParam;
using postgres_internal::DelayMicros;
using postgres_internal::IntValue;
using postgres_internal::kUpdateBulk;
using postgres_internal::OptionalInt;
using postgres_internal::Param;
using postgres_internal::ParseTask;
using postgres_internal::Result;
using postgres_internal::TaskFromRow;
using postgres_internal::TextArrayOrNull;
using postgres_internal::TextValue;
using store_internal::ExpiresAtMicros;
using store_internal::FinishedAtMicros;

// $1 node, $2 incarnation, $3 lease in microseconds, $4 how many, $5 the
// kinds the node runs (NULL: any). Rows of other kinds are passed over
// without a lock.
const std::string kClaim =
    "UPDATE tasks AS t SET state = 2, attempt = t.attempt + 1, owner_node = "
    "$1, owner_incarnation = $2::int8, lease_until = now() + $3::int8 * "
    "interval '1 microsecond' FROM (SELECT id FROM tasks WHERE state = 1 AND "
    "(not_before IS NULL OR not_before <= now()) AND ($5::text[] IS NULL OR "
    "kind = ANY($5::text[])) ORDER BY priority DESC, id FOR UPDATE SKIP "
    "LOCKED LIMIT $4) AS c WHERE t.id = c.id RETURNING t.data, "
    "t.attempt::text";
// Extends the leases of the node's RUNNING attempts that expire within
// 2/3 of a lease and returns them all. A lease it skips outlasts both the
// next heartbeat (lease/3 away) and the node's self-fence (lease/2 after
// its last heartbeat), so attempts held for less than lease/3 (most) are
// never written by a heartbeat.
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
    "= $2::int8 AND state = 2 AND lease_until < now() + $3::int8 * 2 / 3 * "
    "interval '1 microsecond' FOR UPDATE SKIP LOCKED)) SELECT id, "
    "attempt::text, cancel_requested::int::text FROM tasks WHERE "
    "owner_incarnation = $2::int8 AND state = 2";
const std::string kReapSelect =
    "SELECT id, data, attempt::text, COALESCE(owner_node, '') FROM tasks "
    "WHERE state = 2 AND lease_until < now() ORDER BY lease_until LIMIT 500 "
    "FOR UPDATE SKIP LOCKED";
const std::string kLostEvents =
    "INSERT INTO task_events(task_id, attempt, state, node_id, reason) "
    "SELECT * FROM unnest($1::text[], $2::int4[], $3::int4[], $4::text[], "
    "$5::text[])";
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

// Retry backoff: base * 2^(attempt-1), capped, +-25% jitter.
absl::Duration LostBackoff(const ClusterOptions& o, int attempt) {
  thread_local absl::BitGen gen;
  double base = absl::ToDoubleSeconds(o.backoff_base) *
                std::pow(2.0, std::max(0, attempt - 1));
  base = std::min(base, absl::ToDoubleSeconds(o.backoff_max));
  return absl::Seconds(base * absl::Uniform(gen, 0.75, 1.25));
}

}  // namespace

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
  Param kind_param = Param::Null();
  {
    MutexLock kinds(&kinds_mu_);
    kind_param = TextArrayOrNull(kinds_);
  }
  FORQ_ASSIGN_OR_RETURN(
      Result res,
      claim_conn_->Run("claim", kClaim,
                       {Param::Text(node_id_), Param::Int(inc),
                        Param::Int(absl::ToInt64Microseconds(cluster_.lease)),
                        Param::Int(n), std::move(kind_param)},
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
  if (!CountOtherNodes(*upkeep_conn_).ok()) {
    alone_.store(false, std::memory_order_release);
  }
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

}  // namespace forq::server
