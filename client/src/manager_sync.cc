// Proxies of the synchronization objects: Lock, RLock, Semaphore, Event,
// Condition, Barrier.
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

#include "client/src/manager_internal.h"
#include "forq/manager.h"

namespace forq {

using namespace manager_internal;  // NOLINT(google-build-using-namespace):
                                   // internal helpers

// ---------------------------------------------------------------- Barrier

v1::ManagerCall Barrier::Base(absl::string_view op) const {
  v1::ManagerCall c = Manager::MakeCall(v1::OBJECT_TYPE_BARRIER, op, name_);
  c.set_length(parties_);
  return c;
}

absl::StatusOr<int64_t> Barrier::Wait(absl::Duration timeout) const {
  v1::ManagerCall c = Base(OpName(Op::kWait));
  SetTimeout(c, timeout);
  auto r = m_->Call(c, timeout);
  if (!r.ok()) return r.status();
  return r->count();
}

absl::Status Barrier::Abort() const {
  return Ok(m_->Call(Base(OpName(Op::kAbort))));
}

absl::Status Barrier::Reset() const {
  return Ok(m_->Call(Base(OpName(Op::kReset))));
}

absl::StatusOr<v1::BarrierResponse> Barrier::State() const {
  auto r = m_->Call(Base(OpName(Op::kSize)));
  if (!r.ok()) return r.status();
  v1::BarrierResponse out;
  out.set_parties(r->maxsize());
  out.set_n_waiting(r->length());
  out.set_broken(r->flag());
  return out;
}

// ---------------------------------------------------------------- locks

namespace {

// A call on a session-owned object (lock, rlock, condition, semaphore),
// naming this Manager's session.
absl::StatusOr<v1::ManagerCall> SessionCall(Manager* m, v1::ObjectType type,
                                            Op op, const std::string& name) {
  absl::StatusOr<std::string> session = m->session();
  if (!session.ok()) return session.status();
  v1::ManagerCall c = Manager::MakeCall(type, OpName(op), name);
  c.set_session(*session);
  return c;
}

absl::StatusOr<LockGrant> AcquireLock(Manager* m, const std::string& name,
                                      bool reentrant, absl::Duration timeout) {
  auto c =
      SessionCall(m, reentrant ? v1::OBJECT_TYPE_RLOCK : v1::OBJECT_TYPE_LOCK,
                  Op::kAcquire, name);
  if (!c.ok()) return c.status();
  if (reentrant) c->set_owner(ThreadOwner());
  SetTimeout(*c, timeout);
  auto r = m->Call(*c, timeout);
  if (!r.ok()) return r.status();
  return LockGrant{r->flag(), r->token()};
}

absl::Status ReleaseLock(Manager* m, const std::string& name, bool reentrant) {
  auto c =
      SessionCall(m, reentrant ? v1::OBJECT_TYPE_RLOCK : v1::OBJECT_TYPE_LOCK,
                  Op::kRelease, name);
  if (!c.ok()) return c.status();
  if (reentrant) c->set_owner(ThreadOwner());
  return Ok(m->Call(*c));
}

}  // namespace

LockGuard::LockGuard(LockGuard&& other) noexcept
    : m_(std::exchange(other.m_, nullptr)),
      name_(std::move(other.name_)),
      reentrant_(other.reentrant_),
      token_(other.token_) {}

LockGuard& LockGuard::operator=(LockGuard&& other) noexcept {
  if (this != &other) {
    (void)Release();
    m_ = std::exchange(other.m_, nullptr);
    name_ = std::move(other.name_);
    reentrant_ = other.reentrant_;
    token_ = other.token_;
  }
  return *this;
}

LockGuard::~LockGuard() { (void)Release(); }

absl::Status LockGuard::Release() {
  Manager* m = std::exchange(m_, nullptr);
  if (m == nullptr) return absl::OkStatus();
  return ReleaseLock(m, name_, reentrant_);
}

absl::StatusOr<LockGrant> BasicLock::Acquire(absl::Duration timeout) const {
  return AcquireLock(m_, name_, reentrant_, timeout);
}

absl::Status BasicLock::Release() const {
  return ReleaseLock(m_, name_, reentrant_);
}

absl::StatusOr<LockGuard> BasicLock::Guard(absl::Duration timeout) const {
  absl::StatusOr<LockGrant> g = Acquire(timeout);
  if (!g.ok()) return g.status();
  if (!g->acquired) {
    return absl::DeadlineExceededError(absl::StrCat(
        reentrant_ ? "rlock '" : "lock '", name_, "' not acquired in time"));
  }
  return LockGuard(m_, name_, reentrant_, g->token);
}

// ---------------------------------------------------------------- Semaphore

v1::ManagerCall Semaphore::Base(absl::string_view op) const {
  v1::ManagerCall c = Manager::MakeCall(
      bounded_ ? v1::OBJECT_TYPE_BOUNDED_SEMAPHORE : v1::OBJECT_TYPE_SEMAPHORE,
      op, name_);
  c.set_initial(initial_);
  return c;
}

absl::StatusOr<bool> Semaphore::Acquire(absl::Duration timeout) const {
  absl::StatusOr<std::string> session = m_->session();
  if (!session.ok()) return session.status();
  v1::ManagerCall c = Base(OpName(Op::kAcquire));
  c.set_session(*session);
  SetTimeout(c, timeout);
  auto r = m_->Call(c, timeout);
  if (!r.ok()) return r.status();
  return r->flag();
}

absl::Status Semaphore::Release() const {
  absl::StatusOr<std::string> session = m_->session();
  if (!session.ok()) return session.status();
  v1::ManagerCall c = Base(OpName(Op::kRelease));
  c.set_session(*session);
  return Ok(m_->Call(c));
}

absl::StatusOr<int64_t> Semaphore::Value() const {
  auto r = m_->Call(Base(OpName(Op::kValue)));
  if (!r.ok()) return r.status();
  return r->length();
}

// ---------------------------------------------------------------- Event

namespace {
v1::ManagerCall EventCall(const std::string& name, Op op,
                          absl::Duration timeout = absl::InfiniteDuration()) {
  v1::ManagerCall c =
      Manager::MakeCall(v1::OBJECT_TYPE_EVENT, OpName(op), name);
  SetTimeout(c, timeout);
  return c;
}
}  // namespace

absl::Status Event::Set() const {
  return Ok(m_->Call(EventCall(name_, Op::kSet)));
}

absl::Status Event::Clear() const {
  return Ok(m_->Call(EventCall(name_, Op::kClear)));
}

absl::StatusOr<bool> Event::IsSet() const {
  auto r = m_->Call(EventCall(name_, Op::kIsSet));
  if (!r.ok()) return r.status();
  return r->flag();
}

absl::StatusOr<bool> Event::Wait(absl::Duration timeout) const {
  auto r = m_->Call(EventCall(name_, Op::kWait, timeout), timeout);
  if (!r.ok()) return r.status();
  return r->flag();
}

// ---------------------------------------------------------------- Condition

v1::ManagerCall Condition::Base(absl::string_view op,
                                absl::Duration timeout) const {
  v1::ManagerCall c = Manager::MakeCall(v1::OBJECT_TYPE_CONDITION, op, name_);
  c.set_owner(ThreadOwner());
  SetTimeout(c, timeout);
  return c;
}

namespace {
absl::StatusOr<v1::ManagerResult> CondCall(Manager* m, v1::ManagerCall c,
                                           absl::Duration wait) {
  absl::StatusOr<std::string> session = m->session();
  if (!session.ok()) return session.status();
  c.set_session(*session);
  return m->Call(c, wait);
}
}  // namespace

absl::StatusOr<bool> Condition::Acquire(absl::Duration timeout) const {
  auto r = CondCall(m_, Base(OpName(Op::kAcquire), timeout), timeout);
  if (!r.ok()) return r.status();
  return r->flag();
}

absl::Status Condition::Release() const {
  return Ok(CondCall(m_, Base(OpName(Op::kRelease), absl::InfiniteDuration()),
                     absl::ZeroDuration()));
}

absl::StatusOr<bool> Condition::Wait(absl::Duration timeout) const {
  auto r = CondCall(m_, Base(OpName(Op::kWait), timeout), timeout);
  if (!r.ok()) return r.status();
  return r->flag();
}

absl::StatusOr<int> Condition::Notify(int n) const {
  v1::ManagerCall c = Base(OpName(Op::kNotify), absl::InfiniteDuration());
  c.set_n(n);
  auto r = CondCall(m_, std::move(c), absl::ZeroDuration());
  if (!r.ok()) return r.status();
  return static_cast<int>(r->count());
}

absl::StatusOr<int> Condition::NotifyAll() const {
  auto r = CondCall(m_, Base(OpName(Op::kNotifyAll), absl::InfiniteDuration()),
                    absl::ZeroDuration());
  if (!r.ok()) return r.status();
  return static_cast<int>(r->count());
}

}  // namespace forq
