#include "server/scheduler/scheduler.h"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <optional>
#include <random>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "spdlog/spdlog.h"

#include "common/notification.h"
#include "server/scheduler/task_proto.h"

namespace forq::server {
namespace {

absl::Status AlreadyFinished(absl::string_view id, v1::TaskState state) {
  return absl::FailedPreconditionError(
      absl::StrCat("task ", id, " is already ", v1::TaskState_Name(state)));
}

absl::Status NotRetryable(absl::string_view id, v1::TaskState state) {
  return absl::FailedPreconditionError(
      absl::StrCat("task ", id, " is ", v1::TaskState_Name(state),
                   "; only DEAD, FAILED or CANCELLED tasks can be retried"));
}

std::string StateLabel(v1::TaskState s) {
  std::string name = v1::TaskState_Name(s);
  for (char& c : name) c = static_cast<char>(std::tolower(c));
  return name;
}

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

// Handler errors with these codes describe the input, so retrying cannot
// help: the task ends FAILED at once.
bool IsPermanent(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kUnimplemented:
    case absl::StatusCode::kPermissionDenied:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kAlreadyExists:
      return true;
    default:
      return false;
  }
}

void SetError(v1::Task& t, absl::StatusCode code, absl::string_view message,
              v1::FailureReason reason, int signal = 0) {
  v1::TaskError* e = t.mutable_error();
  e->set_code(static_cast<int>(code));
  e->set_message(std::string(message));
  e->set_reason(reason);
  e->set_signal(signal);
}

std::string OutcomeLabel(worker::OutcomeKind k) {
  switch (k) {
    case worker::OutcomeKind::kSucceeded:
      return "succeeded";
    case worker::OutcomeKind::kHandlerError:
    case worker::OutcomeKind::kUnknownKind:
      return "error";
    case worker::OutcomeKind::kTimeout:
      return "timeout";
    case worker::OutcomeKind::kSignaled:
      return "signaled";
    case worker::OutcomeKind::kOutOfMemory:
      return "oom";
    case worker::OutcomeKind::kCancelled:
      return "cancelled";
    case worker::OutcomeKind::kRevoked:
      return "revoked";
    default:
      return "lost";
  }
}

// Runs `write` (a store call, given the callback that ends it) and waits
// for its status: for the writes of start-up and shutdown.
absl::Status AwaitWrite(
    const std::function<void(std::function<void(absl::Status)>)>& write) {
  Notification persisted;
  absl::Status status;
  write([&](absl::Status s) {
    status = std::move(s);
    persisted.Notify();
  });
  persisted.WaitForNotification();
  return status;
}

// Writes the end of an attempt into `t` (state, result or error); true when
// the failure may be retried (the caller decides whether attempts remain).
// kRevoked never gets here.
bool RecordOutcome(v1::Task& t, worker::Outcome& o) {
  using worker::OutcomeKind;
  bool retryable = false;
  switch (o.kind) {
    case OutcomeKind::kSucceeded:
      t.set_state(v1::SUCCEEDED);
      t.set_result(std::move(o.result));
      t.clear_error();
      t.set_progress(1.0);
      break;
    case OutcomeKind::kHandlerError:
      SetError(t, o.status.code(), o.status.message(), v1::HANDLER_ERROR);
      if (o.status.code() == absl::StatusCode::kCancelled &&
          t.cancel_requested()) {
        t.set_state(v1::CANCELLED);
      } else if (IsPermanent(o.status.code())) {
        t.set_state(v1::FAILED);
      } else {
        retryable = true;
      }
      break;
    case OutcomeKind::kUnknownKind:
      SetError(t, absl::StatusCode::kInvalidArgument,
               absl::StrCat("no handler for kind '", t.kind(), "'"),
               v1::UNKNOWN_KIND);
      t.set_state(v1::FAILED);
      break;
    case OutcomeKind::kCancelled:
      SetError(t, absl::StatusCode::kCancelled, "cancelled while running",
               v1::CANCELLED_WHILE_RUNNING);
      t.set_state(v1::CANCELLED);
      break;
    case OutcomeKind::kTimeout:
      SetError(t, absl::StatusCode::kDeadlineExceeded,
               absl::StrCat("attempt ran past its timeout of ",
                            absl::FormatDuration(FromProto(t.timeout()))),
               v1::TIMEOUT);
      retryable = true;
      break;
    case OutcomeKind::kSignaled:
      SetError(t, absl::StatusCode::kAborted,
               absl::StrCat("worker ", o.worker_pid, " died from signal ",
                            o.signal, " (", strsignal(o.signal), ")"),
               v1::SIGNALED, o.signal);
      retryable = true;
      break;
    case OutcomeKind::kOutOfMemory:
      SetError(t, absl::StatusCode::kResourceExhausted,
               "worker exceeded its memory limit", v1::OUT_OF_MEMORY);
      retryable = true;
      break;
    case OutcomeKind::kProtocolViolation:
      SetError(
          t, absl::StatusCode::kInternal,
          absl::StrCat("worker broke the pool protocol: ", o.status.message()),
          v1::PROTOCOL_VIOLATION);
      retryable = true;
      break;
    case OutcomeKind::kWorkerLost:
    case OutcomeKind::kRevoked:  // handled above
      SetError(t, absl::StatusCode::kUnavailable,
               absl::StrCat("worker lost: ", o.status.message()),
               v1::WORKER_LOST);
      retryable = true;
      break;
  }
  return retryable;
}

}  // namespace

std::string NewTaskId() {
  static std::atomic<uint32_t> seq{0};
  static const uint32_t salt = std::random_device{}();
  const uint64_t ms = static_cast<uint64_t>(absl::ToUnixMillis(absl::Now()));
  const uint32_t n = seq.fetch_add(1, std::memory_order_relaxed);
  // "%012x%08x%04x" of (ms, n, salted n), written by hand: one per task.
  std::string id(24, '0');
  auto put = [&id](size_t end, size_t digits, uint64_t v) {
    static constexpr char kHex[] = "0123456789abcdef";
    for (size_t i = 0; i < digits; ++i, v >>= 4) id[end - i - 1] = kHex[v & 15];
  };
  put(12, 12, ms);
  put(20, 8, n);
  put(24, 4, salt ^ (n * 2654435761u));
  return id;
}

Scheduler::Scheduler(SchedulerOptions options, Store& store,
                     worker::WorkerPool& pool, Metrics& metrics)
    : options_(std::move(options)),
      clock_(options_.clock != nullptr ? *options_.clock : Clock::Real()),
      store_(store),
      pool_(pool),
      metrics_(metrics),
      work_source_(options_.work_source) {}

Scheduler::~Scheduler() { Shutdown(absl::ZeroDuration()); }

void Scheduler::SetCallHandler(
    std::function<void(absl::string_view, std::string,
                       std::function<void(absl::StatusOr<std::string>)>)>
        handler) {
  call_handler_ = std::move(handler);
}

