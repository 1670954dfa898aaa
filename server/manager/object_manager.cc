#include "server/manager/object_manager.h"

#include <algorithm>
#include <limits>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "spdlog/spdlog.h"

#include "server/manager/object_util.h"

namespace forq::server {

using namespace manager_internal;  // NOLINT(google-build-using-namespace):
                                   // internal helpers

namespace {
// How long Shutdown waits for queued object writes to reach the store.
constexpr absl::Duration kShutdownPersistWait = absl::Seconds(5);
// Longer timeouts (a task may send any int64) wait without a timer, as if
// none was given: their deadline would overflow the steady clock's 64-bit
// nanoseconds (about 292 years).
constexpr int64_t kMaxTimerMs = int64_t{100} * 365 * 24 * 3600 * 1000;
}  // namespace

// ------------------------------------------------------------ lifecycle

uint64_t NextManagerCallId() {
  static std::atomic<uint64_t> next{1};
  return next.fetch_add(1, std::memory_order_relaxed);
}

ObjectManager::ObjectManager(Store* store, Metrics* metrics,
                             ObjectManagerOptions options)
    : store_(store),
      metrics_(metrics),
      options_(options),
      gauges_(std::make_shared<Gauges>()),
      row_log_(options.row_log) {
  if (metrics_ != nullptr) {
    std::shared_ptr<Gauges> g = gauges_;
    Metrics* m = metrics_;
    metrics_->AddRefreshHook([g, m] {
      for (int t = 0; t < kOpCounterTypes; ++t) {
        for (int op = 0; op < kOpCounterOps; ++op) {
          const uint64_t n =
              g->ops[t][op].exchange(0, std::memory_order_relaxed);
          if (n == 0) continue;
          m->ManagerOp(worker::ManagerTypeName(static_cast<ManagerType>(t)),
                       worker::ManagerOpName(static_cast<ManagerOp>(op)),
                       static_cast<double>(n));
        }
      }
      m->SetManagerWaiters(
          static_cast<double>(g->waiters.load(std::memory_order_relaxed)));
      m->SetManagerSessions(
          static_cast<double>(g->sessions.load(std::memory_order_relaxed)));
      m->SetManagerObjects(
          static_cast<double>(g->objects.load(std::memory_order_relaxed)));
    });
  }
}

ObjectManager::~ObjectManager() {
  Shutdown();
  {
    MutexLock lock(&persist_mu_);
    while (persist_callbacks_ > 0) persist_callbacks_done_.Wait(&persist_mu_);
  }
  timers_.Stop();
}

void ObjectManager::Shutdown() {
  Batch b;
  {
    MutexLock lock(&mu_);
    if (shutdown_) return;
    shutdown_ = true;
    std::vector<uint64_t> ids;
    ids.reserve(waiters_.size());
    for (const auto& [id, w] : waiters_) ids.push_back(id);
    for (uint64_t id : ids) {
      std::optional<Waiter> w = TakeWaiterLocked(id, b);
      if (w) {
        b.replies.emplace_back(std::move(w->done),
                               absl::UnavailableError("manager shutting down"));
      }
    }
    for (auto& [id, s] : sessions_) b.cancel_timers.push_back(s.timer);
    UpdateGaugesLocked();
    // A shut-down core serves nothing: its gauges read 0 (a cluster node
    // that handed the Manager over reports no objects).
    gauges_->sessions.store(0, std::memory_order_relaxed);
    gauges_->objects.store(0, std::memory_order_relaxed);
  }
  Finish(b);
  // Changes already answered (DeleteObject answers before its rows are
  // gone) reach the store before the manager goes away; bounded, in case
  // the store is failing.
  const absl::Time give_up = absl::Now() + kShutdownPersistWait;
  MutexLock lock(&mu_);
  while ((!in_flight_.empty() || !pending_.empty()) && absl::Now() < give_up) {
    persist_cv_.WaitWithTimeout(&mu_, give_up - absl::Now());
  }
  if (!in_flight_.empty() || !pending_.empty()) {
    spdlog::warn("manager: store writes still pending at shutdown after {}",
                 absl::FormatDuration(kShutdownPersistWait));
  }
}

// ------------------------------------------------------------ execute

uint64_t ObjectManager::Execute(Request req, Done done, absl::string_view tag) {
  const auto type_index = static_cast<size_t>(req.type);
  const auto op_index = static_cast<size_t>(req.op);
  if (type_index < kOpCounterTypes && op_index < kOpCounterOps) {
    gauges_->ops[type_index][op_index].fetch_add(1, std::memory_order_relaxed);
  }
  Batch b;
  uint64_t parked = 0;
  const std::string name = req.name;
  {
    MutexLock lock(&mu_);
    Parking p;
    auto before_it = objects_.find(name);
    const size_t before =
        before_it == objects_.end() ? 0 : ObjectBytes(before_it->second);
    absl::Status admitted =
        shutdown_ ? absl::UnavailableError("manager shutting down")
                  : CheckBytesLocked(req);
    if (admitted.ok()) admitted = CheckRefsLocked(req);
    absl::StatusOr<Reply> reply =
        admitted.ok() ? RunLocked(req, p, b) : absl::StatusOr<Reply>(admitted);
    b.op_marked = false;
    auto after_it = objects_.find(name);
    const size_t after =
        after_it == objects_.end() ? 0 : ObjectBytes(after_it->second);
    total_bytes_ += after;
    total_bytes_ -= std::min(before, total_bytes_);
    if (reply.ok() && p.park) {
      auto it = objects_.find(req.name);
      if (waiters_.size() >= options_.max_waiters) {
        b.replies.emplace_back(
            std::move(done),
            absl::ResourceExhaustedError("too many parked manager operations"));
      } else if (it != objects_.end()) {
        parked = ParkLocked(it->first, it->second, std::move(req), p,
                            std::move(done), tag, b);
      }
    } else {
      b.replies.emplace_back(std::move(done), std::move(reply));
    }
    // A reply that read changes not yet durable waits for them (and fails
    // with them if they are rolled back).
    if (!b.replies.empty() && unpersisted_.count(name) != 0) b.hold = true;
    QueueWritesLocked(b);
    UpdateGaugesLocked();
  }
  Finish(b);
  return parked;
}

size_t ObjectManager::ObjectBytes(const Object& o) {
  return o.map.bytes() + o.seq_bytes + o.value.size() +
         (o.ints.size() + o.doubles.size()) * sizeof(int64_t);
}

absl::Status ObjectManager::CheckBytesLocked(const Request& req) {
  const v1::ManagerOpSpec* spec = v1::FindManagerOp(req.type, req.op);
  if (spec == nullptr || !spec->mutates()) return absl::OkStatus();
  size_t growth = req.key.size();
  auto value = [&](size_t n) -> absl::Status {
    if (n > options_.max_value_bytes) {
      return absl::ResourceExhaustedError(
          absl::StrCat("a value of ", n, " bytes is over the limit of ",
                       options_.max_value_bytes, " bytes per Manager value"));
    }
    growth += n;
    return absl::OkStatus();
  };
  FORQ_RETURN_IF_ERROR(value(req.value.size()));
  for (const std::string& v : req.values) FORQ_RETURN_IF_ERROR(value(v.size()));
  for (const auto& [k, v] : req.items) {
    FORQ_RETURN_IF_ERROR(value(v.size()));
    growth += k.size();
  }
  auto it = objects_.find(req.name);
  const size_t current = it == objects_.end() ? 0 : ObjectBytes(it->second);
  if (it != objects_.end() && req.op == ManagerOp::kRepeat && req.n > 1) {
    const size_t per = it->second.seq_bytes;
    const auto times = static_cast<size_t>(std::min<int64_t>(req.n, 1 << 20));
    growth += per > options_.max_object_bytes ? options_.max_object_bytes + 1
                                              : per * (times - 1);
  }
  if (current + growth > options_.max_object_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "'", req.name, "' would hold more than ", options_.max_object_bytes,
        " bytes (it holds ", current, ")"));
  }
  if (total_bytes_ + growth > options_.max_total_bytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("Manager objects would hold more than ",
                     options_.max_total_bytes, " bytes in total"));
  }
  return absl::OkStatus();
}

