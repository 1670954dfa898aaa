#include "forq/manager.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <sstream>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "google/protobuf/util/time_util.h"
#include <grpcpp/grpcpp.h>

#include "api/forq/v1/manager_ops.h"
#include "forq/client.h"
#include "forq/v1/manager.grpc.pb.h"

namespace forq {

using Stub = v1::ManagerService::Stub;
using Result = absl::StatusOr<v1::ManagerResult>;
using Promise = std::promise<Result>;

namespace {

// The client end of one ManagerService.Session stream. Operations are
// queued, written in batches (everything queued while the previous write
// was in flight goes out as one message) and answered by id. Holds the
// call open (AddHold) until it broke and no write of ours is in flight, so
// a write started from a caller's thread never follows OnDone. Freed only by
// Manager::Rpc's destructor after Close(), never on a gRPC callback thread:
// its ClientContext holds a channel reference, and a channel released last
// on a callback thread tears down the callback queue that thread runs on.
class SessionStream final
    : public grpc::ClientBidiReactor<v1::SessionRequest, v1::SessionResponse> {
 public:
  static std::shared_ptr<SessionStream> Open(Stub& stub) {
    auto s = std::shared_ptr<SessionStream>(new SessionStream());
    stub.async()->Session(&s->ctx_, s.get());
    s->AddHold();
    s->StartRead(&s->in_);
    s->StartCall();
    return s;
  }

  // Queues `call`; `promise` gets its result. Returns its id, or 0 if the
  // stream is broken (the promise then holds Unavailable).
  uint64_t Send(const v1::ManagerCall& call, Promise promise) {
    bool start = false;
    uint64_t id = 0;
    {
      MutexLock lock(&mu_);
      if (dead_) {
        promise.set_value(
            absl::UnavailableError("manager session stream broken"));
        return 0;
      }
      id = next_id_++;
      v1::SessionOp* op = pending_.add_ops();
      op->set_id(id);
      *op->mutable_call() = call;
      waiting_.emplace(id, std::move(promise));
      start = TakePendingLocked();
    }
    if (start) StartWrite(&out_);
    return id;
  }

  // Asks the server to cancel the parked operation `id`.
  void Cancel(uint64_t id) {
    bool start = false;
    {
      MutexLock lock(&mu_);
      if (dead_) return;
      v1::SessionOp* op = pending_.add_ops();
      op->set_id(id);
      op->set_cancel(true);
      start = TakePendingLocked();
    }
    if (start) StartWrite(&out_);
  }

  bool dead() {
    MutexLock lock(&mu_);
    return dead_;
  }

  // Cancels the call and waits until gRPC is done with it.
  void Close() {
    {
      MutexLock lock(&mu_);
      if (done_) return;
    }
    ctx_.TryCancel();
    MutexLock lock(&mu_);
    while (!done_) done_cv_.Wait(&mu_);
  }

  void OnWriteDone(bool ok) override {
    bool start = false;
    bool release = false;
    {
      MutexLock lock(&mu_);
      writing_ = false;
      if (!ok) dead_ = true;
      if (dead_) {
        release = !std::exchange(hold_released_, true);
      } else {
        start = TakePendingLocked();
      }
    }
    if (start) StartWrite(&out_);
    if (release) RemoveHold();
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      // The stream ended. OnDone (once no write of ours is in flight)
      // fails what is left with the stream's status: PERMISSION_DENIED
      // stays that, not a retryable UNAVAILABLE.
      bool release = false;
      {
        MutexLock lock(&mu_);
        dead_ = true;
        if (!writing_) release = !std::exchange(hold_released_, true);
      }
      if (release) RemoveHold();
      return;
    }
    std::vector<std::pair<Promise, Result>> ready;
    {
      MutexLock lock(&mu_);
      for (v1::SessionResult& r : *in_.mutable_results()) {
        auto it = waiting_.find(r.id());
        if (it == waiting_.end()) continue;  // given up on (deadline)
        if (r.code() == 0) {
          ready.emplace_back(std::move(it->second),
                             std::move(*r.mutable_result()));
        } else {
          ready.emplace_back(
              std::move(it->second),
              absl::Status(static_cast<absl::StatusCode>(r.code()),
                           r.message()));
        }
        waiting_.erase(it);
      }
    }
    for (auto& [p, r] : ready) p.set_value(std::move(r));
    StartRead(&in_);
  }

