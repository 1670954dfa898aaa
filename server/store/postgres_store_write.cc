// PostgresStore: the statements of a group commit (task inserts and
// updates as multi-row statements, fenced writes of attempts, Manager
// objects, notifications), pipelined when the group allows.
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"

#include "common/status_macros.h"
#include "server/store/postgres_internal.h"
#include "server/store/task_record.h"

#include <libpq-fe.h>

namespace forq::server {
namespace postgres_internal {
namespace {

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

}  // namespace

const std::string kUpdateBulk = absl::StrCat(
    "UPDATE tasks AS t SET ", kUpdateColumns,
    ", owner_node = NULL, owner_incarnation = NULL, lease_until = NULL",
    kUpdateFrom);

}  // namespace postgres_internal

namespace {

using postgres_internal::AffectedRows;
using postgres_internal::ArrayParam;
using postgres_internal::DelayMicros;
using postgres_internal::kUpdateBulk;
using postgres_internal::kUpdateColumns;
using postgres_internal::kUpdateFrom;
using postgres_internal::OptionalInt;
using postgres_internal::Param;
using postgres_internal::ParseTask;
using postgres_internal::Result;
using postgres_internal::TextValue;
using store_internal::ExpiresAtMicros;
using store_internal::FinishedAtMicros;

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
// One statement for every notification of a transaction.
const std::string kNotify =
    "SELECT pg_notify(c, p) FROM unnest($1::text[], $2::text[]) AS u(c, p)";
const std::string kPutObject =
    "INSERT INTO objects(name, data) VALUES($1, $2) ON CONFLICT (name) DO "
    "UPDATE SET data = excluded.data";
const std::string kDeleteObject = "DELETE FROM objects WHERE name = $1";

}  // namespace

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

}  // namespace forq::server
