// Scheduler: accepting tasks (checks, admission, the insert or the
// deferred write) and dropping those whose insert failed.

#include <atomic>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "spdlog/spdlog.h"

#include "server/scheduler/scheduler.h"
#include "server/scheduler/task_proto.h"

namespace forq::server {

namespace {

bool ValidName(absl::string_view s, size_t max_len) {
  if (s.empty() || s.size() > max_len) return false;
  for (char c : s) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' ||
          c == ':' || c == '-')) {
      return false;
    }
  }
  return true;
}

// At most 32 labels, keys of 1-64 bytes, values up to 256.
absl::Status CheckLabels(const v1::TaskSpec& spec) {
  if (spec.labels_size() > 32) {
    return absl::InvalidArgumentError("more than 32 labels");
  }
  for (const auto& [k, v] : spec.labels()) {
    if (k.empty() || k.size() > 64 || v.size() > 256) {
      return absl::InvalidArgumentError(absl::StrCat(
          "label '", k.substr(0, 64),
          "' is invalid: keys 1-64 bytes, values up to 256 bytes"));
    }
  }
  return absl::OkStatus();
}

// Every accepted id of `ids` becomes `why`.
void Refuse(std::vector<absl::StatusOr<std::string>>& ids,
            const absl::Status& why) {
  for (absl::StatusOr<std::string>& id : ids) {
    if (id.ok()) id = why;
  }
}

}  // namespace

void Scheduler::QueuedLocked(const std::map<std::string, int64_t>& adding,
                             Deferred& d) {
  for (const auto& [queue, n] : adding) {
    metrics_.TaskSubmitted(queue, static_cast<int>(n));
  }
  DispatchLocked(clock_.Now(), d);
  if (!delayed_.empty()) WakeAtLocked(delayed_.begin()->first);
}

absl::Status Scheduler::CheckKind(const std::string& kind) const {
  if (!ValidName(kind, 128)) {
    return absl::InvalidArgumentError(
        absl::StrCat("task kind '", kind.substr(0, 128),
                     "' is invalid: want 1-128 characters of [A-Za-z0-9_.:-]"));
  }
  if (RunsKind(kind)) return absl::OkStatus();
  if (work_source_ == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown task kind '", kind,
                     "'; known kinds: ", absl::StrJoin(kinds_, ", ")));
  }
  // A cluster node takes a kind another live node runs, for it.
  if (work_source_->OtherNodeRuns(kind)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown task kind '", kind,
      "': no live node of the cluster runs it; this node's kinds: ",
      absl::StrJoin(kinds_, ", ")));
}

absl::StatusOr<v1::Task> Scheduler::BuildTask(v1::TaskSpec spec,
                                              absl::Time now) {
  if (absl::Status s = CheckKind(spec.kind()); !s.ok()) return s;
  if (spec.queue().empty()) spec.set_queue("default");
  if (!ValidName(spec.queue(), 64)) {
    return absl::InvalidArgumentError(
        absl::StrCat("queue name '", spec.queue().substr(0, 64),
                     "' is invalid: want 1-64 characters of [A-Za-z0-9_.:-]"));
  }
  if (spec.priority() < -1000 || spec.priority() > 1000) {
    return absl::InvalidArgumentError(absl::StrCat(
        "priority ", spec.priority(), " is out of range [-1000, 1000]"));
  }
  if (!spec.payload_text().empty()) {
    if (!spec.payload().empty()) {
      return absl::InvalidArgumentError(
          "set either payload or payload_text, not both");
    }
    spec.set_payload(std::move(*spec.mutable_payload_text()));
  }
  if (spec.payload().size() > options_.max_payload_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "payload is ", spec.payload().size(), " bytes; the limit is ",
        options_.max_payload_bytes, " bytes (--max_payload_bytes)"));
  }
  int max_attempts = spec.max_attempts();
  if (max_attempts == 0) max_attempts = options_.default_max_attempts;
  if (max_attempts < 0 || max_attempts > options_.max_max_attempts) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_attempts ", spec.max_attempts(),
                     " is out of range [1, ", options_.max_max_attempts, "]"));
  }
  absl::Duration timeout = FromProto(spec.timeout());
  if (timeout < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("timeout must not be negative");
  }
  if (timeout == absl::ZeroDuration()) timeout = options_.default_timeout;
  absl::Duration delay = FromProto(spec.delay());
  if (delay < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("delay must not be negative");
  }
  absl::Duration ttl = FromProto(spec.result_ttl());
  if (ttl < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("result_ttl must not be negative");
  }
  if (ttl == absl::ZeroDuration()) ttl = options_.default_result_ttl;
  if (spec.idempotency_key().size() > 256) {
    return absl::InvalidArgumentError(
        "idempotency_key is longer than 256 bytes");
  }
  if (absl::Status s = CheckLabels(spec); !s.ok()) return s;

  v1::Task t;
  t.set_id(NewTaskId());
  t.set_queue(spec.queue());
  t.set_kind(spec.kind());
  t.set_payload(std::move(*spec.mutable_payload()));
  t.set_priority(spec.priority());
  t.set_max_attempts(max_attempts);
  *t.mutable_timeout() = ToProto(timeout);
  t.set_state(v1::QUEUED);
  *t.mutable_created_at() = ToProto(now);
  if (spec.has_not_before()) {
    *t.mutable_not_before() = spec.not_before();
  } else if (delay > absl::ZeroDuration()) {
    *t.mutable_not_before() = ToProto(now + delay);
  }
  t.set_idempotency_key(spec.idempotency_key());
  *t.mutable_result_ttl() = ToProto(ttl);
  *t.mutable_labels() = spec.labels();
  return t;
}