absl::StatusOr<ObjectManager::Reply> ObjectManager::RunLocked(Request& req,
                                                              Parking& p,
                                                              Batch& b) {
  if (v1::FindManagerOp(req.type, req.op) == nullptr) {
    return Unsupported(req.type, req.op);
  }
  if (req.type == ManagerType::kSession) return SessionOpLocked(req, b);
  FORQ_RETURN_IF_ERROR(ValidateName(req.name));
  if (!req.session.empty()) {
    // Any request naming a session renews its lease.
    FORQ_RETURN_IF_ERROR(SessionLocked(req).status());
  }
  auto it = objects_.find(req.name);
  if (it != objects_.end() && it->second.type != req.type) {
    return absl::FailedPreconditionError(
        absl::StrCat("'", req.name, "' is ", Article(it->second.type),
                     worker::ManagerTypeName(it->second.type), ", not ",
                     Article(req.type), worker::ManagerTypeName(req.type)));
  }
  if (it == objects_.end()) {
    if (objects_.size() >= options_.max_objects) {
      return absl::ResourceExhaustedError("too many manager objects");
    }
    Object o;
    o.type = req.type;
    switch (req.type) {
      case ManagerType::kArray: {
        const size_t n = req.length > 0 ? static_cast<size_t>(req.length)
                                        : req.values.size();
        if (n == 0 || n > options_.max_entries ||
            (req.length > 0 && !req.values.empty() && req.values.size() != n)) {
          return absl::InvalidArgumentError(absl::StrCat(
              "array '", req.name, "' does not exist; give a length in 1..",
              options_.max_entries, " or its initial values to create it"));
        }
        // No typecode: int64 ('q'); Python's 'i' is 32 bits.
        FORQ_ASSIGN_OR_RETURN(
            Typecode tc,
            ParseTypecode(req.typecode.empty() ? "q" : req.typecode));
        o.typecode = req.typecode.empty() ? 'q' : req.typecode[0];
        if (tc.is_float) {
          o.doubles.assign(n, 0.0);
        } else {
          o.ints.assign(n, 0);
        }
        for (size_t i = 0; i < req.values.size(); ++i) {
          FORQ_ASSIGN_OR_RETURN(Number v, ParseNumber(req.values[i], "value"));
          FORQ_RETURN_IF_ERROR(CheckTypecode(tc, v, "array value"));
          if (tc.is_float) {
            o.doubles[i] = v.is_int ? static_cast<double>(v.i) : v.d;
            if (tc.single) o.doubles[i] = static_cast<float>(o.doubles[i]);
          } else {
            o.ints[i] = v.i;
          }
        }
        break;
      }
      case ManagerType::kValue:
        if (!req.typecode.empty()) {
          FORQ_RETURN_IF_ERROR(ParseTypecode(req.typecode).status());
          o.typecode = req.typecode[0];
          o.value = "0";
        }
        break;
      case ManagerType::kBarrier:
        if (req.length <= 0 || req.length > (int64_t{1} << 20)) {
          return absl::InvalidArgumentError(absl::StrCat(
              "barrier '", req.name,
              "' does not exist; give parties in 1..2^20 to create it"));
        }
        o.initial = req.length;
        break;
      case ManagerType::kQueue:
        if (req.maxsize < 0) {
          return absl::InvalidArgumentError("queue maxsize must be >= 0");
        }
        o.maxsize = req.maxsize;
        break;
      case ManagerType::kPipe:
        o.one_way = req.one_way;
        break;
      case ManagerType::kSemaphore:
      case ManagerType::kBoundedSemaphore:
        if (req.has_initial &&
            (req.initial < 0 || req.initial > (int64_t{1} << 31))) {
          return absl::InvalidArgumentError(
              "semaphore value must be in 0..2^31");
        }
        o.initial = req.has_initial ? req.initial : 1;
        o.permits = o.initial;
        break;
      default:
        break;
    }
    // Its first write stores every row (an array's zeros too).
    o.needs_full_write = true;
    it = objects_.emplace(req.name, std::move(o)).first;
  }
  Object& o = it->second;
  const std::string& name = it->first;
  switch (req.type) {
    case ManagerType::kDict:
    case ManagerType::kNamespace:
      return MapOpLocked(name, o, req, b);
    case ManagerType::kList:
      return ListOpLocked(name, o, req, b);
    case ManagerType::kValue:
      return ValueOpLocked(name, o, req, b);
    case ManagerType::kArray:
      return ArrayOpLocked(name, o, req, b);
    case ManagerType::kQueue:
      return QueueOpLocked(name, o, req, p, b);
    case ManagerType::kPipe:
      return PipeOpLocked(name, o, req, p, b);
    case ManagerType::kLock:
    case ManagerType::kRLock:
    case ManagerType::kCondition:
      return LockOpLocked(name, o, req, p, b);
    case ManagerType::kSemaphore:
    case ManagerType::kBoundedSemaphore:
      return SemaphoreOpLocked(name, o, req, p, b);
    case ManagerType::kEvent:
      return EventOpLocked(name, o, req, p, b);
    case ManagerType::kBarrier:
      return BarrierOpLocked(name, o, req, p, b);
    case ManagerType::kSession:
      break;
  }
  return absl::InternalError("unreachable manager type");
}

