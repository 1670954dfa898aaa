#include "server/manager/manager_service.h"

#include <atomic>
#include <chrono>
#include <deque>
#include <memory>
#include <optional>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "google/protobuf/util/time_util.h"
#include <grpcpp/grpcpp.h>

#include "api/forq/v1/manager_ops.h"
#include "forq/v1/manager.grpc.pb.h"
#include "forq/v1/manager.pb.h"
#include "server/auth/request_checks.h"
#include "server/manager/manager_messages.h"
#include "server/manager/task_bridge.h"

namespace forq::server {
namespace {

using worker::ManagerOp;
using worker::ManagerReply;
using worker::ManagerRequest;
using worker::ManagerType;
using Op = worker::ManagerOp;
using Type = worker::ManagerType;

grpc::Status ToGrpcStatus(const absl::Status& s) {
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()),
                      std::string(s.message()));
}

// The caller's credentials (forwarded with the call when another node owns
// the Manager) and whether another node forwarded it here.
ManagerCallOrigin OriginOf(grpc::CallbackServerContext* ctx) {
  ManagerCallOrigin o;
  const auto& md = ctx->client_metadata();
  auto it = md.find("authorization");
  if (it != md.end()) {
    o.authorization.assign(it->second.data(), it->second.size());
  }
  o.forwarded = md.find(kManagerForwardedHeader) != md.end();
  return o;
}

using Record = std::function<void(grpc::StatusCode,
                                  std::chrono::steady_clock::time_point)>;
using Fill = std::function<void(const ManagerReply&)>;

// The status a unary call ends with; fills the response on success and
// counts the call when `record` is set.
grpc::Status Answer(const absl::StatusOr<ManagerReply>& r, const Fill& fill,
                    const Record* record,
                    std::chrono::steady_clock::time_point start) {
  grpc::Status status = grpc::Status::OK;
  if (r.ok()) {
    fill(*r);
  } else {
    status = ToGrpcStatus(r.status());
  }
  if (record != nullptr) (*record)(status.error_code(), start);
  return status;
}

// Finishes the RPC of a request the core answers later (parked, or waiting
// for its batch to be durable). gRPC callback reactors are the one place
// forq uses new + `delete this` (in OnDone): gRPC owns the reactor's
// lifetime between the two.
class OpReactor final : public grpc::ServerUnaryReactor {
 public:
  OpReactor(ManagerRouter& core, uint64_t waiter, Fill fill,
            const Record* record, std::chrono::steady_clock::time_point start)
      : core_(core),
        waiter_(waiter),
        fill_(std::move(fill)),
        record_(record),
        start_(start) {}
  void Complete(const absl::StatusOr<ManagerReply>& r) {
    Finish(Answer(r, fill_, record_, start_));
  }
  // The client went away or its deadline passed: unpark, which finishes
  // the RPC with Cancelled (a no-op if it already completed).
  void OnCancel() override { core_.Cancel(waiter_); }
  void OnDone() override { delete this; }

 private:
  ManagerRouter& core_;
  const uint64_t waiter_;
  const Fill fill_;
  const Record* const record_;
  const std::chrono::steady_clock::time_point start_;
};

// Runs one unary request on the core. When the core answers at once (most
// operations), the RPC finishes on gRPC's default reactor, whose OnDone
// gRPC runs inline; a reactor of ours would have its OnDone run by gRPC's
// executor, a thread hand-off per call. Otherwise an OpReactor finishes it.
grpc::ServerUnaryReactor* RunUnary(ManagerRouter& core,
                                   grpc::CallbackServerContext* ctx,
                                   ManagerRequest request, Fill fill,
                                   const Record* record = nullptr) {
  struct Shared {
    Mutex mu;
    std::optional<absl::StatusOr<ManagerReply>> early ABSL_GUARDED_BY(mu);
    OpReactor* reactor ABSL_GUARDED_BY(mu) = nullptr;
  };
  const auto start = record != nullptr
                         ? std::chrono::steady_clock::now()
                         : std::chrono::steady_clock::time_point();
  auto shared = std::make_shared<Shared>();
  const uint64_t waiter = core.Execute(
      std::move(request),
      [shared](absl::StatusOr<ManagerReply> r) {
        OpReactor* reactor = nullptr;
        {
          MutexLock lock(&shared->mu);
          reactor = shared->reactor;
          if (reactor == nullptr) {
            shared->early = std::move(r);
            return;
          }
        }
        reactor->Complete(r);
      },
      "", OriginOf(ctx));
  std::optional<absl::StatusOr<ManagerReply>> early;
  {
    MutexLock lock(&shared->mu);
    if (!shared->early) {
      // Answered later: gRPC delivers OnCancel/OnDone only after this
      // returns, and Complete may run before that (as gRPC allows).
      shared->reactor =
          new OpReactor(core, waiter, std::move(fill), record, start);
      return shared->reactor;
    }
    early = std::move(shared->early);
  }
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(Answer(*early, fill, record, start));
  return reactor;
}

