#include "forq/manager.h"

#include <chrono>
#include <functional>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "google/protobuf/util/time_util.h"
#include <grpcpp/grpcpp.h>

#include "forq/client.h"
#include "forq/v1/manager.grpc.pb.h"

namespace forq {

using Stub = v1::ManagerService::Stub;

struct Manager::Rpc {
  std::unique_ptr<Stub> stub;
  absl::Duration rpc_timeout;

  // One unary call. `wait` is how long the server may block the call (its
  // deadline is wait + rpc_timeout; infinite = no deadline).
  template <typename Req, typename Resp>
  absl::StatusOr<Resp> Call(grpc::Status (Stub::*method)(grpc::ClientContext*,
                                                         const Req&, Resp*),
                            const Req& req,
                            absl::Duration wait = absl::ZeroDuration()) {
    grpc::ClientContext ctx;
    if (wait != absl::InfiniteDuration()) {
      ctx.set_deadline(std::chrono::system_clock::now() +
                       absl::ToChronoMilliseconds(rpc_timeout + wait));
    }
    Resp resp;
    grpc::Status s = (stub.get()->*method)(&ctx, req, &resp);
    if (!s.ok()) return FromGrpcStatus(s);
    return resp;
  }
};

namespace {

template <typename Req>
void SetTimeout(Req& req, absl::Duration timeout) {
  if (timeout == absl::InfiniteDuration()) return;
  if (timeout < absl::ZeroDuration()) timeout = absl::ZeroDuration();
  *req.mutable_timeout() =
      google::protobuf::util::TimeUtil::MillisecondsToDuration(
          absl::ToInt64Milliseconds(timeout));
}

// The owner of RLock/Condition holds within a session: the calling thread.
std::string ThreadOwner() {
  std::ostringstream os;
  os << std::this_thread::get_id();
  return os.str();
}

template <typename T>
absl::Status Ok(const absl::StatusOr<T>& r) {
  return r.status();
}

v1::DictRequest DictReq(const std::string& name, absl::string_view key = "") {
  v1::DictRequest r;
  r.set_name(name);
  r.set_key(std::string(key));
  return r;
}

v1::ListRequest ListReq(const std::string& name) {
  v1::ListRequest r;
  r.set_name(name);
  return r;
}

}  // namespace

// ---------------------------------------------------------------- Manager

Manager::Manager(std::shared_ptr<grpc::Channel> channel, ManagerOptions options)
    : options_(std::move(options)), rpc_(std::make_unique<Rpc>()) {
  rpc_->stub = v1::ManagerService::NewStub(std::move(channel));
  rpc_->rpc_timeout = options_.rpc_timeout;
}

Manager::Manager(const Client& client, ManagerOptions options)
    : Manager(client.channel(), std::move(options)) {}

Manager::~Manager() {
  {
    MutexLock lock(&mu_);
    stop_ = true;
    cv_.SignalAll();
  }
  if (keepalive_.joinable()) keepalive_.join();
  (void)CloseSession();
}

absl::StatusOr<std::string> Manager::session() {
  MutexLock lock(&mu_);
  if (!session_.empty()) return session_;
  // Opening under mu_ serialises concurrent first users onto one session;
  // the keepalive thread only needs mu_ briefly between its waits.
  v1::OpenSessionRequest req;
  *req.mutable_ttl() = google::protobuf::util::TimeUtil::MillisecondsToDuration(
      absl::ToInt64Milliseconds(options_.session_ttl));
  req.set_client_name(options_.client_name);
  absl::StatusOr<v1::OpenSessionResponse> resp =
      rpc_->Call(&Stub::OpenSession, req);
  if (!resp.ok()) return resp.status();
  session_ = resp->session();
  if (!keepalive_.joinable())
    keepalive_ = std::thread([this] { KeepAliveLoop(); });
  return session_;
}

absl::Status Manager::CloseSession() {
  std::string id;
  {
    MutexLock lock(&mu_);
    id = std::exchange(session_, "");
  }
  if (id.empty()) return absl::OkStatus();
  v1::CloseSessionRequest req;
  req.set_session(id);
  return rpc_->Call(&Stub::CloseSession, req).status();
}

void Manager::KeepAliveLoop() {
  const absl::Duration period = options_.session_ttl / 3;
  mu_.Lock();
  while (!stop_) {
    cv_.WaitWithTimeout(&mu_, period);
    if (stop_) break;
    const std::string id = session_;
    if (id.empty()) continue;
    mu_.Unlock();
    v1::KeepAliveRequest req;
    req.set_session(id);
    absl::Status s = rpc_->Call(&Stub::KeepAlive, req).status();
    mu_.Lock();
    // Expired (e.g. forqd restarted): forget it so the next lock operation
    // opens a new session instead of failing forever.
    if (absl::IsNotFound(s) && session_ == id) session_.clear();
  }
  mu_.Unlock();
}

absl::StatusOr<v1::ListObjectsResponse> Manager::ListObjects(
    absl::string_view prefix) {
  v1::ListObjectsRequest req;
  req.set_prefix(std::string(prefix));
  return rpc_->Call(&Stub::ListObjects, req);
}

absl::StatusOr<bool> Manager::DeleteObject(absl::string_view name) {
  v1::DeleteObjectRequest req;
  req.set_name(std::string(name));
  absl::StatusOr<v1::DeleteObjectResponse> r =
      rpc_->Call(&Stub::DeleteObject, req);
  if (!r.ok()) return r.status();
  return r->deleted();
}

// ---------------------------------------------------------------- Dict

absl::StatusOr<std::string> Dict::Get(absl::string_view key) const {
  auto r = m_->rpc().Call(&Stub::DictGet, DictReq(name_, key));
  if (!r.ok()) return r.status();
  return r->value();
}

absl::Status Dict::Set(absl::string_view key, absl::string_view value) const {
  v1::DictRequest req = DictReq(name_, key);
  req.set_value(std::string(value));
  return Ok(m_->rpc().Call(&Stub::DictSet, req));
}

absl::StatusOr<bool> Dict::Delete(absl::string_view key) const {
  auto r = m_->rpc().Call(&Stub::DictDelete, DictReq(name_, key));
  if (!r.ok()) return r.status();
  return r->found();
}

absl::StatusOr<bool> Dict::Contains(absl::string_view key) const {
  auto r = m_->rpc().Call(&Stub::DictContains, DictReq(name_, key));
  if (!r.ok()) return r.status();
  return r->found();
}

absl::StatusOr<std::vector<std::string>> Dict::Keys() const {
  auto r = m_->rpc().Call(&Stub::DictKeys, DictReq(name_));
  if (!r.ok()) return r.status();
  return std::vector<std::string>(r->keys().begin(), r->keys().end());
}

absl::StatusOr<std::map<std::string, std::string>> Dict::Items() const {
  auto r = m_->rpc().Call(&Stub::DictItems, DictReq(name_));
  if (!r.ok()) return r.status();
  return std::map<std::string, std::string>(r->items().begin(),
                                            r->items().end());
}

absl::StatusOr<int64_t> Dict::Len() const {
  auto r = m_->rpc().Call(&Stub::DictLen, DictReq(name_));
  if (!r.ok()) return r.status();
  return r->length();
}

absl::Status Dict::Update(
    const std::map<std::string, std::string>& items) const {
  v1::DictRequest req = DictReq(name_);
  for (const auto& [k, v] : items) (*req.mutable_items())[k] = v;
  return Ok(m_->rpc().Call(&Stub::DictUpdate, req));
}

absl::Status Dict::Clear() const {
  return Ok(m_->rpc().Call(&Stub::DictClear, DictReq(name_)));
}

absl::Status Dict::CompareAndSet(absl::string_view key,
                                 std::optional<std::string> expected,
                                 absl::string_view value) const {
  v1::DictRequest req = DictReq(name_, key);
  req.set_value(std::string(value));
  if (expected) {
    req.set_expected(*expected);
  } else {
    req.set_expect_absent(true);
  }
  return Ok(m_->rpc().Call(&Stub::DictCompareAndSet, req));
}

absl::StatusOr<std::string> Dict::SetIfAbsent(absl::string_view key,
                                              absl::string_view value) const {
  v1::DictRequest req = DictReq(name_, key);
  req.set_value(std::string(value));
  auto r = m_->rpc().Call(&Stub::DictSetIfAbsent, req);
  if (!r.ok()) return r.status();
  return r->value();
}

// ---------------------------------------------------------------- List

absl::StatusOr<int64_t> List::Append(absl::string_view value) const {
  v1::ListRequest req = ListReq(name_);
  req.set_value(std::string(value));
  auto r = m_->rpc().Call(&Stub::ListAppend, req);
  if (!r.ok()) return r.status();
  return r->length();
}

absl::StatusOr<int64_t> List::Extend(
    const std::vector<std::string>& values) const {
  v1::ListRequest req = ListReq(name_);
  for (const auto& v : values) req.add_values(v);
  auto r = m_->rpc().Call(&Stub::ListExtend, req);
  if (!r.ok()) return r.status();
  return r->length();
}

absl::StatusOr<std::string> List::Get(int64_t index) const {
  v1::ListRequest req = ListReq(name_);
  req.set_index(index);
  auto r = m_->rpc().Call(&Stub::ListGet, req);
  if (!r.ok()) return r.status();
  return r->value();
}

absl::Status List::Set(int64_t index, absl::string_view value) const {
  v1::ListRequest req = ListReq(name_);
  req.set_index(index);
  req.set_value(std::string(value));
  return Ok(m_->rpc().Call(&Stub::ListSet, req));
}

absl::StatusOr<std::string> List::Pop(std::optional<int64_t> index) const {
  v1::ListRequest req = ListReq(name_);
  if (index) req.set_index(*index);
  auto r = m_->rpc().Call(&Stub::ListPop, req);
  if (!r.ok()) return r.status();
  return r->value();
}

absl::Status List::Insert(int64_t index, absl::string_view value) const {
  v1::ListRequest req = ListReq(name_);
  req.set_index(index);
  req.set_value(std::string(value));
  return Ok(m_->rpc().Call(&Stub::ListInsert, req));
}

absl::Status List::Remove(absl::string_view value) const {
  v1::ListRequest req = ListReq(name_);
  req.set_value(std::string(value));
  return Ok(m_->rpc().Call(&Stub::ListRemove, req));
}

absl::StatusOr<int64_t> List::Len() const {
  auto r = m_->rpc().Call(&Stub::ListLen, ListReq(name_));
  if (!r.ok()) return r.status();
  return r->length();
}

absl::StatusOr<std::vector<std::string>> List::Slice(
    std::optional<int64_t> start, std::optional<int64_t> stop) const {
  v1::ListRequest req = ListReq(name_);
  if (start) req.set_start(*start);
  if (stop) req.set_stop(*stop);
  auto r = m_->rpc().Call(&Stub::ListSlice, req);
  if (!r.ok()) return r.status();
  return std::vector<std::string>(r->values().begin(), r->values().end());
}

absl::Status List::Clear() const {
  return Ok(m_->rpc().Call(&Stub::ListClear, ListReq(name_)));
}

absl::StatusOr<std::string> List::Add(int64_t index,
                                      absl::string_view delta) const {
  v1::ListRequest req = ListReq(name_);
  req.set_index(index);
  req.set_delta(std::string(delta));
  auto r = m_->rpc().Call(&Stub::ListAdd, req);
  if (!r.ok()) return r.status();
  return r->value();
}

// ---------------------------------------------------------------- Value

absl::StatusOr<std::string> Value::Get() const {
  v1::ValueRequest req;
  req.set_name(name_);
  auto r = m_->rpc().Call(&Stub::ValueGet, req);
  if (!r.ok()) return r.status();
  return r->value();
}

absl::Status Value::Set(absl::string_view value) const {
  v1::ValueRequest req;
  req.set_name(name_);
  req.set_value(std::string(value));
  return Ok(m_->rpc().Call(&Stub::ValueSet, req));
}

absl::StatusOr<std::string> Value::Add(absl::string_view delta) const {
  v1::ValueRequest req;
  req.set_name(name_);
  req.set_delta(std::string(delta));
  auto r = m_->rpc().Call(&Stub::ValueAdd, req);
  if (!r.ok()) return r.status();
  return r->value();
}

absl::Status Value::CompareAndSet(absl::string_view expected,
                                  absl::string_view value) const {
  v1::ValueRequest req;
  req.set_name(name_);
  req.set_expected(std::string(expected));
  req.set_value(std::string(value));
  return Ok(m_->rpc().Call(&Stub::ValueCompareAndSet, req));
}

// ---------------------------------------------------------------- Array

v1::ArrayRequest Array::Base() const {
  v1::ArrayRequest req;
  req.set_name(name_);
  req.set_length(length_);
  req.set_typecode(typecode_);
  return req;
}

absl::StatusOr<std::string> Array::Get(int64_t index) const {
  v1::ArrayRequest req = Base();
  req.set_index(index);
  auto r = m_->rpc().Call(&Stub::ArrayGet, req);
  if (!r.ok()) return r.status();
  return r->value();
}

absl::Status Array::Set(int64_t index, absl::string_view value) const {
  v1::ArrayRequest req = Base();
  req.set_index(index);
  req.set_value(std::string(value));
  return Ok(m_->rpc().Call(&Stub::ArraySet, req));
}

absl::StatusOr<std::string> Array::Add(int64_t index,
                                       absl::string_view delta) const {
  v1::ArrayRequest req = Base();
  req.set_index(index);
  req.set_delta(std::string(delta));
  auto r = m_->rpc().Call(&Stub::ArrayAdd, req);
  if (!r.ok()) return r.status();
  return r->value();
}

absl::StatusOr<std::vector<std::string>> Array::Slice(
    std::optional<int64_t> start, std::optional<int64_t> stop) const {
  v1::ArrayRequest req = Base();
  if (start) req.set_start(*start);
  if (stop) req.set_stop(*stop);
  auto r = m_->rpc().Call(&Stub::ArraySlice, req);
  if (!r.ok()) return r.status();
  return std::vector<std::string>(r->values().begin(), r->values().end());
}

absl::StatusOr<int64_t> Array::Len() const {
  auto r = m_->rpc().Call(&Stub::ArrayLen, Base());
  if (!r.ok()) return r.status();
  return r->length();
}

// ---------------------------------------------------------------- Namespace

absl::StatusOr<std::string> Namespace::Get(absl::string_view attr) const {
  v1::NamespaceRequest req;
  req.set_name(name_);
  req.set_attr(std::string(attr));
  auto r = m_->rpc().Call(&Stub::NamespaceGet, req);
  if (!r.ok()) return r.status();
  return r->value();
}

absl::Status Namespace::Set(absl::string_view attr,
                            absl::string_view value) const {
  v1::NamespaceRequest req;
  req.set_name(name_);
  req.set_attr(std::string(attr));
  req.set_value(std::string(value));
  return Ok(m_->rpc().Call(&Stub::NamespaceSet, req));
}

absl::Status Namespace::Delete(absl::string_view attr) const {
  v1::NamespaceRequest req;
  req.set_name(name_);
  req.set_attr(std::string(attr));
  return Ok(m_->rpc().Call(&Stub::NamespaceDelete, req));
}

absl::StatusOr<std::map<std::string, std::string>> Namespace::List() const {
  v1::NamespaceRequest req;
  req.set_name(name_);
  auto r = m_->rpc().Call(&Stub::NamespaceList, req);
  if (!r.ok()) return r.status();
  return std::map<std::string, std::string>(r->attrs().begin(),
                                            r->attrs().end());
}

// ---------------------------------------------------------------- Queue

absl::Status Queue::Put(absl::string_view item, absl::Duration timeout) const {
  v1::QueueRequest req;
  req.set_name(name_);
  req.set_maxsize(maxsize_);
  req.set_value(std::string(item));
  SetTimeout(req, timeout);
  return Ok(m_->rpc().Call(&Stub::QueuePut, req, timeout));
}

absl::StatusOr<std::string> Queue::Get(absl::Duration timeout) const {
  v1::QueueRequest req;
  req.set_name(name_);
  req.set_maxsize(maxsize_);
  SetTimeout(req, timeout);
  auto r = m_->rpc().Call(&Stub::QueueGet, req, timeout);
  if (!r.ok()) return r.status();
  return r->value();
}

absl::StatusOr<v1::QueueResponse> Queue::Size() const {
  v1::QueueRequest req;
  req.set_name(name_);
  req.set_maxsize(maxsize_);
  return m_->rpc().Call(&Stub::QueueSize, req);
}

absl::Status Queue::TaskDone() const {
  v1::QueueRequest req;
  req.set_name(name_);
  req.set_maxsize(maxsize_);
  return Ok(m_->rpc().Call(&Stub::QueueTaskDone, req));
}

absl::Status Queue::Join(absl::Duration timeout) const {
  v1::QueueRequest req;
  req.set_name(name_);
  req.set_maxsize(maxsize_);
  SetTimeout(req, timeout);
  return Ok(m_->rpc().Call(&Stub::QueueJoin, req, timeout));
}

// ---------------------------------------------------------------- Pipe

absl::Status Pipe::Send(int end, absl::string_view message) const {
  v1::PipeRequest req;
  req.set_name(name_);
  req.set_one_way(one_way_);
  req.set_end(end);
  req.set_value(std::string(message));
  return Ok(m_->rpc().Call(&Stub::PipeSend, req));
}

absl::StatusOr<std::string> Pipe::Recv(int end, absl::Duration timeout) const {
  v1::PipeRequest req;
  req.set_name(name_);
  req.set_one_way(one_way_);
  req.set_end(end);
  SetTimeout(req, timeout);
  auto r = m_->rpc().Call(&Stub::PipeRecv, req, timeout);
  if (!r.ok()) return r.status();
  return r->value();
}

absl::StatusOr<bool> Pipe::Poll(int end) const {
  v1::PipeRequest req;
  req.set_name(name_);
  req.set_one_way(one_way_);
  req.set_end(end);
  auto r = m_->rpc().Call(&Stub::PipePoll, req);
  if (!r.ok()) return r.status();
  return r->readable();
}

// ---------------------------------------------------------------- locks

namespace {

absl::StatusOr<LockGrant> AcquireLock(Manager* m, const std::string& name,
                                      bool reentrant, absl::Duration timeout) {
  absl::StatusOr<std::string> session = m->session();
  if (!session.ok()) return session.status();
  v1::LockRequest req;
  req.set_name(name);
  req.set_session(*session);
  if (reentrant) req.set_owner(ThreadOwner());
  SetTimeout(req, timeout);
  auto r = m->rpc().Call(reentrant ? &Stub::RLockAcquire : &Stub::LockAcquire,
                         req, timeout);
  if (!r.ok()) return r.status();
  return LockGrant{r->acquired(), r->fencing_token()};
}

absl::Status ReleaseLock(Manager* m, const std::string& name, bool reentrant) {
  absl::StatusOr<std::string> session = m->session();
  if (!session.ok()) return session.status();
  v1::LockRequest req;
  req.set_name(name);
  req.set_session(*session);
  if (reentrant) req.set_owner(ThreadOwner());
  return Ok(
      m->rpc().Call(reentrant ? &Stub::RLockRelease : &Stub::LockRelease, req));
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

absl::StatusOr<LockGrant> Lock::Acquire(absl::Duration timeout) const {
  return AcquireLock(m_, name_, false, timeout);
}

absl::Status Lock::Release() const { return ReleaseLock(m_, name_, false); }

absl::StatusOr<LockGuard> Lock::Guard(absl::Duration timeout) const {
  absl::StatusOr<LockGrant> g = Acquire(timeout);
  if (!g.ok()) return g.status();
  if (!g->acquired) {
    return absl::DeadlineExceededError(
        absl::StrCat("lock '", name_, "' not acquired in time"));
  }
  return LockGuard(m_, name_, false, g->token);
}

absl::StatusOr<LockGrant> RLock::Acquire(absl::Duration timeout) const {
  return AcquireLock(m_, name_, true, timeout);
}

absl::Status RLock::Release() const { return ReleaseLock(m_, name_, true); }

absl::StatusOr<LockGuard> RLock::Guard(absl::Duration timeout) const {
  absl::StatusOr<LockGrant> g = Acquire(timeout);
  if (!g.ok()) return g.status();
  if (!g->acquired) {
    return absl::DeadlineExceededError(
        absl::StrCat("rlock '", name_, "' not acquired in time"));
  }
  return LockGuard(m_, name_, true, g->token);
}

// ---------------------------------------------------------------- Semaphore

v1::SemaphoreRequest Semaphore::Base() const {
  v1::SemaphoreRequest req;
  req.set_name(name_);
  req.set_value(initial_);
  return req;
}

absl::StatusOr<bool> Semaphore::Acquire(absl::Duration timeout) const {
  absl::StatusOr<std::string> session = m_->session();
  if (!session.ok()) return session.status();
  v1::SemaphoreRequest req = Base();
  req.set_session(*session);
  SetTimeout(req, timeout);
  auto r = m_->rpc().Call(
      bounded_ ? &Stub::BoundedSemaphoreAcquire : &Stub::SemaphoreAcquire, req,
      timeout);
  if (!r.ok()) return r.status();
  return r->acquired();
}

absl::Status Semaphore::Release() const {
  absl::StatusOr<std::string> session = m_->session();
  if (!session.ok()) return session.status();
  v1::SemaphoreRequest req = Base();
  req.set_session(*session);
  return Ok(m_->rpc().Call(
      bounded_ ? &Stub::BoundedSemaphoreRelease : &Stub::SemaphoreRelease,
      req));
}

absl::StatusOr<int64_t> Semaphore::Value() const {
  auto r = m_->rpc().Call(
      bounded_ ? &Stub::BoundedSemaphoreValue : &Stub::SemaphoreValue, Base());
  if (!r.ok()) return r.status();
  return r->value();
}

// ---------------------------------------------------------------- Event

absl::Status Event::Set() const {
  v1::EventRequest req;
  req.set_name(name_);
  return Ok(m_->rpc().Call(&Stub::EventSet, req));
}

absl::Status Event::Clear() const {
  v1::EventRequest req;
  req.set_name(name_);
  return Ok(m_->rpc().Call(&Stub::EventClear, req));
}

absl::StatusOr<bool> Event::IsSet() const {
  v1::EventRequest req;
  req.set_name(name_);
  auto r = m_->rpc().Call(&Stub::EventIsSet, req);
  if (!r.ok()) return r.status();
  return r->is_set();
}

absl::StatusOr<bool> Event::Wait(absl::Duration timeout) const {
  v1::EventRequest req;
  req.set_name(name_);
  SetTimeout(req, timeout);
  auto r = m_->rpc().Call(&Stub::EventWait, req, timeout);
  if (!r.ok()) return r.status();
  return r->is_set();
}

// ---------------------------------------------------------------- Condition

v1::ConditionRequest Condition::Base(absl::Duration timeout) const {
  v1::ConditionRequest req;
  req.set_name(name_);
  req.set_owner(ThreadOwner());
  SetTimeout(req, timeout);
  return req;
}

absl::StatusOr<bool> Condition::Acquire(absl::Duration timeout) const {
  absl::StatusOr<std::string> session = m_->session();
  if (!session.ok()) return session.status();
  v1::ConditionRequest req = Base(timeout);
  req.set_session(*session);
  auto r = m_->rpc().Call(&Stub::ConditionAcquire, req, timeout);
  if (!r.ok()) return r.status();
  return r->acquired();
}

absl::Status Condition::Release() const {
  absl::StatusOr<std::string> session = m_->session();
  if (!session.ok()) return session.status();
  v1::ConditionRequest req = Base(absl::InfiniteDuration());
  req.set_session(*session);
  return Ok(m_->rpc().Call(&Stub::ConditionRelease, req));
}

absl::StatusOr<bool> Condition::Wait(absl::Duration timeout) const {
  absl::StatusOr<std::string> session = m_->session();
  if (!session.ok()) return session.status();
  v1::ConditionRequest req = Base(timeout);
  req.set_session(*session);
  auto r = m_->rpc().Call(&Stub::ConditionWait, req, timeout);
  if (!r.ok()) return r.status();
  return r->notified();
}

absl::StatusOr<int> Condition::Notify(int n) const {
  absl::StatusOr<std::string> session = m_->session();
  if (!session.ok()) return session.status();
  v1::ConditionRequest req = Base(absl::InfiniteDuration());
  req.set_session(*session);
  req.set_n(n);
  auto r = m_->rpc().Call(&Stub::ConditionNotify, req);
  if (!r.ok()) return r.status();
  return r->woken();
}

absl::StatusOr<int> Condition::NotifyAll() const {
  absl::StatusOr<std::string> session = m_->session();
  if (!session.ok()) return session.status();
  v1::ConditionRequest req = Base(absl::InfiniteDuration());
  req.set_session(*session);
  auto r = m_->rpc().Call(&Stub::ConditionNotifyAll, req);
  if (!r.ok()) return r.status();
  return r->woken();
}

}  // namespace forq