// ------------------------------------------------------------ waiters

uint64_t ObjectManager::ParkLocked(const std::string& name, Object& o,
                                   Request req, const Parking& p, Done done,
                                   absl::string_view tag, Batch& b) {
  Waiter w;
  w.id = NextManagerCallId();
  w.object = name;
  w.kind = p.kind;
  w.done = std::move(done);
  w.tag = std::string(tag);
  w.restore_count = p.restore_count;
  const int64_t timeout_ms = req.timeout_ms;
  w.req = std::move(req);
  const uint64_t id = w.id;
  if (timeout_ms == 0) {
    // Not allowed to block: answer as if the timeout passed at once.
    if (w.kind == WaitKind::kCondWait) {
      w.kind = WaitKind::kCondReacquire;
    } else {
      b.replies.emplace_back(std::move(w.done), TimeoutReplyLocked(w, &o));
      if (w.kind == WaitKind::kBarrierWait) {
        BreakBarrierLocked(name, o, /*broken=*/true, b);
      }
      return 0;
    }
  } else if (timeout_ms > 0 && timeout_ms <= kMaxTimerMs) {
    w.timer =
        timers_.Schedule(Clock::now() + std::chrono::milliseconds(timeout_ms),
                         [this, id] { OnWaiterTimer(id); });
  }
  o.waiters.push_back(id);
  waiters_.emplace(id, std::move(w));
  // A condition wait re-acquiring at once (timeout 0) may get the lock now.
  PumpLocked(name, o, b);
  return waiters_.count(id) != 0 ? id : 0;
}

