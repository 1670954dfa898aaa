// Lock, RLock, Condition, Semaphore and Event operations and waiters.
#include <algorithm>
#include <limits>

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

#include "server/manager/object_manager.h"
#include "server/manager/object_util.h"

namespace forq::server {

using namespace manager_internal;  // NOLINT(google-build-using-namespace):
                                   // internal helpers

uint64_t ObjectManager::NextTokenLocked() {
  return (epoch_ << kTokenCounterBits) | ++grants_;
}

void ObjectManager::GrantLockLocked(const std::string& name, Object& o,
                                    Session& s, const std::string& owner,
                                    int64_t count) {
  o.holder_session = s.id;
  o.holder_owner = owner;
  o.hold_count = count;
  o.token = NextTokenLocked();
  s.holdings.insert(name);
}

void ObjectManager::FreeLockLocked(const std::string& name, Object& o,
                                   Session& s, absl::string_view op, Batch& b) {
  o.hold_count = 0;
  o.holder_session.clear();
  o.holder_owner.clear();
  s.holdings.erase(name);
  TouchLocked(name, o, op, "", "", b);
  PumpLocked(name, o, b);
}

absl::StatusOr<ObjectManager::Reply> ObjectManager::LockOpLocked(
    const std::string& name, Object& o, Request& req, Parking& p, Batch& b) {
  const bool reentrant = o.type != ManagerType::kLock;
  const bool is_cond = o.type == ManagerType::kCondition;
  const bool mine = !o.holder_session.empty() &&
                    o.holder_session == req.session &&
                    (!reentrant || o.holder_owner == req.owner);
  auto not_held = [&]() {
    return absl::FailedPreconditionError(absl::StrCat(
        worker::ManagerTypeName(o.type), " '", name,
        "' is not held by this session", reentrant ? " and owner" : ""));
  };
  Reply r;
  switch (req.op) {
    case ManagerOp::kAcquire: {
      FORQ_ASSIGN_OR_RETURN(Session * s, SessionLocked(req));
      if (reentrant && mine) {
        ++o.hold_count;
        r.flag = true;
        r.token = o.token;
        r.count = o.hold_count;
        return r;
      }
      if (!o.holder_session.empty()) {
        p.park = true;
        p.kind = WaitKind::kAcquire;
        return r;
      }
      GrantLockLocked(name, o, *s, req.owner, 1);
      TouchLocked(name, o, "acquire", "", "", b);
      r.flag = true;
      r.token = o.token;
      r.count = 1;
      return r;
    }
    case ManagerOp::kRelease: {
      FORQ_ASSIGN_OR_RETURN(Session * s, SessionLocked(req));
      if (!mine) return not_held();
      if (--o.hold_count <= 0) FreeLockLocked(name, o, *s, "release", b);
      r.count = o.hold_count;
      return r;
    }
    case ManagerOp::kWait: {
      if (!is_cond) return Unsupported(o.type, req.op);
      FORQ_ASSIGN_OR_RETURN(Session * s, SessionLocked(req));
      if (!mine) return not_held();
      p.park = true;
      p.kind = WaitKind::kCondWait;
      p.restore_count = o.hold_count;
      // The waiter is parked by the caller after this returns; granting the
      // lock to others first is fine since a notify needs the lock anyway.
      FreeLockLocked(name, o, *s, "wait", b);
      return r;
    }
    case ManagerOp::kNotify:
    case ManagerOp::kNotifyAll: {
      if (!is_cond) return Unsupported(o.type, req.op);
      FORQ_RETURN_IF_ERROR(SessionLocked(req).status());
      if (!mine) return not_held();
      int64_t n = req.op == ManagerOp::kNotifyAll
                      ? std::numeric_limits<int64_t>::max()
                      : std::max<int64_t>(req.n, 0);
      for (uint64_t wid : o.waiters) {
        if (n == 0) break;
        Waiter& w = waiters_.at(wid);
        if (w.kind != WaitKind::kCondWait) continue;
        w.kind = WaitKind::kCondReacquire;
        w.notified = true;
        b.cancel_timers.push_back(std::exchange(w.timer, 0));
        ++r.count;
        --n;
      }
      TouchLocked(name, o, worker::ManagerOpName(req.op), "", "", b);
      // The notifier holds the lock, so the woken only queue for it.
      return r;
    }
    default:
      return Unsupported(o.type, req.op);
  }
}

absl::StatusOr<ObjectManager::Reply> ObjectManager::SemaphoreOpLocked(
    const std::string& name, Object& o, Request& req, Parking& p, Batch& b) {
  Reply r;
  switch (req.op) {
    case ManagerOp::kAcquire: {
      FORQ_ASSIGN_OR_RETURN(Session * s, SessionLocked(req));
      if (o.permits <= 0) {
        p.park = true;
        p.kind = WaitKind::kAcquire;
        return r;
      }
      --o.permits;
      ++o.held[s->id];
      s->holdings.insert(name);
      TouchLocked(name, o, "acquire", "", "", b);
      r.flag = true;
      break;
    }
    case ManagerOp::kRelease: {
      Session* s = nullptr;
      if (!req.session.empty()) {
        FORQ_ASSIGN_OR_RETURN(s, SessionLocked(req));
      }
      auto h = s != nullptr ? o.held.find(s->id) : o.held.end();
      if (h != o.held.end()) {
        if (--h->second == 0) {
          o.held.erase(h);
          s->holdings.erase(name);
        }
      } else if (o.type == ManagerType::kBoundedSemaphore) {
        int64_t held = 0;
        for (const auto& [sid, k] : o.held) held += k;
        if (o.permits + held >= o.initial) {
          return absl::FailedPreconditionError(absl::StrCat(
              "bounded semaphore '", name, "' released too many times (bound ",
              o.initial, ")"));
        }
      }
      ++o.permits;
      TouchLocked(name, o, "release", "", "", b);
      PumpLocked(name, o, b);
      break;
    }
    default:
      FORQ_RETURN_IF_ERROR(OnlyQuery(o.type, req.op, ManagerOp::kValue));
  }
  r.length = o.permits;
  return r;
}

absl::StatusOr<ObjectManager::Reply> ObjectManager::EventOpLocked(
    const std::string& name, Object& o, Request& req, Parking& p, Batch& b) {
  Reply r;
  switch (req.op) {
    case ManagerOp::kSet:
      if (!o.is_set) {
        o.is_set = true;
        TouchLocked(name, o, "set", "", "", b);
        PumpLocked(name, o, b);
      }
      break;
    case ManagerOp::kClear:
      if (o.is_set) {
        o.is_set = false;
        TouchLocked(name, o, "clear", "", "", b);
      }
      break;
    case ManagerOp::kWait:
      if (!o.is_set) {
        p.park = true;
        p.kind = WaitKind::kEventWait;
        return r;
      }
      break;
    default:
      FORQ_RETURN_IF_ERROR(OnlyQuery(o.type, req.op, ManagerOp::kIsSet));
  }
  r.flag = o.is_set;
  return r;
}

ObjectManager::Session* ObjectManager::WaiterSessionLocked(Waiter* w,
                                                           Batch& b) {
  auto it = sessions_.find(w->req.session);
  if (it != sessions_.end()) return &it->second;
  CompleteWaiterLocked(w, b, absl::FailedPreconditionError("session expired"));
  return nullptr;
}

void ObjectManager::PumpLockLocked(const std::string& name, Object& o,
                                   Batch& b) {
  while (o.holder_session.empty()) {
    Waiter* w = FirstWaiterLocked(o, [](const Waiter& x) {
      return x.kind == WaitKind::kAcquire || x.kind == WaitKind::kCondReacquire;
    });
    if (w == nullptr) break;
    Session* s = WaiterSessionLocked(w, b);
    if (s == nullptr) continue;
    const bool reacquire = w->kind == WaitKind::kCondReacquire;
    GrantLockLocked(name, o, *s, w->req.owner,
                    reacquire ? w->restore_count : 1);
    TouchLocked(name, o, "acquire", "", "", b);
    Reply r;
    r.flag = reacquire ? w->notified : true;
    r.token = o.token;
    r.count = o.hold_count;
    CompleteWaiterLocked(w, b, std::move(r));
  }
}

void ObjectManager::PumpSemaphoreLocked(const std::string& name, Object& o,
                                        Batch& b) {
  while (o.permits > 0) {
    Waiter* w = FirstWaiterLocked(
        o, [](const Waiter& x) { return x.kind == WaitKind::kAcquire; });
    if (w == nullptr) break;
    Session* s = WaiterSessionLocked(w, b);
    if (s == nullptr) continue;
    --o.permits;
    ++o.held[s->id];
    s->holdings.insert(name);
    TouchLocked(name, o, "acquire", "", "", b);
    Reply r;
    r.flag = true;
    r.length = o.permits;
    CompleteWaiterLocked(w, b, std::move(r));
  }
}

void ObjectManager::PumpEventLocked(const std::string& name, Object& o,
                                    Batch& b) {
  if (o.is_set) {
    while (Waiter* w =
               FirstWaiterLocked(o, [](const Waiter&) { return true; })) {
      Reply r;
      r.flag = true;
      CompleteWaiterLocked(w, b, std::move(r));
    }
  }
}

absl::StatusOr<ObjectManager::Reply> ObjectManager::BarrierOpLocked(
    const std::string& name, Object& o, Request& req, Parking& p, Batch& b) {
  if (req.length != 0 && req.length != o.initial) {
    return absl::FailedPreconditionError(absl::StrCat(
        "barrier '", name, "' has ", o.initial, " parties, not ", req.length));
  }
  Reply r;
  switch (req.op) {
    case ManagerOp::kWait: {
      if (o.is_set) {
        return absl::FailedPreconditionError(
            absl::StrCat("barrier '", name, "' is broken"));
      }
      const int64_t index = o.permits;
      if (index + 1 < o.initial) {
        ++o.permits;
        p.park = true;
        p.kind = WaitKind::kBarrierWait;
        p.restore_count = index;
        return r;
      }
      // The last party: everyone passes.
      std::vector<uint64_t> ids(o.waiters.begin(), o.waiters.end());
      for (uint64_t id : ids) {
        Waiter& w = waiters_.at(id);
        if (w.kind != WaitKind::kBarrierWait) continue;
        Reply pass;
        pass.count = w.restore_count;
        pass.maxsize = o.initial;
        CompleteWaiterLocked(&w, b, std::move(pass));
      }
      o.permits = 0;
      TouchLocked(name, o, "pass", "", "", b);
      r.count = index;
      break;
    }
    case ManagerOp::kAbort:
      BreakBarrierLocked(name, o, /*broken=*/true, b);
      break;
    case ManagerOp::kReset:
      BreakBarrierLocked(name, o, /*broken=*/false, b);
      break;
    default:
      FORQ_RETURN_IF_ERROR(OnlyQuery(o.type, req.op, ManagerOp::kSize));
  }
  r.maxsize = o.initial;
  r.length = o.permits;
  r.flag = o.is_set;
  return r;
}

void ObjectManager::BreakBarrierLocked(const std::string& name, Object& o,
                                       bool broken, Batch& b) {
  std::vector<uint64_t> ids(o.waiters.begin(), o.waiters.end());
  for (uint64_t id : ids) {
    Waiter& w = waiters_.at(id);
    if (w.kind != WaitKind::kBarrierWait) continue;
    CompleteWaiterLocked(
        &w, b,
        absl::FailedPreconditionError(absl::StrCat(
            "barrier '", name, "' is broken (BrokenBarrierError)")));
  }
  o.permits = 0;
  o.is_set = broken;
  TouchLocked(name, o, broken ? "abort" : "reset", "", "", b);
}

}  // namespace forq::server