absl::StatusOr<std::vector<v1::Task>> Scheduler::BuildTasks(
    std::vector<v1::TaskSpec> specs) {
  if (specs.empty()) return absl::InvalidArgumentError("no tasks given");
  if (specs.size() > options_.max_batch) {
    return absl::InvalidArgumentError(absl::StrCat("batch of ", specs.size(),
                                                   " tasks; the limit is ",
                                                   options_.max_batch));
  }
  const absl::Time now = clock_.Now();
  std::vector<v1::Task> tasks;
  tasks.reserve(specs.size());
  for (size_t i = 0; i < specs.size(); ++i) {
    absl::StatusOr<v1::Task> t = BuildTask(std::move(specs[i]), now);
    if (!t.ok()) {
      std::string msg(t.status().message());
      if (specs.size() > 1) msg = absl::StrCat("task ", i, ": ", msg);
      return absl::Status(t.status().code(), msg);
    }
    tasks.push_back(std::move(*t));
  }
  return tasks;
}

absl::Status Scheduler::AdmitLocked(
    const std::map<std::string, int64_t>& adding) {
  if (!accepting_) {
    return absl::UnavailableError(
        "forqd is shutting down; not accepting tasks");
  }
  for (const auto& [queue, n] : adding) {
    int64_t have = queued_by_queue_[queue];
    if (have + n > options_.max_queued) {
      return absl::ResourceExhaustedError(
          absl::StrCat("queue '", queue, "' is full (", have, " queued, limit ",
                       options_.max_queued, "); retry later"));
    }
  }
  return absl::OkStatus();
}

void Scheduler::Submit(std::vector<v1::TaskSpec> specs, SubmitDone done,
                       Ack ack) {
  absl::StatusOr<std::vector<v1::Task>> built = BuildTasks(std::move(specs));
  if (!built.ok()) {
    done(built.status());
    return;
  }
  std::vector<v1::Task>& tasks = *built;
  std::map<std::string, int64_t> adding;
  bool keyed = false;
  for (const v1::Task& t : tasks) {
    ++adding[t.queue()];
    keyed = keyed || !t.idempotency_key().empty();
  }
  if (keyed) {
    absl::Status admitted;
    {
      MutexLock lock(&mu_);
      admitted = AdmitLocked(adding);
    }
    if (!admitted.ok()) {
      done(std::move(admitted));
      return;
    }
    InsertKeyed(std::move(tasks), std::move(done));
    return;
  }
  // Deferred: answered at once, with the ids (after the lock).
  SubmitDone answer_now;
  std::vector<InsertResult> accepted;
  Deferred d;
  {
    MutexLock lock(&mu_);
    if (absl::Status admitted = AdmitLocked(adding); !admitted.ok()) {
      done(std::move(admitted));
      return;
    }
    if (work_source_ != nullptr) {
      SubmitClusterLocked(std::move(tasks), std::move(done), d);
    } else {
      if (ack == Ack::kDeferred) {
        answer_now = std::move(done);
        accepted = QueueDeferredLocked(std::move(tasks), d);
      } else {
        QueueAndInsertLocked(std::move(tasks), std::move(done), d);
      }
      QueuedLocked(adding, d);
    }
  }
  d.Run();
  if (answer_now) answer_now(std::move(accepted));
}