void ObjectManager::FailWaitersLocked(const Object& o, const absl::Status& why,
                                      Batch& b) {
  // Copied first: taking a waiter unlinks it from o.waiters.
  std::vector<uint64_t> ids(o.waiters.begin(), o.waiters.end());
  for (uint64_t id : ids) {
    std::optional<Waiter> w = TakeWaiterLocked(id, b);
    if (w) b.replies.emplace_back(std::move(w->done), why);
  }
}

std::optional<ObjectManager::Waiter> ObjectManager::TakeWaiterLocked(
    uint64_t id, Batch& b) {
  auto it = waiters_.find(id);
  if (it == waiters_.end()) return std::nullopt;
  Waiter w = std::move(it->second);
  waiters_.erase(it);
  auto oit = objects_.find(w.object);
  if (oit != objects_.end()) oit->second.waiters.remove(id);
  b.cancel_timers.push_back(std::exchange(w.timer, 0));
  return w;
}

absl::StatusOr<ObjectManager::Reply> ObjectManager::TimeoutReplyLocked(
    const Waiter& w, Object* o) {
  const std::string& name = w.object;
  Reply r;
  switch (w.kind) {
    case WaitKind::kQueueGet:
      return absl::DeadlineExceededError(
          absl::StrCat("queue '", name, "' is empty"));
    case WaitKind::kQueuePut:
      return absl::ResourceExhaustedError(
          absl::StrCat("queue '", name, "' is full"));
    case WaitKind::kQueueJoin:
      return absl::DeadlineExceededError(
          absl::StrCat("queue '", name, "' still has unfinished items"));
    case WaitKind::kPipeRecv:
      return absl::DeadlineExceededError(
          absl::StrCat("no message on pipe '", name, "' end ", w.req.end));
    case WaitKind::kAcquire:
      r.flag = false;
      if (o != nullptr && (o->type == ManagerType::kSemaphore ||
                           o->type == ManagerType::kBoundedSemaphore)) {
        r.length = o->permits;
      }
      return r;
    case WaitKind::kBarrierWait:
      return absl::FailedPreconditionError(absl::StrCat(
          "barrier '", name, "' broke: wait timed out (BrokenBarrierError)"));
    case WaitKind::kEventWait:
      r.flag = false;
      return r;
    case WaitKind::kCondWait:
    case WaitKind::kCondReacquire:
      break;
  }
  return absl::InternalError("condition waits do not time out directly");
}