  void OnDone(const grpc::Status& s) override {
    FailAll(s.ok() ? absl::UnavailableError("manager session stream closed")
                   : FromGrpcStatus(s));
    MutexLock lock(&mu_);
    done_ = true;
    done_cv_.SignalAll();
  }

  // Drops the promise of `id` (its caller stopped waiting).
  void Forget(uint64_t id) {
    MutexLock lock(&mu_);
    waiting_.erase(id);
  }

 private:
  SessionStream() = default;

  // Moves queued ops into out_ unless a write is in flight; true if the
  // caller must StartWrite.
  bool TakePendingLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (writing_ || pending_.ops_size() == 0) return false;
    out_.Clear();
    out_.Swap(&pending_);
    writing_ = true;
    return true;
  }

  void FailAll(const absl::Status& why) {
    std::unordered_map<uint64_t, Promise> failed;
    bool release = false;
    {
      MutexLock lock(&mu_);
      dead_ = true;
      failed.swap(waiting_);
      if (!writing_) release = !std::exchange(hold_released_, true);
    }
    for (auto& [id, p] : failed) p.set_value(why);
    if (release) RemoveHold();
  }

  grpc::ClientContext ctx_;
  v1::SessionRequest out_;
  v1::SessionResponse in_;
  Mutex mu_;
  CondVar done_cv_;
  v1::SessionRequest pending_ ABSL_GUARDED_BY(mu_);
  std::unordered_map<uint64_t, Promise> waiting_ ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool dead_ ABSL_GUARDED_BY(mu_) = false;
  bool hold_released_ ABSL_GUARDED_BY(mu_) = false;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace

struct Manager::Rpc {
  std::unique_ptr<Stub> stub;
  absl::Duration rpc_timeout;
  bool pipelined = true;
  Mutex mu;
  // The stream new calls go to.
  std::shared_ptr<SessionStream> stream ABSL_GUARDED_BY(mu);
  // Every stream opened (one more after each break); closed and freed here.
  std::vector<std::shared_ptr<SessionStream>> streams ABSL_GUARDED_BY(mu);

  ~Rpc() {
    std::vector<std::shared_ptr<SessionStream>> all;
    {
      MutexLock lock(&mu);
      stream = nullptr;
      all.swap(streams);
    }
    for (const auto& s : all) s->Close();
  }