v1::ObjectType ToProtoType(Type t) {
  return static_cast<v1::ObjectType>(static_cast<int>(t));
}

// A Watch refused before it started.
class FailedWatch final : public grpc::ServerWriteReactor<v1::ManagerEvent> {
 public:
  explicit FailedWatch(grpc::Status s) { Finish(std::move(s)); }
  void OnDone() override { delete this; }
};

// Streams ManagerChanges of one object. Kept alive by shared_ptr (a
// self-reference dropped in OnDone) rather than `delete this`, because the
// core may still be running Flush on another thread when gRPC is done.
class WatchReactor final : public grpc::ServerWriteReactor<v1::ManagerEvent>,
                           public ManagerWatchSink {
 public:
  static grpc::ServerWriteReactor<v1::ManagerEvent>* Start(
      std::shared_ptr<ObjectManager> core, const std::string& name) {
    auto r = std::make_shared<WatchReactor>(std::move(core));
    r->self_ = r;
    r->watch_id_ = r->core_->Watch(name, r);
    r->Flush();
    return r.get();
  }

  explicit WatchReactor(std::shared_ptr<ObjectManager> core)
      : core_(std::move(core)) {}

  void Push(const ManagerChange& c) override {
    MutexLock lock(&mu_);
    if (buffer_.size() >= kMaxBuffered) {
      overflow_ = true;
      return;
    }
    v1::ManagerEvent e;
    e.set_name(c.name);
    e.set_type(ToProtoType(c.type));
    e.set_op(c.op);
    e.set_key(c.key);
    e.set_value(c.value);
    e.set_version(c.version);
    *e.mutable_time() =
        google::protobuf::util::TimeUtil::NanosecondsToTimestamp(
            absl::ToUnixNanos(c.time));
    buffer_.push_back(std::move(e));
  }

  // Starts the next write unless one is in flight. Finish is only ever
  // called with no write in flight, so StartWrite never follows Finish.
  void Flush() override {
    grpc::Status finish;
    {
      MutexLock lock(&mu_);
      if (writing_ || finished_) return;
      if (overflow_ || cancelled_) {
        finished_ = true;
        finish = cancelled_ ? grpc::Status::CANCELLED
                            : grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                                           "watcher fell too far behind");
      } else {
        if (buffer_.empty()) return;
        current_ = std::move(buffer_.front());
        buffer_.pop_front();
        writing_ = true;
      }
    }
    if (!finish.ok()) {
      Finish(finish);
    } else {
      StartWrite(&current_);
    }
  }

  void OnWriteDone(bool ok) override {
    {
      MutexLock lock(&mu_);
      writing_ = false;
      if (!ok) cancelled_ = true;
    }
    Flush();
  }

  void OnCancel() override {
    {
      MutexLock lock(&mu_);
      cancelled_ = true;
    }
    Flush();
  }

  void OnDone() override {
    core_->Unwatch(watch_id_);
    // May destroy this object (unless a Flush on another thread holds a
    // reference); nothing touches members afterwards.
    std::shared_ptr<WatchReactor> self = std::move(self_);
  }

 private:
  static constexpr size_t kMaxBuffered = 10000;

  const std::shared_ptr<ObjectManager> core_;
  std::shared_ptr<WatchReactor> self_;
  uint64_t watch_id_ = 0;
  Mutex mu_;
  std::deque<v1::ManagerEvent> buffer_ ABSL_GUARDED_BY(mu_);
  v1::ManagerEvent current_;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool overflow_ ABSL_GUARDED_BY(mu_) = false;
};