void ObjectManager::OnWaiterTimer(uint64_t id) {
  Batch b;
  {
    MutexLock lock(&mu_);
    auto it = waiters_.find(id);
    if (it == waiters_.end()) return;
    Waiter& w = it->second;
    w.timer = 0;
    if (w.kind == WaitKind::kCondWait) {
      // Condition.wait(timeout) returns False only after re-acquiring the
      // lock, so the waiter stays parked, now queued for the lock.
      w.kind = WaitKind::kCondReacquire;
      auto oit = objects_.find(w.object);
      if (oit != objects_.end()) PumpLocked(oit->first, oit->second, b);
    } else {
      auto oit = objects_.find(w.object);
      Object* o = oit == objects_.end() ? nullptr : &oit->second;
      std::optional<Waiter> taken = TakeWaiterLocked(id, b);
      if (taken) {
        b.replies.emplace_back(std::move(taken->done),
                               TimeoutReplyLocked(*taken, o));
        // As in Python, a barrier wait that times out breaks the barrier
        // for every party.
        if (taken->kind == WaitKind::kBarrierWait && o != nullptr) {
          BreakBarrierLocked(oit->first, *o, /*broken=*/true, b);
        }
      }
    }
    UpdateGaugesLocked();
  }
  Finish(b);
}

void ObjectManager::BreakIfBarrierLocked(const Waiter& w, Batch& b) {
  if (w.kind != WaitKind::kBarrierWait) return;
  // A party that left can never arrive: the others would wait forever.
  auto it = objects_.find(w.object);
  if (it != objects_.end()) {
    BreakBarrierLocked(it->first, it->second, /*broken=*/true, b);
  }
}

void ObjectManager::Cancel(uint64_t waiter_id) {
  if (waiter_id == 0) return;
  Batch b;
  {
    MutexLock lock(&mu_);
    std::optional<Waiter> w = TakeWaiterLocked(waiter_id, b);
    if (!w) return;
    b.replies.emplace_back(std::move(w->done),
                           absl::CancelledError("manager operation cancelled"));
    BreakIfBarrierLocked(*w, b);
    UpdateGaugesLocked();
  }
  Finish(b);
}