// The tasks are queued (and may run) while their insert commits: the
// insert is queued first, under mu_, so every later write of them
// (RUNNING, terminal) follows it, and the store turns an insert and the
// updates that reach the same group commit into one row. Nothing is
// announced before it is durable: the acknowledgement waits for the
// insert, a terminal state for its own write.
void Scheduler::QueueAndInsertLocked(std::vector<v1::Task> tasks,
                                     SubmitDone done, Deferred& d) {
  const absl::Time now = clock_.Now();
  std::vector<std::string> ids;
  ids.reserve(tasks.size());
  for (const v1::Task& t : tasks) {
    Entry& e = tasks_[t.id()];
    e.task = t;
    ids.push_back(t.id());
    EnqueueLocked(e, now);
    EmitLocked(e.task, v1::TaskEvent::STATE, d);
  }
  store_.Insert(std::move(tasks),
                [this, ids = std::move(ids), done = std::move(done)](
                    absl::StatusOr<std::vector<InsertResult>> results) {
                  if (!results.ok()) Abandon(ids);
                  done(std::move(results));
                });
}

// Deferred tasks skip the insert: their first write is normally the
// terminal one (QueueFinishLocked), else InsertDeferredLocked's. The task
// lives only here until written; the submitter gets its id.
std::vector<InsertResult> Scheduler::QueueDeferredLocked(
    std::vector<v1::Task> tasks, Deferred& d,
    const std::shared_ptr<ResultSink>& sink,
    const std::vector<uint64_t>& tags) {
  const absl::Time now = clock_.Now();
  std::vector<InsertResult> accepted;
  accepted.reserve(tasks.size());
  for (size_t i = 0; i < tasks.size(); ++i) {
    v1::Task& t = tasks[i];
    Entry& e = tasks_[t.id()];
    e.stored = false;
    e.answered_by_result = true;
    if (sink != nullptr) {
      e.sink = sink;
      e.sink_tag = tags[i];
    }
    deferred_.emplace_back(now, t.id());
    accepted.emplace_back().task.set_id(t.id());
    e.task = std::move(t);
    EnqueueLocked(e, now);
    EmitLocked(e.task, v1::TaskEvent::STATE, d);
  }
  if (deferred_.size() == tasks.size()) {
    WakeAtLocked(now + options_.deferred_insert_limit);
  }
  return accepted;
}

void Scheduler::SubmitForResults(std::vector<v1::TaskSpec> specs,
                                 std::shared_ptr<ResultSink> sink,
                                 uint64_t first_tag, AcceptedFn accepted) {
  const absl::Time now = clock_.Now();
  std::vector<absl::StatusOr<std::string>> ids;
  ids.reserve(specs.size());
  std::vector<v1::Task> tasks;
  tasks.reserve(specs.size());
  std::vector<uint64_t> tags;
  tags.reserve(specs.size());
  std::map<std::string, int64_t> adding;
  for (size_t i = 0; i < specs.size(); ++i) {
    absl::StatusOr<v1::Task> t = BuildTask(std::move(specs[i]), now);
    if (!t.ok()) {
      ids.emplace_back(t.status());
      continue;
    }
    ids.emplace_back(t->id());
    ++adding[t->queue()];
    tags.push_back(first_tag + i);
    tasks.push_back(std::move(*t));
  }
  if (tasks.empty()) {
    accepted(std::move(ids));
    return;
  }
  Deferred d;
  {
    MutexLock lock(&mu_);
    if (absl::Status admitted = AdmitLocked(adding); !admitted.ok()) {
      Refuse(ids, admitted);
    } else if (work_source_ != nullptr) {
      SubmitClusterLocked(
          std::move(tasks),
          [this, sink = std::move(sink), tags = std::move(tags), ids,
           accepted](absl::StatusOr<std::vector<InsertResult>> r) mutable {
            if (!r.ok()) {
              Refuse(ids, r.status());
            } else {
              for (size_t i = 0; i < r->size(); ++i) {
                WaitForSink((*r)[i].task.id(), sink, tags[i]);
              }
            }
            accepted(std::move(ids));
          },
          d);
      accepted = nullptr;
    } else {
      QueueDeferredLocked(std::move(tasks), d, sink, tags);
      QueuedLocked(adding, d);
    }
  }
  d.Run();
  if (accepted) accepted(std::move(ids));
}