// A Watch on a cluster node that does not own the Manager: relays the
// owner's event stream, one event at a time (the next read starts when the
// client has taken the previous event, so a slow client slows the owner's
// stream, whose own backlog bound then applies). Deletes itself when both
// the client-side and the server-side call are done.
class RelayWatch final : public grpc::ServerWriteReactor<v1::ManagerEvent> {
 public:
  static grpc::ServerWriteReactor<v1::ManagerEvent>* Start(
      ManagerRouter& router, const v1::ManagerWatchRequest& request,
      const ManagerCallOrigin& origin) {
    auto* r = new RelayWatch(request);
    absl::Status s =
        router.ForwardWatch(r->request_, origin, &r->ctx_, &r->reader_);
    if (!s.ok()) {
      r->pending_.store(1);  // only the server side runs
      r->Finish(ToGrpcStatus(s));
      return r;
    }
    r->reader_.StartRead(&r->event_);
    r->reader_.StartCall();
    return r;
  }

  void OnWriteDone(bool ok) override {
    if (ok) {
      reader_.StartRead(&event_);
    } else {
      ctx_.TryCancel();
    }
  }
  void OnCancel() override { ctx_.TryCancel(); }
  void OnDone() override { Release(); }

 private:
  class Reader final : public grpc::ClientReadReactor<v1::ManagerEvent> {
   public:
    explicit Reader(RelayWatch* relay) : relay_(relay) {}
    void OnReadDone(bool ok) override {
      // !ok: the owner's stream ended; OnDone brings its status.
      if (ok) relay_->StartWrite(&relay_->event_);
    }
    void OnDone(const grpc::Status& s) override {
      relay_->Finish(s);
      relay_->Release();
    }

   private:
    RelayWatch* const relay_;
  };

  explicit RelayWatch(const v1::ManagerWatchRequest& request)
      : request_(request), reader_(this) {}
  void Release() {
    if (pending_.fetch_sub(1) == 1) delete this;
  }

  const v1::ManagerWatchRequest request_;
  grpc::ClientContext ctx_;
  v1::ManagerEvent event_;
  Reader reader_;
  // Sides still running: the server call and the client call.
  std::atomic<int> pending_{2};
};