int ObjectManager::CancelTagged(absl::string_view tag) {
  if (tag.empty()) return 0;
  Batch b;
  int n = 0;
  {
    MutexLock lock(&mu_);
    std::vector<uint64_t> ids;
    for (const auto& [id, w] : waiters_) {
      if (w.tag == tag) ids.push_back(id);
    }
    for (uint64_t id : ids) {
      std::optional<Waiter> w = TakeWaiterLocked(id, b);
      if (!w) continue;
      ++n;
      b.replies.emplace_back(std::move(w->done),
                             absl::CancelledError("task ended"));
      BreakIfBarrierLocked(*w, b);
    }
    UpdateGaugesLocked();
  }
  Finish(b);
  return n;
}

void ObjectManager::CompleteWaiterLocked(Waiter* w, Batch& b,
                                         absl::StatusOr<Reply> reply) {
  std::optional<Waiter> taken = TakeWaiterLocked(w->id, b);
  b.replies.emplace_back(std::move(taken->done), std::move(reply));
}

void ObjectManager::PumpLocked(const std::string& name, Object& o, Batch& b) {
  switch (o.type) {
    case ManagerType::kQueue:
      return PumpQueueLocked(name, o, b);
    case ManagerType::kPipe:
      return PumpPipeLocked(name, o, b);
    case ManagerType::kLock:
    case ManagerType::kRLock:
    case ManagerType::kCondition:
      return PumpLockLocked(name, o, b);
    case ManagerType::kSemaphore:
    case ManagerType::kBoundedSemaphore:
      return PumpSemaphoreLocked(name, o, b);
    case ManagerType::kEvent:
      return PumpEventLocked(name, o, b);
    default:
      return;
  }
}

void ObjectManager::TouchLocked(const std::string& name, Object& o,
                                absl::string_view op, absl::string_view key,
                                absl::string_view value, Batch& b) {
  ++o.version;
  if (store_ != nullptr && Persistent(o.type)) {
    Dirty& d = DirtyOf(b.dirty, name);
    // An op that did not name its rows rewrites the whole object.
    if (!b.op_marked) d.all = true;
  }
  b.op_marked = false;
  auto [lo, hi] = watchers_.equal_range(name);
  if (lo == hi) return;
  ManagerChange c;
  c.name = name;
  c.type = o.type;
  c.op = std::string(op);
  c.key = std::string(key);
  c.value = std::string(value);
  c.version = o.version;
  c.time = absl::Now();
  for (auto it = lo; it != hi; ++it) {
    it->second.second->Push(c);
    b.flush.push_back(it->second.second);
  }
}

// ------------------------------------------------------------ objects

std::vector<ManagerObjectInfo> ObjectManager::ListObjects(
    absl::string_view prefix) {
  std::vector<ManagerObjectInfo> out;
  MutexLock lock(&mu_);
  for (auto it = objects_.lower_bound(std::string(prefix));
       it != objects_.end() && absl::StartsWith(it->first, prefix); ++it) {
    const Object& o = it->second;
    ManagerObjectInfo info;
    info.name = it->first;
    info.type = o.type;
    info.version = o.version;
    info.waiters = static_cast<int64_t>(o.waiters.size());
    switch (o.type) {
      case ManagerType::kDict:
      case ManagerType::kNamespace:
        info.size = static_cast<int64_t>(o.map.size());
        break;
      case ManagerType::kList:
        info.size = static_cast<int64_t>(o.list.size());
        break;
      case ManagerType::kValue:
        info.size = static_cast<int64_t>(o.value.size());
        break;
      case ManagerType::kArray:
        info.size = static_cast<int64_t>(
            !IsFloatTypecode(o.typecode) ? o.ints.size() : o.doubles.size());
        break;
      case ManagerType::kQueue:
        info.size = static_cast<int64_t>(o.items.size());
        break;
      case ManagerType::kPipe:
        info.size = static_cast<int64_t>(o.inbox[0].size() + o.inbox[1].size());
        break;
      case ManagerType::kSemaphore:
      case ManagerType::kBoundedSemaphore:
        info.size = o.permits;
        break;
      case ManagerType::kEvent:
        info.size = o.is_set ? 1 : 0;
        break;
      case ManagerType::kBarrier:
        info.size = o.permits;
        break;
      default:
        info.size = o.hold_count;
        break;
    }
    out.push_back(std::move(info));
  }
  return out;
}