  // One unary call. `wait` is how long the server may block the call (its
  // deadline is wait + rpc_timeout; infinite = no deadline).
  template <typename Req, typename Resp>
  absl::StatusOr<Resp> Unary(grpc::Status (Stub::*method)(grpc::ClientContext*,
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

  // Queues `call` on the (re)opened stream. Returns the stream and id, or
  // a null stream if it broke right away.
  std::pair<std::shared_ptr<SessionStream>, uint64_t> Send(
      const v1::ManagerCall& call, Promise promise) {
    std::shared_ptr<SessionStream> s;
    {
      MutexLock lock(&mu);
      if (stream == nullptr || stream->dead()) {
        // A broken stream finishes on its own; the destructor frees it.
        stream = SessionStream::Open(*stub);
        streams.push_back(stream);
      }
      s = stream;
    }
    const uint64_t id = s->Send(call, std::move(promise));
    if (id == 0) return {nullptr, 0};
    return {std::move(s), id};
  }
};

absl::StatusOr<v1::ManagerResult> ManagerFuture::Get() {
  if (!f_.valid()) return absl::FailedPreconditionError("empty ManagerFuture");
  return f_.get();
}

bool ManagerFuture::Ready() const {
  return f_.valid() &&
         f_.wait_for(std::chrono::seconds(0)) == std::future_status::ready;
}

v1::ManagerCall Manager::MakeCall(v1::ObjectType type, absl::string_view op,
                                  absl::string_view name) {
  v1::ManagerCall c;
  c.set_type(type);
  c.set_op(std::string(op));
  c.set_name(std::string(name));
  return c;
}

ManagerFuture Manager::Async(const v1::ManagerCall& call) {
  Promise p;
  std::future<Result> f = p.get_future();
  if (!rpc_->pipelined) {
    p.set_value(rpc_->Unary(&Stub::Call, call));
  } else {
    rpc_->Send(call, std::move(p));
  }
  return ManagerFuture(std::move(f));
}

absl::StatusOr<v1::ManagerResult> Manager::Call(const v1::ManagerCall& call,
                                                absl::Duration wait) {
  if (!rpc_->pipelined) return rpc_->Unary(&Stub::Call, call, wait);
  Promise p;
  std::future<Result> f = p.get_future();
  auto [stream, id] = rpc_->Send(call, std::move(p));
  if (stream == nullptr) {
    // The stream broke as we sent: one unary attempt instead.
    return rpc_->Unary(&Stub::Call, call, wait);
  }
  if (wait == absl::InfiniteDuration()) return f.get();
  if (f.wait_for(absl::ToChronoMilliseconds(wait + rpc_->rpc_timeout)) ==
      std::future_status::ready) {
    return f.get();
  }
  stream->Cancel(id);
  stream->Forget(id);
  return absl::DeadlineExceededError(absl::StrCat(
      "manager ", call.op(), " of '", call.name(), "' got no answer in time"));
}

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

constexpr const char* OpName(v1::ManagerOp op) { return v1::ManagerOpName(op); }
using Op = v1::ManagerOp;
using Type = v1::ManagerType;

std::vector<std::string> ResultValues(const v1::ManagerResult& r) {
  return {r.values().begin(), r.values().end()};
}

std::map<std::string, std::string> ResultItems(const v1::ManagerResult& r) {
  std::map<std::string, std::string> out;
  for (const auto& kv : r.items()) out[kv.key()] = kv.value();
  return out;
}

}  // namespace

// ---------------------------------------------------------------- Manager

Manager::Manager(std::shared_ptr<grpc::Channel> channel, ManagerOptions options)
    : options_(std::move(options)), rpc_(std::make_unique<Rpc>()) {
  rpc_->stub = v1::ManagerService::NewStub(std::move(channel));
  rpc_->rpc_timeout = options_.rpc_timeout;
  rpc_->pipelined = options_.pipelined;
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
      rpc_->Unary(&Stub::OpenSession, req);
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
  return rpc_->Unary(&Stub::CloseSession, req).status();
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
    absl::Status s = rpc_->Unary(&Stub::KeepAlive, req).status();
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
  return rpc_->Unary(&Stub::ListObjects, req);
}

absl::StatusOr<bool> Manager::DeleteObject(absl::string_view name) {
  v1::DeleteObjectRequest req;
  req.set_name(std::string(name));
  absl::StatusOr<v1::DeleteObjectResponse> r =
      rpc_->Unary(&Stub::DeleteObject, req);
  if (!r.ok()) return r.status();
  return r->deleted();
}

// ---------------------------------------------------------------- proxies
// Each proxy method builds one ManagerCall (api/forq/v1/manager_ops.h names
// the op) and reads the fields its op fills in.

namespace {

v1::ManagerCall DictCall(const std::string& name, Op op,
                         absl::string_view key = "") {
  v1::ManagerCall c = Manager::MakeCall(v1::OBJECT_TYPE_DICT, OpName(op), name);
  c.set_key(std::string(key));
  return c;
}

v1::ManagerCall ListCall(const std::string& name, Op op) {
  return Manager::MakeCall(v1::OBJECT_TYPE_LIST, OpName(op), name);
}

}  // namespace

// ---- references to objects (shared objects inside shared objects).

std::string Dict::Ref() const { return v1::MakeManagerRef(Type::kDict, name_); }
std::string List::Ref() const { return v1::MakeManagerRef(Type::kList, name_); }
std::string Value::Ref() const {
  return v1::MakeManagerRef(Type::kValue, name_);
}
std::string Array::Ref() const {
  return v1::MakeManagerRef(Type::kArray, name_);
}
std::string Namespace::Ref() const {
  return v1::MakeManagerRef(Type::kNamespace, name_);
}
std::string Queue::Ref() const {
  return v1::MakeManagerRef(Type::kQueue, name_);
}
std::string Pipe::Ref() const { return v1::MakeManagerRef(Type::kPipe, name_); }
std::string Lock::Ref() const { return v1::MakeManagerRef(Type::kLock, name_); }
std::string RLock::Ref() const {
  return v1::MakeManagerRef(Type::kRLock, name_);
}
std::string Semaphore::Ref() const {
  return v1::MakeManagerRef(
      bounded_ ? Type::kBoundedSemaphore : Type::kSemaphore, name_);
}
std::string Event::Ref() const {
  return v1::MakeManagerRef(Type::kEvent, name_);
}
std::string Barrier::Ref() const {
  return v1::MakeManagerRef(Type::kBarrier, name_);
}
std::string Condition::Ref() const {
  return v1::MakeManagerRef(Type::kCondition, name_);
}

std::optional<Manager::ObjectRef> Manager::ParseRef(absl::string_view value) {
  Type type{};
  std::string_view name;
  if (!v1::ParseManagerRef(std::string_view(value.data(), value.size()), &type,
                           &name)) {
    return std::nullopt;
  }
  ObjectRef r;
  r.type = static_cast<v1::ObjectType>(static_cast<int>(type));
  r.name = std::string(name);
  return r;
}

absl::StatusOr<std::string> Dict::Get(absl::string_view key) const {
  auto r = m_->Call(DictCall(name_, Op::kGet, key));
  if (!r.ok()) return r.status();
  return std::move(*r->mutable_value());
}

ManagerFuture Dict::GetAsync(absl::string_view key) const {
  return m_->Async(DictCall(name_, Op::kGet, key));
}

absl::Status Dict::Set(absl::string_view key, absl::string_view value) const {
  v1::ManagerCall c = DictCall(name_, Op::kSet, key);
  c.set_value(std::string(value));
  return Ok(m_->Call(c));
}

ManagerFuture Dict::SetAsync(absl::string_view key,
                             absl::string_view value) const {
  v1::ManagerCall c = DictCall(name_, Op::kSet, key);
  c.set_value(std::string(value));
  return m_->Async(c);
}

absl::StatusOr<bool> Dict::Delete(absl::string_view key) const {
  auto r = m_->Call(DictCall(name_, Op::kDelete, key));
  if (!r.ok()) return r.status();
  return r->found();
}

absl::StatusOr<bool> Dict::Contains(absl::string_view key) const {
  auto r = m_->Call(DictCall(name_, Op::kContains, key));
  if (!r.ok()) return r.status();
  return r->found();
}

absl::StatusOr<std::vector<std::string>> Dict::Keys() const {
  auto r = m_->Call(DictCall(name_, Op::kKeys));
  if (!r.ok()) return r.status();
  return ResultValues(*r);
}

absl::StatusOr<std::vector<std::string>> Dict::Values() const {
  auto r = m_->Call(DictCall(name_, Op::kValues));
  if (!r.ok()) return r.status();
  return ResultValues(*r);
}

absl::StatusOr<std::vector<std::pair<std::string, std::string>>> Dict::Items()
    const {
  auto r = m_->Call(DictCall(name_, Op::kItems));
  if (!r.ok()) return r.status();
  std::vector<std::pair<std::string, std::string>> out;
  out.reserve(r->items_size());
  for (auto& kv : *r->mutable_items()) {
    out.emplace_back(std::move(*kv.mutable_key()),
                     std::move(*kv.mutable_value()));
  }
  return out;
}

absl::StatusOr<std::map<std::string, std::string>> Dict::Copy() const {
  auto r = m_->Call(DictCall(name_, Op::kItems));
  if (!r.ok()) return r.status();
  return ResultItems(*r);
}

absl::StatusOr<std::pair<std::string, std::string>> Dict::PopItem() const {
  auto r = m_->Call(DictCall(name_, Op::kPopItem));
  if (!r.ok()) return r.status();
  if (r->items_size() != 1) return absl::InternalError("popitem: no entry");
  return std::make_pair(r->items(0).key(), r->items(0).value());
}

absl::StatusOr<int64_t> Dict::Len() const {
  auto r = m_->Call(DictCall(name_, Op::kLen));
  if (!r.ok()) return r.status();
  return r->length();
}

absl::Status Dict::Update(
    const std::map<std::string, std::string>& items) const {
  v1::ManagerCall c = DictCall(name_, Op::kUpdate);
  for (const auto& [k, v] : items) {
    v1::KeyValue* kv = c.add_items();
    kv->set_key(k);
    kv->set_value(v);
  }
  return Ok(m_->Call(c));
}

absl::Status Dict::Clear() const {
  return Ok(m_->Call(DictCall(name_, Op::kClear)));
}

absl::Status Dict::CompareAndSet(absl::string_view key,
                                 std::optional<std::string> expected,
                                 absl::string_view value) const {
  v1::ManagerCall c = DictCall(name_, Op::kCompareAndSet, key);
  c.set_value(std::string(value));
  if (expected) {
    c.set_expected(*expected);
  } else {
    c.set_expect_absent(true);
  }
  return Ok(m_->Call(c));
}

absl::StatusOr<std::string> Dict::SetIfAbsent(absl::string_view key,
                                              absl::string_view value) const {
  v1::ManagerCall c = DictCall(name_, Op::kSetIfAbsent, key);
  c.set_value(std::string(value));
  auto r = m_->Call(c);
  if (!r.ok()) return r.status();
  return r->value();
}

absl::StatusOr<int64_t> List::Append(absl::string_view value) const {
  v1::ManagerCall c = ListCall(name_, Op::kAppend);
  c.set_value(std::string(value));
  auto r = m_->Call(c);
  if (!r.ok()) return r.status();
  return r->length();
}

absl::StatusOr<int64_t> List::Extend(
    const std::vector<std::string>& values) const {
  v1::ManagerCall c = ListCall(name_, Op::kExtend);
  for (const auto& v : values) c.add_values(v);
  auto r = m_->Call(c);
  if (!r.ok()) return r.status();
  return r->length();
}

absl::StatusOr<std::string> List::Get(int64_t index) const {
  v1::ManagerCall c = ListCall(name_, Op::kGet);
  c.set_index(index);
  auto r = m_->Call(c);
  if (!r.ok()) return r.status();
  return r->value();
}

absl::Status List::Set(int64_t index, absl::string_view value) const {
  v1::ManagerCall c = ListCall(name_, Op::kSet);
  c.set_index(index);
  c.set_value(std::string(value));
  return Ok(m_->Call(c));
}

absl::StatusOr<std::string> List::Pop(std::optional<int64_t> index) const {
  v1::ManagerCall c = ListCall(name_, Op::kPop);
  if (index) c.set_index(*index);
  auto r = m_->Call(c);
  if (!r.ok()) return r.status();
  return r->value();
}

absl::Status List::Insert(int64_t index, absl::string_view value) const {
  v1::ManagerCall c = ListCall(name_, Op::kInsert);
  c.set_index(index);
  c.set_value(std::string(value));
  return Ok(m_->Call(c));
}

absl::Status List::Remove(absl::string_view value) const {
  v1::ManagerCall c = ListCall(name_, Op::kRemove);
  c.set_value(std::string(value));
  return Ok(m_->Call(c));
}

absl::StatusOr<int64_t> List::Len() const {
  auto r = m_->Call(ListCall(name_, Op::kLen));
  if (!r.ok()) return r.status();
  return r->length();
}

absl::StatusOr<std::vector<std::string>> List::Slice(
    std::optional<int64_t> start, std::optional<int64_t> stop) const {
  v1::ManagerCall c = ListCall(name_, Op::kSlice);
  if (start) c.set_start(*start);
  if (stop) c.set_stop(*stop);
  auto r = m_->Call(c);
  if (!r.ok()) return r.status();
  return ResultValues(*r);
}

absl::Status List::Clear() const {
  return Ok(m_->Call(ListCall(name_, Op::kClear)));
}

absl::StatusOr<std::string> List::Add(int64_t index,
                                      absl::string_view delta) const {
  v1::ManagerCall c = ListCall(name_, Op::kAdd);
  c.set_index(index);
  c.set_delta(std::string(delta));
  auto r = m_->Call(c);
  if (!r.ok()) return r.status();
  return r->value();
}

absl::StatusOr<int64_t> List::Index(absl::string_view value,
                                    std::optional<int64_t> start,
                                    std::optional<int64_t> stop) const {
  v1::ManagerCall c = ListCall(name_, Op::kIndex);
  c.set_value(std::string(value));
  if (start) c.set_start(*start);
  if (stop) c.set_stop(*stop);
  auto r = m_->Call(c);
  if (!r.ok()) return r.status();
  return r->count();
}

absl::StatusOr<int64_t> List::Count(absl::string_view value) const {
  v1::ManagerCall c = ListCall(name_, Op::kCount);
  c.set_value(std::string(value));
  auto r = m_->Call(c);
  if (!r.ok()) return r.status();
  return r->count();
}

absl::StatusOr<bool> List::Contains(absl::string_view value) const {
  v1::ManagerCall c = ListCall(name_, Op::kContains);
  c.set_value(std::string(value));
  auto r = m_->Call(c);
  if (!r.ok()) return r.status();
  return r->found();
}

absl::Status List::Reverse() const {
  return Ok(m_->Call(ListCall(name_, Op::kReverse)));
}

absl::Status List::Sort(absl::string_view key, bool reverse) const {
  v1::ManagerCall c = ListCall(name_, Op::kSort);
  c.set_key(std::string(key));
  c.set_reverse(reverse);
  return Ok(m_->Call(c));
}

absl::StatusOr<int64_t> List::Repeat(int64_t n) const {
  v1::ManagerCall c = ListCall(name_, Op::kRepeat);
  c.set_n(static_cast<int32_t>(std::clamp<int64_t>(n, -1, INT32_MAX)));
  auto r = m_->Call(c);
  if (!r.ok()) return r.status();
  return r->length();
}

absl::StatusOr<int64_t> List::SetSlice(
    std::optional<int64_t> start, std::optional<int64_t> stop,
    const std::vector<std::string>& values) const {
  v1::ManagerCall c = ListCall(name_, Op::kSetSlice);
  if (start) c.set_start(*start);
  if (stop) c.set_stop(*stop);
  for (const auto& v : values) c.add_values(v);
  auto r = m_->Call(c);
  if (!r.ok()) return r.status();
  return r->length();
}

absl::StatusOr<int64_t> List::DeleteSlice(std::optional<int64_t> start,
                                          std::optional<int64_t> stop) const {
  v1::ManagerCall c = ListCall(name_, Op::kDeleteSlice);
  if (start) c.set_start(*start);
  if (stop) c.set_stop(*stop);
  auto r = m_->Call(c);
  if (!r.ok()) return r.status();
  return r->length();
}

// ---------------------------------------------------------------- Value

namespace {
v1::ManagerCall ValueCall(const std::string& name, Op op,
                          const std::string& typecode) {
  v1::ManagerCall c =
      Manager::MakeCall(v1::OBJECT_TYPE_VALUE, OpName(op), name);
  c.set_typecode(typecode);
  return c;
}
}  // namespace

absl::StatusOr<std::string> Value::Get() const {
  auto r = m_->Call(ValueCall(name_, Op::kGet, typecode_));
  if (!r.ok()) return r.status();
  return r->value();
}

absl::Status Value::Set(absl::string_view value) const {
  v1::ManagerCall c = ValueCall(name_, Op::kSet, typecode_);
  c.set_value(std::string(value));
  return Ok(m_->Call(c));
}

absl::StatusOr<std::string> Value::Add(absl::string_view delta) const {
  v1::ManagerCall c = ValueCall(name_, Op::kAdd, typecode_);
  c.set_delta(std::string(delta));
  auto r = m_->Call(c);
  if (!r.ok()) return r.status();
  return r->value();
}

absl::Status Value::CompareAndSet(absl::string_view expected,
                                  absl::string_view value) const {
  v1::ManagerCall c = ValueCall(name_, Op::kCompareAndSet, typecode_);
  c.set_expected(std::string(expected));
  c.set_value(std::string(value));
  return Ok(m_->Call(c));
}

// ---------------------------------------------------------------- Array

v1::ManagerCall Array::Base(absl::string_view op) const {
  v1::ManagerCall c = Manager::MakeCall(v1::OBJECT_TYPE_ARRAY, op, name_);
  c.set_length(length_);
  c.set_typecode(typecode_);
  // Creation values ride along; an existing array ignores them only if it
  // already exists (the server creates from them at first use).
  for (const auto& v : initial_) c.add_values(v);
  return c;
}

absl::StatusOr<std::string> Array::Get(int64_t index) const {
  v1::ManagerCall c = Base(OpName(Op::kGet));
  c.set_index(index);
  auto r = m_->Call(c);
  if (!r.ok()) return r.status();
  return r->value();
}

absl::Status Array::Set(int64_t index, absl::string_view value) const {
  v1::ManagerCall c = Base(OpName(Op::kSet));
  c.set_index(index);
  c.set_value(std::string(value));
  return Ok(m_->Call(c));
}

absl::StatusOr<std::string> Array::Add(int64_t index,
                                       absl::string_view delta) const {
  v1::ManagerCall c = Base(OpName(Op::kAdd));
  c.set_index(index);
  c.set_delta(std::string(delta));
  auto r = m_->Call(c);
  if (!r.ok()) return r.status();
  return r->value();
}

absl::StatusOr<std::vector<std::string>> Array::Slice(
    std::optional<int64_t> start, std::optional<int64_t> stop) const {
  v1::ManagerCall c = Base(OpName(Op::kSlice));
  if (start) c.set_start(*start);
  if (stop) c.set_stop(*stop);
  auto r = m_->Call(c);
  if (!r.ok()) return r.status();
  return ResultValues(*r);
}

absl::StatusOr<int64_t> Array::Len() const {
  auto r = m_->Call(Base(OpName(Op::kLen)));
  if (!r.ok()) return r.status();
  return r->length();
}

absl::Status Array::SetSlice(std::optional<int64_t> start,
                             std::optional<int64_t> stop,
                             const std::vector<std::string>& values) const {
  v1::ManagerCall c = Base(OpName(Op::kSetSlice));
  c.clear_values();
  if (start) c.set_start(*start);
  if (stop) c.set_stop(*stop);
  for (const auto& v : values) c.add_values(v);
  return Ok(m_->Call(c));
}

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

// ---------------------------------------------------------------- Namespace

namespace {
v1::ManagerCall NsCall(const std::string& name, Op op,
                       absl::string_view attr = "") {
  v1::ManagerCall c =
      Manager::MakeCall(v1::OBJECT_TYPE_NAMESPACE, OpName(op), name);
  c.set_key(std::string(attr));
  return c;
}
}  // namespace

absl::StatusOr<std::string> Namespace::Get(absl::string_view attr) const {
  auto r = m_->Call(NsCall(name_, Op::kGet, attr));
  if (!r.ok()) return r.status();
  return r->value();
}

absl::Status Namespace::Set(absl::string_view attr,
                            absl::string_view value) const {
  v1::ManagerCall c = NsCall(name_, Op::kSet, attr);
  c.set_value(std::string(value));
  return Ok(m_->Call(c));
}

absl::Status Namespace::Delete(absl::string_view attr) const {
  return Ok(m_->Call(NsCall(name_, Op::kDelete, attr)));
}

absl::StatusOr<std::map<std::string, std::string>> Namespace::List() const {
  auto r = m_->Call(NsCall(name_, Op::kItems));
  if (!r.ok()) return r.status();
  return ResultItems(*r);
}

// ---------------------------------------------------------------- Queue

namespace {
v1::ManagerCall QueueCall(const std::string& name, Op op, int64_t maxsize,
                          absl::Duration timeout = absl::InfiniteDuration()) {
  v1::ManagerCall c =
      Manager::MakeCall(v1::OBJECT_TYPE_QUEUE, OpName(op), name);
  c.set_maxsize(maxsize);
  SetTimeout(c, timeout);
  return c;
}
}  // namespace

absl::Status Queue::Put(absl::string_view item, absl::Duration timeout) const {
  v1::ManagerCall c = QueueCall(name_, Op::kPut, maxsize_, timeout);
  c.set_value(std::string(item));
  return Ok(m_->Call(c, timeout));
}

absl::StatusOr<std::string> Queue::Get(absl::Duration timeout) const {
  auto r = m_->Call(QueueCall(name_, Op::kGet, maxsize_, timeout), timeout);
  if (!r.ok()) return r.status();
  return r->value();
}

absl::StatusOr<v1::QueueResponse> Queue::Size() const {
  auto r = m_->Call(QueueCall(name_, Op::kSize, maxsize_));
  if (!r.ok()) return r.status();
  v1::QueueResponse out;
  out.set_size(r->length());
  out.set_maxsize(r->maxsize());
  out.set_empty(r->found());
  out.set_full(r->flag());
  out.set_unfinished(r->unfinished());
  return out;
}

absl::Status Queue::TaskDone() const {
  return Ok(m_->Call(QueueCall(name_, Op::kTaskDone, maxsize_)));
}

absl::Status Queue::Join(absl::Duration timeout) const {
  return Ok(m_->Call(QueueCall(name_, Op::kJoin, maxsize_, timeout), timeout));
}

// ---------------------------------------------------------------- Pipe

namespace {
v1::ManagerCall PipeCall(const std::string& name, Op op, bool one_way, int end,
                         absl::Duration timeout = absl::InfiniteDuration()) {
  v1::ManagerCall c = Manager::MakeCall(v1::OBJECT_TYPE_PIPE, OpName(op), name);
  c.set_one_way(one_way);
  c.set_end(end);
  SetTimeout(c, timeout);
  return c;
}
}  // namespace

absl::Status Pipe::Send(int end, absl::string_view message) const {
  v1::ManagerCall c = PipeCall(name_, Op::kSend, one_way_, end);
  c.set_value(std::string(message));
  return Ok(m_->Call(c));
}

absl::StatusOr<std::string> Pipe::Recv(int end, absl::Duration timeout) const {
  auto r =
      m_->Call(PipeCall(name_, Op::kRecv, one_way_, end, timeout), timeout);
  if (!r.ok()) return r.status();
  return r->value();
}

absl::StatusOr<bool> Pipe::Poll(int end) const {
  auto r = m_->Call(PipeCall(name_, Op::kPoll, one_way_, end));
  if (!r.ok()) return r.status();
  return r->flag();
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