// The pipelined Session stream: reads batches of operations, runs each on
// the core as it arrives (a parked one holds up nothing else), and writes
// results back in completion order, coalescing whatever completed while the
// previous write was in flight into one message. Owned by shared_ptr (a
// self-reference dropped in OnDone) because completion callbacks of parked
// operations may run on other threads after gRPC is done with it. The
// stream carries raw bytes (the service marks Session raw) parsed here, so a
// message that does not parse ends the stream INVALID_ARGUMENT (after the
// operations read before it are answered; parked ones are cancelled)
// instead of passing for the client's half-close.
class SessionReactor final
    : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>,
      public std::enable_shared_from_this<SessionReactor> {
 public:
  static constexpr size_t kMaxInFlight = 100000;

  static grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* Start(
      ManagerRouter& core, ManagerCallOrigin origin) {
    auto r = std::make_shared<SessionReactor>(core, std::move(origin));
    r->self_ = r;
    r->StartRead(&r->in_buf_);
    return r.get();
  }

  SessionReactor(ManagerRouter& core, ManagerCallOrigin origin)
      : core_(core), origin_(std::move(origin)) {}

  void OnReadDone(bool ok) override {
    if (!ok) {
      {
        MutexLock lock(&mu_);
        reading_ = false;
      }
      MaybeWrite();
      return;
    }
    ++messages_read_;
    in_.Clear();
    if (!grpc::SerializationTraits<v1::SessionRequest>::Deserialize(&in_buf_,
                                                                    &in_)
             .ok()) {
      EndWith(ToGrpcStatus(MalformedStreamMessage(
          "/forq.v1.ManagerService/Session",
          v1::SessionRequest::descriptor()->full_name(), messages_read_)));
      return;
    }
    {
      // The message's changes go to the store as one group commit.
      const ManagerRouter::WriteHold hold(core_, in_.ops_size() > 1);
      ExecuteOps(shared_from_this());
    }
    StartRead(&in_buf_);
  }

  // Runs the operations of the message just read.
  void ExecuteOps(const std::shared_ptr<SessionReactor>& self) {
    for (v1::SessionOp& op : *in_.mutable_ops()) {
      const uint64_t id = op.id();
      if (op.cancel()) {
        uint64_t waiter = 0;
        {
          MutexLock lock(&mu_);
          auto it = parked_.find(id);
          if (it != parked_.end()) waiter = it->second;
        }
        core_.Cancel(waiter);
        continue;
      }
      absl::StatusOr<ManagerRequest> req = FromCall(
          op.call(),
          StreamTimeoutMs(op.call().has_timeout(), op.call().timeout()));
      bool full = false;
      {
        MutexLock lock(&mu_);
        full = in_flight_ >= kMaxInFlight;
        if (req.ok() && !full) ++in_flight_;
      }
      if (!req.ok() || full) {
        Complete(id,
                 full ? absl::ResourceExhaustedError(
                            absl::StrCat("more than ", kMaxInFlight,
                                         " operations in flight on one stream"))
                      : absl::StatusOr<ManagerReply>(req.status()),
                 /*counted=*/false);
        continue;
      }
      const uint64_t waiter = core_.Execute(
          *std::move(req),
          [self, id](absl::StatusOr<ManagerReply> r) {
            self->Complete(id, std::move(r), /*counted=*/true);
          },
          "", origin_);
      if (waiter != 0) {
        MutexLock lock(&mu_);
        // It may have completed between Execute and here; the entry is then
        // stale but harmless (cancelling a finished waiter is a no-op) and
        // goes away with the stream or the id's next completion.
        parked_[id] = waiter;
      }
    }
  }

  void OnWriteDone(bool ok) override {
    {
      MutexLock lock(&mu_);
      writing_ = false;
      if (!ok) broken_ = true;
    }
    MaybeWrite();
  }

  void OnCancel() override {
    std::vector<uint64_t> waiters;
    {
      MutexLock lock(&mu_);
      broken_ = true;
      for (const auto& [id, w] : parked_) waiters.push_back(w);
    }
    for (uint64_t w : waiters) core_.Cancel(w);
    MaybeWrite();
  }

  void OnDone() override {
    // May destroy this object once the last completion callback is gone.
    std::shared_ptr<SessionReactor> self = std::move(self_);
  }

 private:
  // Reads no more; cancels the parked operations and finishes with `status`
  // once every operation read is answered.
  void EndWith(grpc::Status status) {
    std::vector<uint64_t> waiters;
    {
      MutexLock lock(&mu_);
      reading_ = false;
      end_status_ = std::move(status);
      for (const auto& [id, w] : parked_) waiters.push_back(w);
    }
    for (uint64_t w : waiters) core_.Cancel(w);
    MaybeWrite();
  }

  void Complete(uint64_t id, absl::StatusOr<ManagerReply> r, bool counted) {
    v1::SessionResult res;
    ToSessionResult(id, std::move(r), &res);
    {
      MutexLock lock(&mu_);
      if (counted) {
        --in_flight_;
        parked_.erase(id);
      }
      out_.push_back(std::move(res));
    }
    MaybeWrite();
  }

  // Starts the next write, or finishes once the client has half-closed and
  // every operation is answered. Never holds mu_ across gRPC calls.
  void MaybeWrite() {
    enum { kNothing, kWrite, kFinish, kAgain } action = kNothing;
    grpc::Status end;
    {
      MutexLock lock(&mu_);
      if (writing_ || finished_) return;
      if (broken_) {
        if (in_flight_ == 0 && !reading_) {
          finished_ = true;
          action = kFinish;
        }
      } else if (!out_.empty()) {
        action = SerializeOutLocked() ? kWrite : kAgain;
      } else if (!reading_ && in_flight_ == 0) {
        finished_ = true;
        action = kFinish;
      }
      if (action == kFinish) end = end_status_;
    }
    if (action == kWrite) {
      StartWrite(&out_buf_);
    } else if (action == kFinish) {
      Finish(std::move(end));
    } else if (action == kAgain) {
      MaybeWrite();
    }
  }

  // Moves the queued results into out_buf_ and marks the stream writing;
  // false (the stream broken, INTERNAL) when they cannot be serialized.
  // Under mu_ so that the next writer's use of out_buf_ is ordered after
  // this one through mu_ alone: the order gRPC gives StartWrite and
  // OnWriteDone runs through its own threads, which ThreadSanitizer cannot
  // see in Debian's uninstrumented libgrpc.
  bool SerializeOutLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    current_.Clear();
    for (auto& res : out_) current_.add_results()->Swap(&res);
    out_.clear();
    bool own_buffer = false;
    out_buf_.Clear();
    if (!grpc::SerializationTraits<v1::SessionResponse>::Serialize(
             current_, &out_buf_, &own_buffer)
             .ok()) {
      broken_ = true;
      end_status_ = grpc::Status(grpc::StatusCode::INTERNAL,
                                 "cannot serialize a Session response");
      return false;
    }
    writing_ = true;
    return true;
  }

  ManagerRouter& core_;
  const ManagerCallOrigin origin_;
  std::shared_ptr<SessionReactor> self_;
  // Touched only by OnReadDone (one read at a time).
  grpc::ByteBuffer in_buf_;
  int64_t messages_read_ = 0;
  v1::SessionRequest in_;
  Mutex mu_;
  // Filled under mu_ while writing_ is false (SerializeOutLocked); gRPC
  // reads out_buf_ from StartWrite until OnWriteDone.
  v1::SessionResponse current_;
  grpc::ByteBuffer out_buf_;
  std::vector<v1::SessionResult> out_ ABSL_GUARDED_BY(mu_);
  std::unordered_map<uint64_t, uint64_t> parked_ ABSL_GUARDED_BY(mu_);
  size_t in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  bool reading_ ABSL_GUARDED_BY(mu_) = true;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool broken_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  // The status the stream ends with (OK unless a message did not parse).
  grpc::Status end_status_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