absl::StatusOr<bool> ObjectManager::DeleteObject(absl::string_view name) {
  FORQ_RETURN_IF_ERROR(ValidateName(name));
  Batch b;
  {
    MutexLock lock(&mu_);
    auto it = objects_.find(std::string(name));
    if (it == objects_.end()) return false;
    const std::string key(name);
    // Refused rather than reference-counted: a stored reference never
    // dangles, and nothing is deleted behind a holder's back.
    if (std::string by = ReferrerLocked(key); !by.empty()) {
      return absl::FailedPreconditionError(
          absl::StrCat("'", key, "' is referred to by ", by,
                       "; remove that reference first"));
    }
    FailWaitersLocked(
        it->second, absl::AbortedError(absl::StrCat("'", key, "' was deleted")),
        b);
    for (auto& [sid, s] : sessions_) s.holdings.erase(key);
    const bool persistent = Persistent(it->second.type);
    b.op_marked = true;  // no rows to write: they all go below
    TouchLocked(key, it->second, "delete", "", "", b);
    b.dirty.erase(
        std::remove_if(b.dirty.begin(), b.dirty.end(),
                       [&key](const auto& d) { return d.first == key; }),
        b.dirty.end());
    if (store_ != nullptr && persistent) DeleteRowsLocked(key, it->second, b);
    total_bytes_ -= std::min(total_bytes_, ObjectBytes(it->second));
    objects_.erase(it);
    QueueWritesLocked(b);
    UpdateGaugesLocked();
  }
  Finish(b);
  return true;
}

uint64_t ObjectManager::Watch(absl::string_view name,
                              std::shared_ptr<ManagerWatchSink> sink) {
  MutexLock lock(&mu_);
  const uint64_t id = next_watch_id_++;
  ManagerChange c;
  c.name = std::string(name);
  c.op = "snapshot";
  c.time = absl::Now();
  auto it = objects_.find(c.name);
  if (it != objects_.end()) {
    c.type = it->second.type;
    c.version = it->second.version;
  }
  // Pushed under the lock so the snapshot precedes every later change.
  sink->Push(c);
  watchers_.emplace(std::string(name), std::make_pair(id, std::move(sink)));
  return id;
}

void ObjectManager::Unwatch(uint64_t id) {
  std::shared_ptr<ManagerWatchSink> dropped;
  MutexLock lock(&mu_);
  for (auto it = watchers_.begin(); it != watchers_.end(); ++it) {
    if (it->second.first == id) {
      dropped = std::move(it->second.second);
      watchers_.erase(it);
      return;
    }
  }
}

size_t ObjectManager::waiter_count() {
  MutexLock lock(&mu_);
  return waiters_.size();
}

size_t ObjectManager::session_count() {
  MutexLock lock(&mu_);
  return sessions_.size();
}

size_t ObjectManager::object_count() {
  MutexLock lock(&mu_);
  return objects_.size();
}

uint64_t ObjectManager::epoch() {
  MutexLock lock(&mu_);
  return epoch_;
}

bool ObjectManager::AwaitWaiterCount(size_t n, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  MutexLock lock(&mu_);
  while (waiters_.size() != n) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) return false;
    waiters_changed_.WaitWithTimeout(&mu_, left);
  }
  return true;
}

void ObjectManager::UpdateGaugesLocked() {
  waiters_changed_.SignalAll();
  gauges_->waiters.store(static_cast<int64_t>(waiters_.size()),
                         std::memory_order_relaxed);
  gauges_->sessions.store(static_cast<int64_t>(sessions_.size()),
                          std::memory_order_relaxed);
  gauges_->objects.store(static_cast<int64_t>(objects_.size()),
                         std::memory_order_relaxed);
}

}  // namespace forq::server
