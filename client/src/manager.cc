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
#include "client/src/local_socket.h"
#include "client/src/manager_internal.h"
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

  // True when no operation is queued or waits for its answer here.
  bool idle() {
    MutexLock lock(&mu_);
    return waiting_.empty() && pending_.ops_size() == 0;
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
        ready.emplace_back(std::move(it->second),
                           manager_internal::TakeResult(r));
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
  // ManagerOptions::local_socket; null = none.
  std::unique_ptr<manager_internal::LocalSocket> local;
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

  // One blocking call outside the stream: over the local socket when there
  // is one, else a unary Call.
  absl::StatusOr<v1::ManagerResult> Single(const v1::ManagerCall& call,
                                           absl::Duration wait) {
    if (local != nullptr) return local->Call(call, wait);
    return Unary(&Stub::Call, call, wait);
  }

  // True when no operation travels on the stream: every one sent before is
  // answered, so a blocking call can go as one unary Call in the same order,
  // without the stream's hand-off from gRPC's reader thread to the caller.
  bool StreamIdle() {
    MutexLock lock(&mu);
    return stream == nullptr || stream->idle();
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
    p.set_value(rpc_->Single(call, absl::ZeroDuration()));
  } else {
    rpc_->Send(call, std::move(p));
  }
  return ManagerFuture(std::move(f));
}

absl::StatusOr<v1::ManagerResult> Manager::Call(const v1::ManagerCall& call,
                                                absl::Duration wait) {
  if (!rpc_->pipelined || rpc_->StreamIdle()) {
    return rpc_->Single(call, wait);
  }
  Promise p;
  std::future<Result> f = p.get_future();
  auto [stream, id] = rpc_->Send(call, std::move(p));
  if (stream == nullptr) {
    // The stream broke as we sent: one attempt outside it instead.
    return rpc_->Single(call, wait);
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

// ---------------------------------------------------------------- Manager

Manager::Manager(std::shared_ptr<grpc::Channel> channel, ManagerOptions options)
    : options_(std::move(options)), rpc_(std::make_unique<Rpc>()) {
  rpc_->stub = v1::ManagerService::NewStub(std::move(channel));
  rpc_->rpc_timeout = options_.rpc_timeout;
  rpc_->pipelined = options_.pipelined;
  if (!options_.local_socket.empty()) {
    rpc_->local = std::make_unique<manager_internal::LocalSocket>(
        options_.local_socket,
        options_.token.empty() ? "" : absl::StrCat("Bearer ", options_.token),
        options_.rpc_timeout);
  }
}

namespace {

ManagerOptions WithClientToken(const Client& client, ManagerOptions options) {
  if (options.token.empty()) options.token = client.options().token;
  return options;
}

}  // namespace

Manager::Manager(const Client& client, ManagerOptions options)
    : Manager(client.channel(), WithClientToken(client, std::move(options))) {}

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
  if (!keepalive_.joinable()) {
    keepalive_ = std::thread([this] { KeepAliveLoop(); });
  }
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

// ---- references to objects (shared objects inside shared objects).

std::string ManagerProxy::Ref() const {
  return v1::MakeManagerRef(static_cast<v1::ManagerType>(type_), name_);
}

std::optional<Manager::ObjectRef> Manager::ParseRef(absl::string_view value) {
  v1::ManagerType type{};
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

}  // namespace forq