void Scheduler::SetPoolLostHandler(
    std::function<void(const absl::Status&)> handler) {
  pool_lost_handler_ = std::move(handler);
}

void Scheduler::SetAttemptEndHandler(
    std::function<void(absl::string_view)> handler) {
  attempt_end_handler_ = std::move(handler);
}

absl::Status Scheduler::Start() {
  for (const std::string& k : pool_.Kinds()) kinds_.insert(k);

  // Recovery: RUNNING tasks lost their worker when the previous forqd died.
  // A cluster node holds no queue; the reaper takes back lost leases.
  absl::StatusOr<std::vector<v1::Task>> unfinished =
      work_source_ != nullptr ? std::vector<v1::Task>()
                              : store_.LoadUnfinished();
  if (!unfinished.ok()) return unfinished.status();
  const absl::Time now = clock_.Now();
  std::vector<v1::Task> updates;
  int requeued = 0, dead = 0;
  {
    MutexLock lock(&mu_);
    std::sort(
        unfinished->begin(), unfinished->end(),
        [](const v1::Task& a, const v1::Task& b) { return a.id() < b.id(); });
    for (v1::Task& t : *unfinished) {
      if (t.state() == v1::RUNNING) {
        SetError(t, absl::StatusCode::kUnavailable,
                 "forqd stopped while the attempt was running",
                 v1::WORKER_LOST);
        if (t.attempt() - t.attempt_base() >= t.max_attempts()) {
          t.set_state(v1::DEAD);
          *t.mutable_finished_at() = ToProto(now);
          updates.push_back(t);
          ++dead;
          continue;
        }
        t.set_state(v1::QUEUED);
        *t.mutable_not_before() = ToProto(now);
        updates.push_back(t);
        ++requeued;
      }
      Entry& e = tasks_[t.id()];
      e.task = std::move(t);
      EnqueueLocked(e, now);
    }
  }
  if (!updates.empty()) {
    absl::Status status =
        AwaitWrite([&](std::function<void(absl::Status)> done) {
          store_.Update(updates, std::move(done));
        });
    if (!status.ok()) return status;
  }
  spdlog::info(
      "recovered {} unfinished tasks ({} lost attempts re-queued, {} dead)",
      unfinished->size(), requeued, dead);

  worker::PoolCallbacks cb;
  cb.on_outcome = [this](worker::Outcome o) { OnOutcome(std::move(o)); };
  cb.on_progress = [this](absl::string_view id, int attempt, double f,
                          absl::string_view msg) {
    OnProgress(id, attempt, f, msg);
  };
  cb.on_worker_idle = [this] { OnTurnEnd(); };
  cb.on_turn_end = [this] { OnTurnEnd(); };
  cb.on_pool_lost = [this](const absl::Status& why) {
    StopIntake();
    spdlog::critical("{}", std::string(why.message()));
    if (pool_lost_handler_) pool_lost_handler_(why);
  };
  cb.on_worker_exit = [this](const worker::WorkerExit& exit) {
    metrics_.WorkerRestart(exit.reason);
  };
  cb.on_call = [this](absl::string_view task_id, std::string request,
                      std::function<void(absl::StatusOr<std::string>)> reply) {
    if (!call_handler_) {
      reply(absl::UnimplementedError("no service answers task calls"));
      return;
    }
    call_handler_(task_id, std::move(request), std::move(reply));
  };
  absl::Status s = pool_.Start(std::move(cb));
  if (!s.ok()) return s;
  metrics_.AddRefreshHook([this] { RefreshMetrics(); });
  if (work_source_ != nullptr) {
    s = StartCluster();
    if (!s.ok()) return s;
  }
  started_ = true;
  thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "forq-scheduler");
    Loop();
  });
  return absl::OkStatus();
}

void Scheduler::Shutdown(absl::Duration grace) {
  if (shut_down_) return;
  shut_down_ = true;
  StopIntake();
  SetDraining(true);
  if (started_) {
    Notification idle;
    bool drained = false;
    WhenIdle(grace, [&](bool d) {
      drained = d;
      idle.Notify();
    });
    idle.WaitForNotification();
    if (!drained) spdlog::warn("drain period over with tasks still running");
  }
  {
    MutexLock lock(&mu_);
    stop_ = true;
    WakeLocked();
    remote_cv_.SignalAll();
  }
  if (thread_.joinable()) thread_.join();
  if (remote_thread_.joinable()) remote_thread_.join();
  if (work_source_ != nullptr) work_source_->StopCluster();
  pool_.Shutdown();

  // Interrupted by us, not by the task: back to QUEUED, no attempt used.
  // Deferred tasks never written are inserted, so they run after restart
  // like any other accepted task.
  std::vector<v1::Task> requeue, unwritten;
  std::vector<std::pair<WaitDone, absl::Status>> to_fail;
  {
    MutexLock lock(&mu_);
    for (auto& [id, e] : tasks_) {
      if (e.task.state() == v1::RUNNING && !e.finishing && !e.abandoned) {
        e.task.set_state(v1::QUEUED);
        e.task.set_attempt(e.task.attempt() - 1);
        (e.stored ? requeue : unwritten).push_back(e.task);
      } else if (work_source_ != nullptr && e.task.state() == v1::QUEUED) {
        requeue.push_back(e.task);  // claimed, never started: give back
      } else if (!e.stored && !e.finishing && !e.abandoned) {
        unwritten.push_back(e.task);
      }
    }
    deferred_.clear();
    for (WaitDone& done : waits_.TakeAll()) {
      to_fail.emplace_back(std::move(done),
                           absl::UnavailableError("forqd is shutting down"));
    }
  }
  if (!requeue.empty()) {
    absl::Status s = AwaitWrite([&](std::function<void(absl::Status)> done) {
      store_.Update(requeue, std::move(done));
    });
    if (!s.ok()) spdlog::error("re-queue at shutdown failed: {}", s.ToString());
    spdlog::info("{} running tasks re-queued for the next start",
                 requeue.size());
  }
  if (!unwritten.empty()) {
    const size_t n = unwritten.size();
    absl::Status s = AwaitWrite([&](std::function<void(absl::Status)> done) {
      store_.Insert(std::move(unwritten),
                    [done = std::move(done)](
                        absl::StatusOr<std::vector<InsertResult>> r) {
                      done(r.status());
                    });
    });
    if (!s.ok()) {
      spdlog::error("insert of {} unwritten tasks at shutdown failed: {}", n,
                    s.ToString());
    }
    spdlog::info(
        "{} accepted tasks never written (Map, Submit with wait) stored for "
        "the next start",
        n);
  }
  for (auto& [done, status] : to_fail) {
    if (done) done(status, false);
  }
}

absl::StatusOr<v1::Task> Scheduler::BuildTask(v1::TaskSpec spec,
                                              absl::Time now) {
  if (!ValidName(spec.kind(), 128)) {
    return absl::InvalidArgumentError(
        absl::StrCat("task kind '", spec.kind().substr(0, 128),
                     "' is invalid: want 1-128 characters of [A-Za-z0-9_.:-]"));
  }
  if (!kinds_.empty() && kinds_.count(spec.kind()) == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown task kind '", spec.kind(),
                     "'; known kinds: ", absl::StrJoin(kinds_, ", ")));
  }
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

