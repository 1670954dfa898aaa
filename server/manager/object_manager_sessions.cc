// Sessions: open, keep-alive, close, lease expiry, and what a session's
// end releases (locks, permits, parked operations).
#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

#include "server/manager/object_manager.h"
#include "server/manager/object_util.h"

namespace forq::server {

using namespace manager_internal;  // NOLINT(google-build-using-namespace):
                                   // internal helpers

absl::StatusOr<ObjectManager::Session*> ObjectManager::SessionLocked(
    const Request& req) {
  if (req.session.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        worker::ManagerTypeName(req.type), " ", worker::ManagerOpName(req.op),
        " needs a session (OpenSession)"));
  }
  auto it = sessions_.find(req.session);
  if (it == sessions_.end()) {
    return absl::NotFoundError(
        "session expired or unknown; its locks and permits were released");
  }
  RenewLocked(it->second);
  return &it->second;
}

void ObjectManager::RenewLocked(Session& s) { s.expiry = Clock::now() + s.ttl; }

absl::StatusOr<ObjectManager::Reply> ObjectManager::SessionOpLocked(
    Request& req, Batch& b) {
  Reply r;
  switch (req.op) {
    case ManagerOp::kOpen: {
      if (sessions_.size() >= options_.max_sessions) {
        return absl::ResourceExhaustedError("too many manager sessions");
      }
      absl::Duration ttl = req.ttl_ms > 0 ? absl::Milliseconds(req.ttl_ms)
                                          : options_.default_session_ttl;
      ttl = std::clamp(ttl, options_.min_session_ttl, options_.max_session_ttl);
      Session s;
      s.id = NewSessionId();
      s.client_name = req.key.substr(0, 200);
      s.ttl = std::chrono::duration_cast<Clock::duration>(
          absl::ToChronoNanoseconds(ttl));
      RenewLocked(s);
      const std::string id = s.id;
      s.timer = timers_.Schedule(s.expiry, [this, id] { OnSessionTimer(id); });
      r.value = id;
      r.length = ToMillis(s.ttl);
      sessions_.emplace(id, std::move(s));
      return r;
    }
    case ManagerOp::kKeepAlive: {
      FORQ_ASSIGN_OR_RETURN(Session * s, SessionLocked(req));
      r.length = ToMillis(s->ttl);
      return r;
    }
    case ManagerOp::kClose: {
      if (sessions_.count(req.session) == 0) {
        return absl::NotFoundError("session expired or unknown");
      }
      r.count = EndSessionLocked(req.session, "session closed", b);
      return r;
    }
    default:
      return Unsupported(req.type, req.op);
  }
}

void ObjectManager::OnSessionTimer(const std::string& id) {
  Batch b;
  {
    MutexLock lock(&mu_);
    auto it = sessions_.find(id);
    if (it == sessions_.end() || shutdown_) return;
    Session& s = it->second;
    const Clock::time_point now = Clock::now();
    if (s.expiry > now) {
      // Renewed since the timer was set: one timer per session, re-armed
      // lazily, instead of one per renewal.
      s.timer = timers_.Schedule(s.expiry, [this, id] { OnSessionTimer(id); });
      return;
    }
    s.timer = 0;
    spdlog::info("manager: session {} ({}) expired", id.substr(0, 8),
                 s.client_name);
    EndSessionLocked(id, "session expired", b);
    QueueWritesLocked(b);
    UpdateGaugesLocked();
  }
  Finish(b);
}

int ObjectManager::EndSessionLocked(const std::string& id,
                                    absl::string_view why, Batch& b) {
  auto sit = sessions_.find(id);
  if (sit == sessions_.end()) return 0;
  Session s = std::move(sit->second);
  sessions_.erase(sit);
  b.cancel_timers.push_back(s.timer);
  // Its parked operations cannot complete any more: they would be granted
  // to an owner that no longer exists.
  std::vector<uint64_t> mine;
  for (const auto& [wid, w] : waiters_) {
    if (w.req.session == id) mine.push_back(wid);
  }
  for (uint64_t wid : mine) {
    std::optional<Waiter> w = TakeWaiterLocked(wid, b);
    if (w) {
      b.replies.emplace_back(std::move(w->done),
                             absl::FailedPreconditionError(why));
    }
  }
  int released = 0;
  for (const std::string& name : s.holdings) {
    auto it = objects_.find(name);
    if (it == objects_.end()) continue;
    Object& o = it->second;
    if (o.holder_session == id) {
      o.holder_session.clear();
      o.holder_owner.clear();
      o.hold_count = 0;
      ++released;
      TouchLocked(name, o, "release", why, "", b);
    }
    auto h = o.held.find(id);
    if (h != o.held.end()) {
      o.permits += h->second;
      released += static_cast<int>(h->second);
      o.held.erase(h);
      TouchLocked(name, o, "release", why, "", b);
    }
    PumpLocked(name, o, b);
  }
  return released;
}

}  // namespace forq::server