// One RPC per row of the operation table (api/forq/v1/manager_ops.h); each
// maps its message family onto a generic core request.
class ManagerGrpcService final : public v1::ManagerService::CallbackService {
 public:
  explicit ManagerGrpcService(ManagerRouter& core) : core_(core) {
    // Session takes raw bytes (see SessionReactor). What the generated
    // WithRawCallbackMethod_Session does, done here: that template cannot
    // sit on CallbackService, whose typed Session has the same parameters.
    MarkMethodRawCallback(
        MethodIndex("Session"),
        new grpc::internal::CallbackBidiHandler<grpc::ByteBuffer,
                                                grpc::ByteBuffer>(
            [this](grpc::CallbackServerContext* ctx) {
              return SessionReactor::Start(core_, OriginOf(ctx));
            }));
    // Call takes raw bytes too, so it needs no interceptor (see
    // ManagerService::kCallPath).
    MarkMethodRawCallback(
        MethodIndex("Call"),
        new grpc::internal::CallbackUnaryHandler<grpc::ByteBuffer,
                                                 grpc::ByteBuffer>(
            [this](grpc::CallbackServerContext* ctx,
                   const grpc::ByteBuffer* req, grpc::ByteBuffer* resp) {
              return RawCall(ctx, req, resp);
            }));
  }