void Scheduler::Submit(std::vector<v1::TaskSpec> specs, SubmitDone done,
                       Ack ack) {
  if (specs.empty()) {
    done(absl::InvalidArgumentError("no tasks given"));
    return;
  }
  if (specs.size() > options_.max_batch) {
    done(absl::InvalidArgumentError(absl::StrCat("batch of ", specs.size(),
                                                 " tasks; the limit is ",
                                                 options_.max_batch)));
    return;
  }
  const absl::Time now = clock_.Now();
  std::vector<v1::Task> tasks;
  tasks.reserve(specs.size());
  for (size_t i = 0; i < specs.size(); ++i) {
    absl::StatusOr<v1::Task> t = BuildTask(std::move(specs[i]), now);
    if (!t.ok()) {
      std::string msg(t.status().message());
      if (specs.size() > 1) msg = absl::StrCat("task ", i, ": ", msg);
      done(absl::Status(t.status().code(), msg));
      return;
    }
    tasks.push_back(std::move(*t));
  }
  bool keyed = false;
  for (const v1::Task& t : tasks) keyed = keyed || !t.idempotency_key().empty();
  const bool deferred =
      ack == Ack::kDeferred && !keyed && work_source_ == nullptr;
  std::vector<InsertResult> accepted;
  Deferred d;
  {
    MutexLock lock(&mu_);
    if (!accepting_) {
      done(absl::UnavailableError(
          "forqd is shutting down; not accepting tasks"));
      return;
    }
    std::map<std::string, int64_t> adding;
    for (const v1::Task& t : tasks) ++adding[t.queue()];
    for (const auto& [queue, n] : adding) {
      int64_t have = queued_by_queue_[queue];
      if (have + n > options_.max_queued) {
        done(absl::ResourceExhaustedError(absl::StrCat(
            "queue '", queue, "' is full (", have, " queued, limit ",
            options_.max_queued, "); retry later")));
        return;
      }
    }
    if (!keyed && work_source_ != nullptr) {
      SubmitClusterLocked(std::move(tasks), std::move(done), d);
    } else if (!keyed) {
      // The tasks are queued (and may run) while their insert commits: the
      // insert is queued first, under mu_, so every later write of them
      // (RUNNING, terminal) follows it, and the store turns an insert and
      // the updates that reach the same group commit into one row.
      // Nothing is announced before it is durable: the acknowledgement
      // waits for the insert, a terminal state for its own write.
      // Deferred tasks skip the insert: their first write is normally the
      // terminal one (QueueFinishLocked), else InsertDeferredLocked's.
      const absl::Time now = clock_.Now();
      std::vector<std::string> ids;
      if (deferred) {
        accepted.reserve(tasks.size());
      } else {
        ids.reserve(tasks.size());
      }
      for (v1::Task& t : tasks) {
        Entry& e = tasks_[t.id()];
        e.stored = !deferred;
        if (deferred) {
          // The task lives only here until written; the submitter gets its
          // id.
          deferred_.emplace_back(now, t.id());
          accepted.emplace_back().task.set_id(t.id());
          e.task = std::move(t);
        } else {
          e.task = t;
          ids.push_back(t.id());
        }
        EnqueueLocked(e, now);
        EmitLocked(e.task, v1::TaskEvent::STATE, d);
      }
      for (const auto& [queue, n] : adding) {
        metrics_.TaskSubmitted(queue, static_cast<int>(n));
      }
      if (deferred) {
        if (deferred_.size() == tasks.size()) {
          WakeAtLocked(now + options_.deferred_insert_limit);
        }
      } else {
        store_.Insert(std::move(tasks),
                      [this, ids = std::move(ids), done = std::move(done)](
                          absl::StatusOr<std::vector<InsertResult>> results) {
                        if (!results.ok()) Abandon(ids);
                        done(std::move(results));
                      });
      }
      DispatchLocked(now, d);
      if (!delayed_.empty()) WakeAtLocked(delayed_.begin()->first);
    }
  }
  d.Run();
  if (deferred) {
    done(std::move(accepted));
    return;
  }
  if (!keyed) return;
  // With idempotency keys the store decides which tasks are new: they are
  // queued once it answered. In cluster mode every node claims them from
  // the store (its commit notifies them).
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
    for (WaitDone& done : waits_.TakeTask(id)) {
      d.Add([done = std::move(done), id] {
        done(absl::UnavailableError(absl::StrCat(
                 "task ", id, " was dropped: the store refused its insert")),
             false);
      });
    }
    Entry& e = it->second;
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

void Scheduler::EnqueueLocked(Entry& e, absl::Time now) {
  ++queued_by_queue_[e.task.queue()];
  absl::Time not_before = e.task.has_not_before()
                              ? FromProto(e.task.not_before())
                              : absl::InfinitePast();
  if (not_before > now) {
    delayed_.emplace(not_before, e.task.id());
    return;
  }
  e.ready_at = now;
  e.ready_seq = next_seq_++;
  e.last_seq = e.ready_seq;
  ready_.insert(ReadyKey{-e.task.priority(), e.ready_seq, e.task.id()});
}

void Scheduler::RemoveQueuedLocked(Entry& e) {
  --queued_by_queue_[e.task.queue()];
  if (e.ready_seq != 0) {
    ready_.erase(ReadyKey{-e.task.priority(), e.ready_seq, e.task.id()});
    e.ready_seq = 0;
  }
  for (auto it = delayed_.begin(); it != delayed_.end(); ++it) {
    if (it->second == e.task.id()) {
      delayed_.erase(it);
      break;
    }
  }
}

void Scheduler::WakeLocked() {
  wake_ = true;
  cv_.Signal();
}

void Scheduler::WakeAtLocked(absl::Time t) {
  if (t < loop_wake_at_) WakeLocked();
}

// Only queues the write, so it may be called with mu_ held, and non-terminal
// states are written under mu_: the store applies writes in the order they
// are queued, so the rows follow the order of the state changes, and the
// terminal write (queued by FinishLocked's caller after the change) is last.
// The callback only logs; it never takes mu_.
void Scheduler::PersistAsync(const v1::Task& task) {
  store_.Update({task}, [id = task.id()](absl::Status s) {
    if (!s.ok()) {
      spdlog::error("store update of task {} failed: {}", id, s.ToString());
    }
  });
}

void Scheduler::EmitLocked(const v1::Task& task, v1::TaskEvent::Type type,
                           Deferred& d) {
  // Cluster: watchers on other nodes get it through the store.
  const bool remote = work_source_ != nullptr && work_source_->Watched(task);
  if (watchers_.empty() && !remote) return;
  auto event = std::make_shared<v1::TaskEvent>();
  event->set_type(type);
  *event->mutable_task() = task;
  *event->mutable_time() = ToProto(clock_.Now());
  if (remote) work_source_->PublishEvent(*event);
  for (const auto& [h, w] : watchers_) {
    if (w.task_id == task.id() ||
        (w.task_id.empty() && (w.queue == "*" || w.queue == task.queue()))) {
      d.Add([fn = w.fn, event] { fn(*event); });
    }
  }
}

void Scheduler::FinishLocked(Entry& e, v1::TaskState prev) {
  e.finishing = true;
  e.prev_state = prev;
  *e.task.mutable_finished_at() = ToProto(clock_.Now());
  metrics_.TaskFinished(e.task.queue(), StateLabel(e.task.state()));
  QueueFinishLocked(e);
}

void Scheduler::QueueFinishLocked(Entry& e) {
  std::vector<v1::Task>& batch =
      e.stored ? pending_finishes_ : pending_finish_inserts_;
  e.stored = true;
  // Task's move constructor is not noexcept, so a growing vector copies
  // every element: start with room for a turn's worth.
  if (batch.capacity() == 0) batch.reserve(64);
  batch.push_back(e.task);
}

void Scheduler::FlushFinishesLocked(Deferred& d) {
  auto ids_of = [](const std::vector<v1::Task>& tasks) {
    std::vector<std::string> ids;
    ids.reserve(tasks.size());
    for (const v1::Task& t : tasks) ids.push_back(t.id());
    return ids;
  };
  // Queued outside mu_ (the store may answer a closed store at once, and
  // the answer takes mu_). No other write of these tasks can follow: they
  // are finishing, so nothing else persists them.
  if (!pending_finishes_.empty()) {
    d.Add([this, ids = ids_of(pending_finishes_),
           tasks = std::move(pending_finishes_)]() mutable {
      store_.Update(std::move(tasks),
                    [this, ids = std::move(ids)](absl::Status s) {
                      OnFinishPersisted(ids, std::move(s), false);
                    });
    });
    pending_finishes_.clear();
  }
  if (!pending_finish_inserts_.empty()) {
    d.Add([this, ids = ids_of(pending_finish_inserts_),
           tasks = std::move(pending_finish_inserts_)]() mutable {
      store_.Insert(std::move(tasks),
                    [this, ids = std::move(ids)](
                        absl::StatusOr<std::vector<InsertResult>> r) {
                      OnFinishPersisted(ids, r.status(), true);
                    });
    });
    pending_finish_inserts_.clear();
  }
}

void Scheduler::InsertDeferredLocked(absl::Time cutoff) {
  std::vector<v1::Task> tasks;
  std::vector<std::string> ids;
  while (!deferred_.empty() && deferred_.front().first <= cutoff) {
    auto it = tasks_.find(deferred_.front().second);
    deferred_.pop_front();
    if (it == tasks_.end()) continue;
    Entry& e = it->second;
    if (e.stored || e.finishing || e.abandoned) continue;
    e.stored = true;
    // Recorded RUNNING: a crash now counts the attempt, as for any task.
    e.running_written = e.task.state() == v1::RUNNING;
    tasks.push_back(e.task);
    ids.push_back(e.task.id());
  }
  if (tasks.empty()) return;
  // Under mu_, so every later write of these tasks follows the insert.
  store_.Insert(std::move(tasks),
                [this, ids = std::move(ids)](
                    absl::StatusOr<std::vector<InsertResult>> r) {
                  if (r.ok()) return;
                  spdlog::error(
                      "store insert of {} deferred tasks "
                      "failed ({}); they are dropped",
                      ids.size(), r.status().ToString());
                  Abandon(ids);
                });
}

void Scheduler::WriteRunningLocked(absl::Time cutoff) {
  std::vector<v1::Task> running;
  while (!unwritten_running_.empty() &&
         unwritten_running_.front().first <= cutoff) {
    auto it = tasks_.find(unwritten_running_.front().second);
    unwritten_running_.pop_front();
    if (it == tasks_.end()) continue;
    Entry& e = it->second;
    if (!e.stored || e.finishing || e.abandoned || e.running_written ||
        e.task.state() != v1::RUNNING) {
      continue;
    }
    e.running_written = true;
    running.push_back(e.task);
  }
  StoreRunningLocked(std::move(running));
}

void Scheduler::StoreRunningLocked(std::vector<v1::Task> running) {
  if (running.empty()) return;
  // Queued under mu_ before the attempt's terminal write can be (the task
  // is not finishing), so the rows follow the order of the states.
  store_.Update(std::move(running), [](absl::Status s) {
    if (!s.ok()) {
      spdlog::error("store write of running tasks failed: {}", s.ToString());
    }
  });
}

void Scheduler::Persist(absl::string_view id,
                        std::function<void(absl::Status)> done) {
  {
    MutexLock lock(&mu_);
    auto it = tasks_.find(std::string(id));
    if (it != tasks_.end()) {
      Entry& e = it->second;
      if (e.finishing) {
        // Its terminal write may not be queued yet: wait for it.
        waits_.Add(
            std::string(id), absl::InfiniteFuture(),
            [done](absl::StatusOr<v1::Task> t, bool) { done(t.status()); });
        return;
      }
      // Under mu_, so the write is queued before any later one of the
      // task; the callbacks take no scheduler lock.
      if (!e.stored) {
        e.stored = true;
        e.running_written = e.task.state() == v1::RUNNING;
        store_.Insert({e.task},
                      [this, done, id = std::string(id)](
                          absl::StatusOr<std::vector<InsertResult>> r) {
                        if (!r.ok()) Abandon({id});
                        done(r.status());
                      });
      } else {
        // Written or being written: an empty write is a barrier behind it.
        store_.Update({}, std::move(done));
      }
      return;
    }
  }
  done(absl::OkStatus());  // finished and durable, or unknown
}

void Scheduler::OnFinishPersisted(const std::vector<std::string>& ids,
                                  absl::Status status, bool inserted) {
  Deferred d;
  {
    MutexLock lock(&mu_);
    if (!status.ok()) {
      // Nothing is announced: the tasks stay visibly unfinished (readers
      // see their previous state) and the write is tried again.
      spdlog::error(
          "store write of {} finished tasks failed ({}); trying again every "
          "{}",
          ids.size(), status.ToString(),
          absl::FormatDuration(options_.finish_retry_interval));
      for (const std::string& id : ids) {
        auto it = tasks_.find(id);
        if (it == tasks_.end() || it->second.finish_failed) continue;
        it->second.finish_failed = true;
        if (inserted) it->second.stored = false;  // tried again as an insert
        failed_finishes_.push_back(id);
      }
      store_failing_ = true;
      if (next_finish_retry_ == absl::InfiniteFuture()) {
        next_finish_retry_ = clock_.Now() + options_.finish_retry_interval;
        WakeLocked();
      }
      return;
    }
    if (failed_finishes_.empty()) store_failing_ = false;
    for (const std::string& id : ids) {
      auto it = tasks_.find(id);
      if (it == tasks_.end()) continue;
      Entry& e = it->second;
      if (e.abandoned) {
        // Refused by the cluster's attempt fence: the task's result is the
        // newer attempt's; waiters get it from the store.
        tasks_.erase(it);
        continue;
      }
      for (WaitDone& done : waits_.TakeTask(id)) {
        d.Add([done = std::move(done), task = e.task]() mutable {
          done(std::move(task), true);
        });
      }
      EmitLocked(e.task, v1::TaskEvent::STATE, d);
      RememberLocked(std::move(e.task));
      tasks_.erase(it);
    }
    if (!idle_waiters_.empty()) WakeLocked();  // they may be satisfied now
  }
  d.Run();
}

void Scheduler::RememberLocked(v1::Task task) {
  if (options_.recent_finished == 0) return;
  const size_t bytes = task.payload().size() + task.result().size() +
                       task.error().message().size() + 512;
  std::string id = task.id();
  recent_[id] = std::move(task);
  recent_order_.emplace_back(std::move(id), bytes);
  recent_bytes_ += bytes;
  while (recent_order_.size() > options_.recent_finished ||
         (recent_bytes_ > options_.recent_finished_bytes &&
          recent_order_.size() > 1)) {
    recent_.erase(recent_order_.front().first);
    recent_bytes_ -= recent_order_.front().second;
    recent_order_.pop_front();
  }
}

std::optional<v1::Task> Scheduler::RecentLocked(const std::string& id,
                                                absl::Time now) {
  auto it = recent_.find(id);
  if (it == recent_.end()) return std::nullopt;
  const v1::Task& t = it->second;
  if (FromProto(t.finished_at()) + FromProto(t.result_ttl()) <= now) {
    recent_.erase(it);  // expired: the purge removes it from the store too
    return std::nullopt;
  }
  return t;
}

v1::Task Scheduler::VisibleLocked(const Entry& e) const {
  if (!e.finishing) return e.task;
  v1::Task t = e.task;
  t.set_state(e.prev_state);
  t.clear_finished_at();
  t.clear_result();
  t.clear_error();
  return t;
}

void Scheduler::OnTurnEnd() {
  Deferred d;
  {
    MutexLock lock(&mu_);
    FlushFinishesLocked(d);
    DispatchLocked(clock_.Now(), d);
    if (work_source_ != nullptr) WantClaimLocked();
  }
  d.Run();
}

void Scheduler::DispatchLocked(absl::Time now, Deferred& d) {
  if (stop_ || ready_.empty()) return;
  if (draining_) {
    if (drain_redispatch_.empty()) return;
    std::vector<ReadyKey> keys;
    for (ReadyKey& k : drain_redispatch_) {
      if (ready_.erase(k) > 0) keys.push_back(std::move(k));
    }
    drain_redispatch_ = SendLocked(std::move(keys), now, d);
    return;
  }
  int room = pool_.Room();
  std::vector<ReadyKey> keys;
  while (room > 0 && !ready_.empty()) {
    keys.push_back(std::move(ready_.extract(ready_.begin()).value()));
    --room;
  }
  if (!keys.empty()) SendLocked(std::move(keys), now, d);
}

std::vector<Scheduler::ReadyKey> Scheduler::SendLocked(
    std::vector<ReadyKey> keys, absl::Time now, Deferred& d) {
  std::vector<worker::Assignment> batch;
  std::vector<Entry*> entries;
  batch.reserve(keys.size());
  entries.reserve(keys.size());
  size_t kept = 0;
  for (ReadyKey& key : keys) {
    auto it = tasks_.find(key.id);
    if (it == tasks_.end()) continue;
    const v1::Task& t = it->second.task;
    worker::Assignment a;
    a.task_id = t.id();
    a.attempt = t.attempt() + 1;
    a.kind = t.kind();
    a.payload = t.payload();
    absl::Duration timeout = FromProto(t.timeout());
    a.timeout =
        timeout > absl::ZeroDuration() ? timeout : absl::InfiniteDuration();
    batch.push_back(std::move(a));
    entries.push_back(&it->second);
    keys[kept++] = std::move(key);
  }
  keys.resize(kept);
  const size_t sent = batch.empty() ? 0 : pool_.DispatchMany(batch);
  std::vector<ReadyKey> refused;
  std::vector<v1::Task> running;
  for (size_t i = 0; i < keys.size(); ++i) {
    Entry& e = *entries[i];
    if (i >= sent) {
      // No worker took it (one that needs an idle worker, say): it keeps
      // its place.
      ready_.insert(keys[i]);
      refused.push_back(std::move(keys[i]));
      continue;
    }
    e.ready_seq = 0;
    --queued_by_queue_[e.task.queue()];
    v1::Task& t = e.task;
    t.set_state(v1::RUNNING);
    t.set_attempt(t.attempt() + 1);
    t.set_cancel_requested(false);
    t.set_progress(0);
    t.clear_progress_message();
    *t.mutable_started_at() = ToProto(now);
    ++running_;
    metrics_.TaskQueueWait(t.queue(), absl::ToDoubleSeconds(now - e.ready_at));
    // A cluster node writes no RUNNING record: its claim already made the
    // row RUNNING. With a running_write_delay the record waits
    // (WriteRunningLocked): most attempts end first.
    if (e.stored && work_source_ == nullptr) {
      if (options_.running_write_delay <= absl::ZeroDuration()) {
        e.running_written = true;
        running.push_back(t);
      } else {
        if (unwritten_running_.empty()) {
          WakeAtLocked(now + options_.running_write_delay);
        }
        unwritten_running_.emplace_back(now, t.id());
      }
    }
    EmitLocked(t, v1::TaskEvent::STATE, d);
  }
  // One write for the batch; the store coalesces a RUNNING record with the
  // terminal one when both reach the same group commit.
  StoreRunningLocked(std::move(running));
  return refused;
}

absl::Duration Scheduler::Backoff(int attempt) {
  thread_local absl::BitGen gen;
  double base = absl::ToDoubleSeconds(options_.backoff_base) *
                std::pow(2.0, std::max(0, attempt - 1));
  base = std::min(base, absl::ToDoubleSeconds(options_.backoff_max));
  return absl::Seconds(base * absl::Uniform(gen, 0.75, 1.25));
}

void Scheduler::RevokeLocked(TaskMap::iterator it) {
  Entry& e = it->second;
  v1::Task& t = e.task;
  // Never started: back to its place in the queue, the attempt unused.
  // OnTurnEnd dispatches it again.
  t.set_state(v1::QUEUED);
  t.set_attempt(t.attempt() - 1);
  t.clear_started_at();
  if (work_source_ != nullptr) {
    // Its place is the shared queue: give the claim back.
    PersistAsync(t);
    tasks_.erase(it);
    WantClaimLocked();
    return;
  }
  ++queued_by_queue_[t.queue()];
  e.ready_seq = e.last_seq;
  ready_.insert(ReadyKey{-t.priority(), e.ready_seq, t.id()});
  if (draining_) {
    drain_redispatch_.push_back(ReadyKey{-t.priority(), e.ready_seq, t.id()});
  }
  // A RUNNING record on disk would count as a lost attempt after a
  // crash: overwrite it.
  if (e.running_written) {
    e.running_written = false;
    PersistAsync(t);
  }
}

void Scheduler::OnOutcome(worker::Outcome o) {
  Deferred d;
  {
    MutexLock lock(&mu_);
    auto it = tasks_.find(o.task_id);
    if (it == tasks_.end() || it->second.finishing ||
        it->second.task.state() != v1::RUNNING ||
        it->second.task.attempt() != o.attempt) {
      // Fenced: this attempt is no longer the current one.
      metrics_.StaleCompletion();
      spdlog::warn("stale completion for task {} attempt {} refused", o.task_id,
                   o.attempt);
      return;
    }
    Entry& e = it->second;
    v1::Task& t = e.task;
    --running_;
    if (running_ == 0 && !idle_waiters_.empty()) WakeLocked();
    if (e.abandoned) {  // never acknowledged nor stored: nothing to record
      // (or, in a cluster, its lease is gone: a late completion, refused)
      if (e.lease_lost) metrics_.FencedCompletion();
      tasks_.erase(it);
      return;
    }
    if (o.kind == worker::OutcomeKind::kRevoked) {
      RevokeLocked(it);
      return;
    }
    if (attempt_end_handler_) {
      d.Add([this, id = t.id()] { attempt_end_handler_(id); });
    }
    if (o.worker_pid != 0) t.set_worker_pid(o.worker_pid);
    metrics_.TaskAttempt(t.queue(), t.kind(), OutcomeLabel(o.kind),
                         absl::ToDoubleSeconds(o.runtime));

    bool retryable = RecordOutcome(t, o);
    if (retryable && t.cancel_requested()) {
      t.set_state(v1::CANCELLED);
      retryable = false;
    }
    if (retryable) {
      if (t.attempt() - t.attempt_base() < t.max_attempts()) {
        const absl::Time now = clock_.Now();
        t.set_state(v1::QUEUED);
        *t.mutable_not_before() = ToProto(now + Backoff(t.attempt()));
        metrics_.TaskRetried(t.queue());
        EmitLocked(t, v1::TaskEvent::STATE, d);
        // Under mu_, so before the next attempt's writes.
        if (e.stored) PersistAsync(t);
        if (work_source_ != nullptr) {
          // Back to the shared queue: any node may run the next attempt.
          tasks_.erase(it);
          WantClaimLocked();
        } else {
          EnqueueLocked(e, now);
          WakeAtLocked(FromProto(t.not_before()));
        }
      } else {
        t.set_state(v1::DEAD);
        FinishLocked(e, v1::RUNNING);
      }
    } else {
      FinishLocked(e, v1::RUNNING);
    }
  }
  d.Run();
}

void Scheduler::OnProgress(absl::string_view id, int attempt, double fraction,
                           absl::string_view message) {
  Deferred d;
  {
    MutexLock lock(&mu_);
    auto it = tasks_.find(std::string(id));
    if (it == tasks_.end() || it->second.task.attempt() != attempt ||
        it->second.task.state() != v1::RUNNING) {
      return;
    }
    v1::Task& t = it->second.task;
    t.set_progress(std::clamp(fraction, 0.0, 1.0));
    t.set_progress_message(std::string(message.substr(0, 256)));
    EmitLocked(t, v1::TaskEvent::PROGRESS, d);
  }
  d.Run();
}

void Scheduler::RunDueLocked(absl::Time now, Deferred& d) {
  if (abandon_pending_.load(std::memory_order_acquire)) {
    DropAbandonedLocked(d);
  }
  if (!deferred_.empty() &&
      deferred_.front().first + options_.deferred_insert_limit <= now) {
    // Also the younger half, so the loop wakes for this at most twice per
    // limit however many tasks are deferred.
    InsertDeferredLocked(now - options_.deferred_insert_limit / 2);
  }
  if (!unwritten_running_.empty() &&
      unwritten_running_.front().first + options_.running_write_delay <= now) {
    WriteRunningLocked(now - options_.running_write_delay / 2);
  }
  // Delayed tasks whose time came.
  while (!delayed_.empty() && delayed_.begin()->first <= now) {
    std::string id = std::move(delayed_.begin()->second);
    delayed_.erase(delayed_.begin());
    auto it = tasks_.find(id);
    if (it == tasks_.end()) continue;
    Entry& e = it->second;
    e.ready_at = now;
    e.ready_seq = next_seq_++;
    e.last_seq = e.ready_seq;
    ready_.insert(ReadyKey{-e.task.priority(), e.ready_seq, id});
  }
  // Waits that timed out.
  for (auto& [id, done] : waits_.TakeExpired(now)) {
    auto it = tasks_.find(id);
    v1::Task task;
    if (it != tasks_.end()) {
      task = VisibleLocked(it->second);
    } else if (work_source_ != nullptr) {
      // A remote wait: answer with the stored state (outside mu_).
      d.Add([this, done = std::move(done), id = std::move(id)] {
        absl::StatusOr<v1::Task> t = store_.Get(id);
        const bool terminal = t.ok() && IsTerminal(t->state());
        done(std::move(t), terminal);
      });
      continue;
    }
    d.Add([done = std::move(done), task = std::move(task)] {
      done(task, false);
    });
  }
  // Drain / WhenIdle waiters.
  for (auto it = idle_waiters_.begin(); it != idle_waiters_.end();) {
    if (running_ == 0 || it->deadline <= now) {
      d.Add([done = std::move(it->done), drained = running_ == 0] {
        done(drained);
      });
      it = idle_waiters_.erase(it);
    } else {
      ++it;
    }
  }
  if (now >= next_finish_retry_) {
    next_finish_retry_ = absl::InfiniteFuture();
    for (const std::string& id : failed_finishes_) {
      auto it = tasks_.find(id);
      if (it == tasks_.end() || !it->second.finishing) continue;
      it->second.finish_failed = false;
      QueueFinishLocked(it->second);
    }
    failed_finishes_.clear();
    FlushFinishesLocked(d);
  }
  // Tasks that became ready above (and anything a missed turn left).
  DispatchLocked(now, d);
}

void Scheduler::Poke() {
  Deferred d;
  {
    MutexLock lock(&mu_);
    RunDueLocked(clock_.Now(), d);
  }
  d.Run();
}

void Scheduler::Loop() {
  absl::Time next_purge = clock_.Now() + options_.purge_interval;
  while (true) {
    Deferred d;
    bool purge = false;
    {
      MutexLock lock(&mu_);
      if (stop_) break;
      const absl::Time now = clock_.Now();
      RunDueLocked(now, d);
      if (now >= next_purge) {
        purge = true;
        next_purge = now + options_.purge_interval;
      }
    }
    d.Run();
    if (work_source_ != nullptr) ClaimForIdleWorkers();

    if (purge) {
      absl::StatusOr<int64_t> n = store_.PurgeExpired(clock_.Now());
      if (!n.ok()) {
        spdlog::error("purge of expired tasks failed: {}",
                      n.status().ToString());
      } else if (*n > 0) {
        spdlog::info("purged {} expired tasks", *n);
      }
    }

    MutexLock lock(&mu_);
    if (stop_) break;
    if (!wake_ && !claim_wanted_) {
      absl::Time next = clock_.Now() + absl::Seconds(1);
      next = std::min({next, next_purge, next_finish_retry_});
      if (!delayed_.empty()) next = std::min(next, delayed_.begin()->first);
      if (!deferred_.empty()) {
        next = std::min(
            next, deferred_.front().first + options_.deferred_insert_limit);
      }
      if (!unwritten_running_.empty()) {
        next = std::min(next, unwritten_running_.front().first +
                                  options_.running_write_delay);
      }
      next = std::min({next, waits_.NextDeadline(), stale_check_at_});
      for (const IdleWaiter& w : idle_waiters_)
        next = std::min(next, w.deadline);
      absl::Duration left = next - clock_.Now();
      if (left > absl::ZeroDuration()) {
        loop_wake_at_ = next;
        cv_.WaitWithTimeout(&mu_, left);
        loop_wake_at_ = absl::InfinitePast();
      }
    }
    wake_ = false;
  }
}

absl::StatusOr<v1::Task> Scheduler::Get(absl::string_view id) {
  std::optional<v1::Task> live;
  {
    MutexLock lock(&mu_);
    const std::string key(id);
    auto it = tasks_.find(key);
    if (it != tasks_.end()) {
      live = VisibleLocked(it->second);
    } else if (work_source_ == nullptr) {
      // (In a cluster another node may have retried it since: read the
      // store.)
      if (std::optional<v1::Task> t = RecentLocked(key, clock_.Now())) {
        return *t;
      }
    }
  }
  if (!live.has_value()) return store_.Get(id);
  // worker_pid is "current or last attempt", but the pool reports the pid
  // with the outcome; while the attempt runs, the pool knows it. Asked
  // outside mu_: Workers() may read /proc.
  if (live->state() == v1::RUNNING) {
    for (const worker::WorkerInfo& w : pool_.Workers()) {
      if (w.current_task_id == live->id()) {
        live->set_worker_pid(w.pid);
        break;
      }
    }
  }
  return *std::move(live);
}

uint64_t Scheduler::Wait(absl::string_view id, absl::Duration timeout,
                         WaitDone done) {
  timeout = std::min(timeout, options_.max_wait);
  std::optional<v1::Task> current;
  std::optional<v1::Task> finished;
  bool stopped = false;
  {
    MutexLock lock(&mu_);
    const std::string key(id);
    auto it = tasks_.find(key);
    if (stop_) {
      // Nothing would ever fire this wait: answer now rather than hold the
      // call open until the gRPC server's shutdown deadline.
      stopped = true;
    } else if (it == tasks_.end()) {
      finished = RecentLocked(key, clock_.Now());
    } else if (timeout <= absl::ZeroDuration()) {
      current = VisibleLocked(it->second);
    } else {
      const absl::Time deadline = clock_.Now() + timeout;
      const uint64_t h = waits_.Add(key, deadline, std::move(done));
      WakeAtLocked(deadline);
      return h;
    }
  }
  if (stopped) {
    done(absl::UnavailableError("forqd is shutting down"), false);
    return 0;
  }
  if (current) {
    done(std::move(*current), false);
    return 0;
  }
  if (finished) {
    done(std::move(*finished), true);
    return 0;
  }
  if (work_source_ != nullptr && timeout > absl::ZeroDuration()) {
    // Queued in the shared store, run by another node, finished or unknown:
    // parked here at once; the remote-wait thread reads it (with other new
    // waits, in one query) and answers it if it is terminal or unknown. A
    // terminal state reached later arrives by notification or, if this
    // node runs it, as a local finish.
    MutexLock lock(&mu_);
    const absl::Time deadline = clock_.Now() + timeout;
    const uint64_t h = waits_.Add(std::string(id), deadline, std::move(done));
    remote_check_.emplace_back(id);
    remote_cv_.Signal();
    WakeAtLocked(deadline);
    return h;
  }
  // Not in memory: finished (or unknown). Terminal states are final.
  absl::StatusOr<v1::Task> t = store_.Get(id);
  if (!t.ok()) {
    done(t.status(), false);
  } else {
    bool terminal = IsTerminal(t->state());
    done(std::move(t), terminal);
  }
  return 0;
}

bool Scheduler::CancelWait(uint64_t handle) {
  MutexLock lock(&mu_);
  return waits_.Remove(handle);
}

int Scheduler::CancelQueued(const std::vector<std::string>& ids,
                            absl::string_view why) {
  Deferred d;
  int cancelled = 0;
  {
    MutexLock lock(&mu_);
    for (const std::string& id : ids) {
      auto it = tasks_.find(id);
      if (it == tasks_.end()) continue;
      Entry& e = it->second;
      if (e.finishing || e.abandoned || e.task.state() != v1::QUEUED) continue;
      RemoveQueuedLocked(e);
      e.task.set_state(v1::CANCELLED);
      SetError(e.task, absl::StatusCode::kCancelled, why,
               v1::FAILURE_REASON_UNSPECIFIED);
      FinishLocked(e, v1::QUEUED);
      ++cancelled;
    }
    if (cancelled > 0) FlushFinishesLocked(d);
  }
  d.Run();
  return cancelled;
}

void Scheduler::Cancel(absl::string_view id, TaskDone done) {
  Deferred d;
  {
    MutexLock lock(&mu_);
    auto it = tasks_.find(std::string(id));
    if (it != tasks_.end()) {
      Entry& e = it->second;
      v1::Task& t = e.task;
      if (e.finishing) {
        d.Add([done, state = t.state(), id = t.id()] {
          done(AlreadyFinished(id, state));
        });
      } else if (t.state() == v1::QUEUED) {
        const v1::TaskState prev = t.state();
        RemoveQueuedLocked(e);
        t.set_state(v1::CANCELLED);
        SetError(t, absl::StatusCode::kCancelled, "cancelled before it ran",
                 v1::FAILURE_REASON_UNSPECIFIED);
        // Answer once the cancellation is durable, like a waiter.
        waits_.Add(std::string(id), absl::InfiniteFuture(),
                   [done](absl::StatusOr<v1::Task> task, bool) { done(task); });
        FinishLocked(e, prev);
        FlushFinishesLocked(d);
      } else {
        t.set_cancel_requested(true);
        // Queued under the lock, so before the write of whatever outcome
        // the attempt has (see Loop).
        if (e.stored) PersistAsync(t);
        d.Add([this, task = t] { pool_.Cancel(task.id(), task.attempt()); });
        d.Add([done, task = t] { done(task); });
      }
    }
  }
  if (!d.calls.empty()) {
    d.Run();
    return;
  }
  if (work_source_ != nullptr) {
    CancelRemote(id, std::move(done));  // queued or running elsewhere
    return;
  }
  absl::StatusOr<v1::Task> t = store_.Get(id);
  if (!t.ok()) {
    done(t.status());
    return;
  }
  done(AlreadyFinished(id, t->state()));
}

void Scheduler::Retry(absl::string_view id, TaskDone done) {
  std::optional<v1::TaskState> in_memory;
  {
    MutexLock lock(&mu_);
    auto it = tasks_.find(std::string(id));
    if (it != tasks_.end()) in_memory = it->second.task.state();
  }
  if (in_memory) {
    done(NotRetryable(id, *in_memory));
    return;
  }
  absl::StatusOr<v1::Task> t = store_.Get(id);
  if (!t.ok()) {
    done(t.status());
    return;
  }
  if (!IsTerminal(t->state()) || t->state() == v1::SUCCEEDED) {
    done(NotRetryable(id, t->state()));
    return;
  }
  v1::Task task = std::move(*t);
  task.set_state(v1::QUEUED);
  task.set_attempt_base(task.attempt());
  task.clear_finished_at();
  task.clear_not_before();
  task.clear_result();
  task.set_cancel_requested(false);
  store_.Update({task}, [this, task, done](absl::Status s) {
    if (!s.ok()) {
      done(s);
      return;
    }
    if (work_source_ != nullptr) {
      {
        MutexLock lock(&mu_);
        recent_.erase(task.id());
        WantClaimLocked();  // queued in the shared store
      }
      done(task);
      return;
    }
    Deferred d;
    {
      MutexLock lock(&mu_);
      recent_.erase(task.id());
      Entry& e = tasks_[task.id()];
      e.task = task;
      const absl::Time now = clock_.Now();
      EnqueueLocked(e, now);
      DispatchLocked(now, d);
      WakeLocked();
    }
    d.Run();
    done(task);
  });
}

absl::StatusOr<ListPage> Scheduler::List(ListQuery query) {
  absl::StatusOr<ListPage> page = store_.List(query);
  if (!page.ok()) return page;
  // Unfinished tasks: the in-memory copy is newer (progress, in-flight writes).
  MutexLock lock(&mu_);
  for (v1::Task& t : page->tasks) {
    auto it = tasks_.find(t.id());
    if (it != tasks_.end()) t = VisibleLocked(it->second);
  }
  return page;
}

uint64_t Scheduler::Subscribe(std::string task_id, std::string queue,
                              EventFn fn) {
  MutexLock lock(&mu_);
  uint64_t h = next_handle_++;
  Watcher& w = watchers_[h];
  w = Watcher{std::move(task_id), std::move(queue), std::move(fn)};
  if (work_source_ != nullptr) WatchRemoteLocked(w, true);
  return h;
}

void Scheduler::Unsubscribe(uint64_t handle) {
  MutexLock lock(&mu_);
  auto it = watchers_.find(handle);
  if (it == watchers_.end()) return;
  if (work_source_ != nullptr) WatchRemoteLocked(it->second, false);
  watchers_.erase(it);
}

void Scheduler::SetDraining(bool draining) {
  Deferred d;
  {
    MutexLock lock(&mu_);
    draining_ = draining;
    if (!draining) drain_redispatch_.clear();
    DispatchLocked(clock_.Now(), d);
    if (work_source_ != nullptr) {
      if (draining) {
        ReleaseClaimedLocked();
      } else {
        WantClaimLocked();
      }
    }
    WakeLocked();
  }
  d.Run();
}

bool Scheduler::draining() {
  MutexLock lock(&mu_);
  return draining_;
}

int Scheduler::running() {
  MutexLock lock(&mu_);
  return running_;
}

void Scheduler::WhenIdle(absl::Duration timeout,
                         std::function<void(bool)> done) {
  {
    MutexLock lock(&mu_);
    if (running_ > 0 && timeout > absl::ZeroDuration() && started_ && !stop_) {
      idle_waiters_.push_back(
          IdleWaiter{clock_.Now() + timeout, std::move(done)});
      WakeLocked();
      return;
    }
  }
  done(running() == 0);
}

void Scheduler::StopIntake() {
  MutexLock lock(&mu_);
  accepting_ = false;
}

size_t Scheduler::pending_waits() {
  MutexLock lock(&mu_);
  return waits_.size();
}

size_t Scheduler::pending_wait_timeouts() {
  MutexLock lock(&mu_);
  return waits_.deadlines();
}

bool Scheduler::store_failing() {
  MutexLock lock(&mu_);
  return store_failing_;
}

bool Scheduler::accepting() {
  MutexLock lock(&mu_);
  return accepting_;
}

void Scheduler::RefreshMetrics() {
  struct Depth {
    int64_t queued = 0, delayed = 0, running = 0;
    absl::Time oldest = absl::InfiniteFuture();
  };
  std::map<std::string, Depth> depth;
  {
    MutexLock lock(&mu_);
    metrics_.SetTaskWaits(static_cast<double>(waits_.size()));
    for (const auto& [q, n] : queued_by_queue_) depth[q];
    for (const auto& [id, e] : tasks_) {
      Depth& dq = depth[e.task.queue()];
      if (e.task.state() == v1::RUNNING) {
        ++dq.running;
      } else if (e.task.state() == v1::QUEUED) {
        if (e.ready_seq != 0) {
          ++dq.queued;
          dq.oldest = std::min(dq.oldest, e.ready_at);
        } else {
          ++dq.delayed;
        }
      }
    }
  }
  const absl::Time now = clock_.Now();
  for (const auto& [q, dq] : depth) {
    metrics_.SetQueueDepth(q, "queued", dq.queued);
    metrics_.SetQueueDepth(q, "delayed", dq.delayed);
    metrics_.SetQueueDepth(q, "running", dq.running);
    metrics_.SetQueueOldestAge(q, dq.oldest == absl::InfiniteFuture()
                                      ? 0
                                      : absl::ToDoubleSeconds(now - dq.oldest));
  }
  std::map<std::string, int> by_state = {
      {"starting", 0}, {"idle", 0}, {"busy", 0}, {"respawning", 0}};
  double rss = 0;
  for (const worker::WorkerInfo& w : pool_.Workers()) {
    switch (w.state) {
      case worker::WorkerState::kStarting:
        ++by_state["starting"];
        break;
      case worker::WorkerState::kIdle:
        ++by_state["idle"];
        break;
      case worker::WorkerState::kBusy:
        ++by_state["busy"];
        break;
      case worker::WorkerState::kRespawning:
        ++by_state["respawning"];
        break;
    }
    rss += static_cast<double>(w.rss_bytes);
  }
  for (const auto& [state, n] : by_state) metrics_.SetWorkers(state, n);
  metrics_.SetWorkerRssBytes(rss);
}

}  // namespace forq::server