void Scheduler::WaitForSink(const std::string& id,
                            std::shared_ptr<ResultSink> sink, uint64_t tag) {
  // The longest wait the scheduler holds; one that ends non-terminal is
  // renewed.
  Wait(id, options_.max_wait,
       [this, id, sink = std::move(sink), tag](absl::StatusOr<v1::Task> t,
                                               bool terminal) mutable {
         if (t.ok() && !terminal) {
           WaitForSink(id, std::move(sink), tag);
           return;
         }
         std::vector<ResultSink::Result> results;
         results.emplace_back(tag, std::move(t));
         sink->OnResults(std::move(results));
       });
}

void Scheduler::FailSinks(const std::vector<Entry*>& entries,
                          const absl::Status& why, Deferred& d) {
  SinkBatch batch;
  for (Entry* e : entries) {
    if (e->sink != nullptr) batch.Add(std::move(e->sink), e->sink_tag, why);
  }
  batch.MoveTo(d);
}

void Scheduler::SinkBatch::Add(std::shared_ptr<ResultSink> sink, uint64_t tag,
                               absl::StatusOr<v1::Task> result) {
  if (by_sink_.empty() || by_sink_.back().first != sink) {
    for (auto& [s, results] : by_sink_) {
      if (s == sink) {
        results.emplace_back(tag, std::move(result));
        return;
      }
    }
    by_sink_.emplace_back(std::move(sink), std::vector<ResultSink::Result>());
  }
  by_sink_.back().second.emplace_back(tag, std::move(result));
}

void Scheduler::SinkBatch::MoveTo(Deferred& d) {
  for (auto& [sink, results] : by_sink_) {
    d.Add([sink = std::move(sink), results = std::move(results)]() mutable {
      sink->OnResults(std::move(results));
    });
  }
  by_sink_.clear();
}

// With idempotency keys the store decides which tasks are new: they are
// queued once it answered. In cluster mode every node claims them from the
// store (its commit notifies them).
void Scheduler::InsertKeyed(std::vector<v1::Task> tasks, SubmitDone done) {
  store_.Insert(std::move(tasks),
                [this, done = std::move(done)](
                    absl::StatusOr<std::vector<InsertResult>> results) {
                  if (!results.ok()) {
                    done(results.status());
                    return;
                  }
                  if (work_source_ != nullptr) {
                    for (const InsertResult& r : *results) {
                      if (!r.existing) metrics_.TaskSubmitted(r.task.queue());
                    }
                    done(std::move(results));
                    return;
                  }
                  Deferred d;
                  {
                    MutexLock lock(&mu_);
                    const absl::Time now = clock_.Now();
                    for (const InsertResult& r : *results) {
                      if (r.existing) continue;
                      Entry& e = tasks_[r.task.id()];
                      e.task = r.task;
                      EnqueueLocked(e, now);
                      metrics_.TaskSubmitted(r.task.queue());
                      EmitLocked(e.task, v1::TaskEvent::STATE, d);
                    }
                    DispatchLocked(now, d);
                    if (!delayed_.empty()) {
                      WakeAtLocked(delayed_.begin()->first);
                    }
                  }
                  d.Run();
                  done(std::move(results));
                });
}

void Scheduler::Abandon(const std::vector<std::string>& ids) {
  // May run on Submit's thread with mu_ held (a closed store refuses at
  // once), so the scheduler's thread does the work (RunDueLocked).
  MutexLock lock(&abandon_mu_);
  abandoned_.insert(abandoned_.end(), ids.begin(), ids.end());
  abandon_pending_.store(true, std::memory_order_release);
}

void Scheduler::DropAbandonedLocked(Deferred& d) {
  std::vector<std::string> ids;
  {
    MutexLock lock(&abandon_mu_);
    ids.swap(abandoned_);
    abandon_pending_.store(false, std::memory_order_relaxed);
  }
  for (const std::string& id : ids) {
    auto it = tasks_.find(id);
    if (it == tasks_.end()) continue;
    const absl::Status dropped = absl::UnavailableError(absl::StrCat(
        "task ", id, " was dropped: the store refused its insert"));
    for (WaitDone& done : waits_.TakeTask(id)) {
      d.Add([done = std::move(done), dropped] { done(dropped, false); });
    }
    Entry& e = it->second;
    FailSinks({&e}, dropped, d);
    if (e.task.state() == v1::QUEUED) {
      RemoveQueuedLocked(e);
      tasks_.erase(it);
    } else {
      // Running: its outcome is dropped (OnOutcome), never written.
      e.abandoned = true;
    }
  }
  if (!ids.empty()) {
    spdlog::warn("{} submitted tasks dropped: their insert failed", ids.size());
  }
}

}  // namespace forq::server