  void SetCallHooks(ManagerService::CallHooks hooks) {
    hooks_ = std::move(hooks);
  }

#define FORQ_MANAGER_RPC(Method, Msg, TYPE, OP)                               \
  grpc::ServerUnaryReactor* Method(grpc::CallbackServerContext* ctx,          \
                                   const v1::Msg##Request* req,               \
                                   v1::Msg##Response* resp) override {        \
    return RunUnary(core_, ctx, From##Msg(*req, TYPE, OP, ctx),               \
                    [resp](const ManagerReply& r) { To##Msg(r, OP, resp); }); \
  }

#define FORQ_X(T, O, Rpc, Family, flags, args, out) \
  FORQ_MANAGER_RPC(Rpc, Family, Type::k##T, Op::k##O)
  FORQ_MANAGER_OPS(FORQ_X)
#undef FORQ_X
#undef FORQ_MANAGER_RPC

  grpc::ServerUnaryReactor* RawCall(grpc::CallbackServerContext* ctx,
                                    const grpc::ByteBuffer* req,
                                    grpc::ByteBuffer* resp) {
    v1::ManagerCall call;
    grpc::ByteBuffer in(*req);  // shares the slices
    absl::StatusOr<ManagerRequest> r =
        grpc::SerializationTraits<v1::ManagerCall>::Deserialize(&in, &call).ok()
            ? FromCall(call, TimeoutMs(ctx, call.has_timeout(), call.timeout()))
            : absl::InvalidArgumentError(hooks_.malformed);
    const Record* record = hooks_.record ? &hooks_.record : nullptr;
    if (!r.ok()) {
      grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
      grpc::Status status = ToGrpcStatus(r.status());
      if (record != nullptr) {
        (*record)(status.error_code(), std::chrono::steady_clock::now());
      }
      reactor->Finish(std::move(status));
      return reactor;
    }
    return RunUnary(
        core_, ctx, *std::move(r),
        [resp](const ManagerReply& rep) {
          v1::ManagerResult out;
          ToResult(rep, &out);
          bool own = false;
          (void)grpc::SerializationTraits<v1::ManagerResult>::Serialize(
              out, resp, &own);
        },
        record);
  }

  grpc::ServerUnaryReactor* ListObjects(
      grpc::CallbackServerContext* ctx, const v1::ListObjectsRequest* req,
      v1::ListObjectsResponse* resp) override {
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    core_.ListObjects(
        req->prefix(), OriginOf(ctx),
        [reactor, resp](absl::StatusOr<std::vector<ManagerObjectInfo>> infos) {
          if (!infos.ok()) {
            reactor->Finish(ToGrpcStatus(infos.status()));
            return;
          }
          for (const ManagerObjectInfo& info : *infos) {
            v1::ObjectInfo* o = resp->add_objects();
            o->set_name(info.name);
            o->set_type(ToProtoType(info.type));
            o->set_size(info.size);
            o->set_waiters(info.waiters);
            o->set_version(info.version);
          }
          reactor->Finish(grpc::Status::OK);
        });
    return reactor;
  }

  grpc::ServerUnaryReactor* DeleteObject(
      grpc::CallbackServerContext* ctx, const v1::DeleteObjectRequest* req,
      v1::DeleteObjectResponse* resp) override {
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    core_.DeleteObject(req->name(), OriginOf(ctx),
                       [reactor, resp](absl::StatusOr<bool> deleted) {
                         if (deleted.ok()) {
                           resp->set_deleted(*deleted);
                           reactor->Finish(grpc::Status::OK);
                         } else {
                           reactor->Finish(ToGrpcStatus(deleted.status()));
                         }
                       });
    return reactor;
  }

  grpc::ServerWriteReactor<v1::ManagerEvent>* Watch(
      grpc::CallbackServerContext* ctx,
      const v1::ManagerWatchRequest* req) override {
    // Every object has a name: "" would watch nothing, silently.
    if (req->name().empty() || req->name().size() > kMaxIdBytes) {
      return new FailedWatch(grpc::Status(
          grpc::StatusCode::INVALID_ARGUMENT,
          req->name().empty()
              ? "name: the object to watch must be named"
              : absl::StrCat("name is ", req->name().size(),
                             " bytes; the limit is ", kMaxIdBytes)));
    }
    std::shared_ptr<ObjectManager> local = core_.local();
    if (local == nullptr) {
      return RelayWatch::Start(core_, *req, OriginOf(ctx));
    }
    return WatchReactor::Start(std::move(local), req->name());
  }

 private:
  static int MethodIndex(const char* name) {
    return v1::ManagerCall::descriptor()
        ->file()
        ->FindServiceByName("ManagerService")
        ->FindMethodByName(name)
        ->index();
  }

  ManagerRouter& core_;
  ManagerService::CallHooks hooks_;
};

ManagerService::ManagerService(Store* store, Metrics* metrics,
                               ObjectManagerOptions options)
    : router_(std::make_unique<ManagerRouter>(store, metrics, options)),
      grpc_(std::make_unique<ManagerGrpcService>(*router_)) {}

ManagerService::ManagerService(Store* store, Metrics* metrics,
                               ManagerForwarding forwarding,
                               ObjectManagerOptions options)
    : router_(std::make_unique<ManagerRouter>(store, metrics, options,
                                              std::move(forwarding))),
      grpc_(std::make_unique<ManagerGrpcService>(*router_)) {}

ManagerService::~ManagerService() { Shutdown(); }

absl::Status ManagerService::Recover() { return router_->Recover(); }

grpc::Service* ManagerService::grpc_service() { return grpc_.get(); }

void ManagerService::SetCallHooks(CallHooks hooks) {
  grpc_->SetCallHooks(std::move(hooks));
}

void ManagerService::HandleTaskCall(
    absl::string_view task_id, absl::string_view request,
    std::function<void(absl::StatusOr<std::string>)> reply) {
  HandleManagerTaskCall(*router_, task_id, request, std::move(reply));
}

void ManagerService::CancelTaskCalls(absl::string_view task_id) {
  router_->CancelTagged(task_id);
}

void ManagerService::Shutdown() { router_->Shutdown(); }

ObjectManager& ManagerService::core() { return *router_->local(); }

}  // namespace forq::server
