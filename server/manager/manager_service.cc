#include "server/manager/manager_service.h"

#include <atomic>
#include <chrono>
#include <deque>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "google/protobuf/util/time_util.h"
#include <grpcpp/grpcpp.h>

#include "forq/v1/manager.grpc.pb.h"
#include "forq/v1/manager.pb.h"
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

// Milliseconds a blocking op may wait: the explicit timeout (absent = no
// limit of its own) capped by the RPC deadline.
int64_t TimeoutMs(grpc::CallbackServerContext* ctx, bool has_timeout,
                  const google::protobuf::Duration& timeout) {
  int64_t ms = -1;
  if (has_timeout) {
    const int64_t nanos =
        google::protobuf::util::TimeUtil::DurationToNanoseconds(timeout);
    ms = nanos <= 0 ? 0 : (nanos + 999'999) / 1'000'000;
  }
  const auto deadline = ctx->deadline();
  if (deadline != std::chrono::system_clock::time_point::max()) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                          deadline - std::chrono::system_clock::now())
                          .count();
    const int64_t cap = left < 0 ? 0 : left;
    if (ms < 0 || cap < ms) ms = cap;
  }
  return ms;
}

ManagerRequest Base(Type type, Op op, const std::string& name) {
  ManagerRequest r;
  r.type = type;
  r.op = op;
  r.name = name;
  return r;
}

// ---- request/response mapping, one pair per message family.

ManagerRequest FromDict(const v1::DictRequest& in, Type type, Op op,
                        grpc::CallbackServerContext*) {
  ManagerRequest r = Base(type, op, in.name());
  r.key = in.key();
  r.value = in.value();
  r.expected = in.expected();
  r.expect_absent = in.expect_absent();
  for (const auto& [k, v] : in.items()) r.items.emplace_back(k, v);
  return r;
}
void ToDict(const ManagerReply& r, Op op, v1::DictResponse* out) {
  out->set_value(r.value);
  out->set_found(r.found);
  if (op == Op::kKeys) {
    for (const auto& k : r.values) out->add_keys(k);
  }
  for (const auto& [k, v] : r.items) (*out->mutable_items())[k] = v;
  out->set_length(r.length);
}

ManagerRequest FromList(const v1::ListRequest& in, Type type, Op op,
                        grpc::CallbackServerContext*) {
  ManagerRequest r = Base(type, op, in.name());
  r.has_index = in.has_index();
  r.index = in.index();
  r.value = in.value();
  r.values.assign(in.values().begin(), in.values().end());
  r.has_start = in.has_start();
  r.start = in.start();
  r.has_stop = in.has_stop();
  r.stop = in.stop();
  r.delta = in.delta();
  return r;
}
void ToList(const ManagerReply& r, Op, v1::ListResponse* out) {
  out->set_value(r.value);
  for (const auto& v : r.values) out->add_values(v);
  out->set_length(r.length);
}

ManagerRequest FromValue(const v1::ValueRequest& in, Type type, Op op,
                         grpc::CallbackServerContext*) {
  ManagerRequest r = Base(type, op, in.name());
  r.value = in.value();
  r.expected = in.expected();
  r.delta = in.delta();
  return r;
}
void ToValue(const ManagerReply& r, Op, v1::ValueResponse* out) {
  out->set_value(r.value);
}

ManagerRequest FromArray(const v1::ArrayRequest& in, Type type, Op op,
                         grpc::CallbackServerContext*) {
  ManagerRequest r = Base(type, op, in.name());
  r.typecode = in.typecode();
  r.length = in.length();
  r.has_index = true;
  r.index = in.index();
  r.value = in.value();
  r.delta = in.delta();
  r.has_start = in.has_start();
  r.start = in.start();
  r.has_stop = in.has_stop();
  r.stop = in.stop();
  return r;
}
void ToArray(const ManagerReply& r, Op, v1::ArrayResponse* out) {
  out->set_value(r.value);
  for (const auto& v : r.values) out->add_values(v);
  out->set_length(r.length);
  out->set_typecode(r.typecode);
}

ManagerRequest FromNamespace(const v1::NamespaceRequest& in, Type type, Op op,
                             grpc::CallbackServerContext*) {
  ManagerRequest r = Base(type, op, in.name());
  r.key = in.attr();
  r.value = in.value();
  return r;
}
void ToNamespace(const ManagerReply& r, Op, v1::NamespaceResponse* out) {
  out->set_value(r.value);
  for (const auto& [k, v] : r.items) (*out->mutable_attrs())[k] = v;
}

ManagerRequest FromQueue(const v1::QueueRequest& in, Type type, Op op,
                         grpc::CallbackServerContext* ctx) {
  ManagerRequest r = Base(type, op, in.name());
  r.value = in.value();
  r.maxsize = in.maxsize();
  r.timeout_ms = TimeoutMs(ctx, in.has_timeout(), in.timeout());
  return r;
}
void ToQueue(const ManagerReply& r, Op, v1::QueueResponse* out) {
  out->set_value(r.value);
  out->set_size(r.length);
  out->set_maxsize(r.maxsize);
  out->set_empty(r.found);
  out->set_full(r.flag);
  out->set_unfinished(r.unfinished);
}

ManagerRequest FromPipe(const v1::PipeRequest& in, Type type, Op op,
                        grpc::CallbackServerContext* ctx) {
  ManagerRequest r = Base(type, op, in.name());
  r.end = in.end();
  r.value = in.value();
  r.one_way = in.one_way();
  r.timeout_ms = TimeoutMs(ctx, in.has_timeout(), in.timeout());
  return r;
}
void ToPipe(const ManagerReply& r, Op, v1::PipeResponse* out) {
  out->set_value(r.value);
  out->set_readable(r.flag);
}

ManagerRequest FromLock(const v1::LockRequest& in, Type type, Op op,
                        grpc::CallbackServerContext* ctx) {
  ManagerRequest r = Base(type, op, in.name());
  r.session = in.session();
  r.owner = in.owner();
  r.timeout_ms = TimeoutMs(ctx, in.has_timeout(), in.timeout());
  return r;
}
void ToLock(const ManagerReply& r, Op, v1::LockResponse* out) {
  out->set_acquired(r.flag);
  out->set_fencing_token(r.token);
  out->set_count(static_cast<int32_t>(r.count));
}

ManagerRequest FromSemaphore(const v1::SemaphoreRequest& in, Type type, Op op,
                             grpc::CallbackServerContext* ctx) {
  ManagerRequest r = Base(type, op, in.name());
  r.session = in.session();
  r.has_initial = in.has_value();
  r.initial = in.value();
  r.timeout_ms = TimeoutMs(ctx, in.has_timeout(), in.timeout());
  return r;
}
void ToSemaphore(const ManagerReply& r, Op, v1::SemaphoreResponse* out) {
  out->set_acquired(r.flag);
  out->set_value(r.length);
}

ManagerRequest FromCondition(const v1::ConditionRequest& in, Type type, Op op,
                             grpc::CallbackServerContext* ctx) {
  ManagerRequest r = Base(type, op, in.name());
  r.session = in.session();
  r.owner = in.owner();
  r.n = in.n() == 0 ? 1 : in.n();
  r.timeout_ms = TimeoutMs(ctx, in.has_timeout(), in.timeout());
  return r;
}
void ToCondition(const ManagerReply& r, Op op, v1::ConditionResponse* out) {
  if (op == Op::kAcquire) out->set_acquired(r.flag);
  if (op == Op::kWait) out->set_notified(r.flag);
  out->set_fencing_token(r.token);
  if (op == Op::kNotify || op == Op::kNotifyAll) {
    out->set_woken(static_cast<int32_t>(r.count));
  }
}

ManagerRequest FromEvent(const v1::EventRequest& in, Type type, Op op,
                         grpc::CallbackServerContext* ctx) {
  ManagerRequest r = Base(type, op, in.name());
  r.timeout_ms = TimeoutMs(ctx, in.has_timeout(), in.timeout());
  return r;
}
void ToEvent(const ManagerReply& r, Op, v1::EventResponse* out) {
  out->set_is_set(r.flag);
}

// Runs one request on the core and finishes the RPC with its outcome.
// gRPC callback reactors are the one place forq uses new + `delete this`
// (in OnDone): gRPC owns the reactor's lifetime between the two.
class OpReactor final : public grpc::ServerUnaryReactor {
 public:
  OpReactor(ObjectManager& core, ManagerRequest request,
            std::function<void(const ManagerReply&)> fill)
      : core_(core), fill_(std::move(fill)) {
    // gRPC delivers OnCancel/OnDone only after the handler returns this
    // reactor, so waiter_ is set before OnCancel can read it.
    waiter_.store(core_.Execute(std::move(request),
                                [this](absl::StatusOr<ManagerReply> r) {
                                  if (r.ok()) {
                                    fill_(*r);
                                    Finish(grpc::Status::OK);
                                  } else {
                                    Finish(ToGrpcStatus(r.status()));
                                  }
                                }),
                  std::memory_order_release);
  }
  // The client went away or its deadline passed: unpark, which finishes
  // the RPC with Cancelled (a no-op if it already completed).
  void OnCancel() override {
    core_.Cancel(waiter_.load(std::memory_order_acquire));
  }
  void OnDone() override { delete this; }

 private:
  ObjectManager& core_;
  std::function<void(const ManagerReply&)> fill_;
  std::atomic<uint64_t> waiter_{0};
};

v1::ObjectType ToProtoType(Type t) {
  return static_cast<v1::ObjectType>(static_cast<int>(t));
}

// Streams ManagerChanges of one object. Kept alive by shared_ptr (a
// self-reference dropped in OnDone) rather than `delete this`, because the
// core may still be running Flush on another thread when gRPC is done.
class WatchReactor final : public grpc::ServerWriteReactor<v1::ManagerEvent>,
                           public ManagerWatchSink {
 public:
  static grpc::ServerWriteReactor<v1::ManagerEvent>* Start(
      ObjectManager& core, const std::string& name) {
    auto r = std::make_shared<WatchReactor>(core);
    r->self_ = r;
    r->watch_id_ = core.Watch(name, r);
    r->Flush();
    return r.get();
  }

  explicit WatchReactor(ObjectManager& core) : core_(core) {}

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
    core_.Unwatch(watch_id_);
    // May destroy this object (unless a Flush on another thread holds a
    // reference); nothing touches members afterwards.
    std::shared_ptr<WatchReactor> self = std::move(self_);
  }

 private:
  static constexpr size_t kMaxBuffered = 10000;

  ObjectManager& core_;
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

}  // namespace

// One RPC per operation; each maps its message onto a generic core request.
class ManagerGrpcService final : public v1::ManagerService::CallbackService {
 public:
  explicit ManagerGrpcService(ObjectManager& core) : core_(core) {}

#define FORQ_MANAGER_RPC(Method, Msg, TYPE, OP)                        \
  grpc::ServerUnaryReactor* Method(grpc::CallbackServerContext* ctx,   \
                                   const v1::Msg##Request* req,        \
                                   v1::Msg##Response* resp) override { \
    return new OpReactor(                                              \
        core_, From##Msg(*req, TYPE, OP, ctx),                         \
        [resp](const ManagerReply& r) { To##Msg(r, OP, resp); });      \
  }

  FORQ_MANAGER_RPC(DictGet, Dict, Type::kDict, Op::kGet)
  FORQ_MANAGER_RPC(DictSet, Dict, Type::kDict, Op::kSet)
  FORQ_MANAGER_RPC(DictDelete, Dict, Type::kDict, Op::kDelete)
  FORQ_MANAGER_RPC(DictContains, Dict, Type::kDict, Op::kContains)
  FORQ_MANAGER_RPC(DictKeys, Dict, Type::kDict, Op::kKeys)
  FORQ_MANAGER_RPC(DictItems, Dict, Type::kDict, Op::kItems)
  FORQ_MANAGER_RPC(DictLen, Dict, Type::kDict, Op::kLen)
  FORQ_MANAGER_RPC(DictUpdate, Dict, Type::kDict, Op::kUpdate)
  FORQ_MANAGER_RPC(DictClear, Dict, Type::kDict, Op::kClear)
  FORQ_MANAGER_RPC(DictCompareAndSet, Dict, Type::kDict, Op::kCompareAndSet)
  FORQ_MANAGER_RPC(DictSetIfAbsent, Dict, Type::kDict, Op::kSetIfAbsent)

  FORQ_MANAGER_RPC(ListAppend, List, Type::kList, Op::kAppend)
  FORQ_MANAGER_RPC(ListExtend, List, Type::kList, Op::kExtend)
  FORQ_MANAGER_RPC(ListGet, List, Type::kList, Op::kGet)
  FORQ_MANAGER_RPC(ListSet, List, Type::kList, Op::kSet)
  FORQ_MANAGER_RPC(ListPop, List, Type::kList, Op::kPop)
  FORQ_MANAGER_RPC(ListInsert, List, Type::kList, Op::kInsert)
  FORQ_MANAGER_RPC(ListRemove, List, Type::kList, Op::kRemove)
  FORQ_MANAGER_RPC(ListLen, List, Type::kList, Op::kLen)
  FORQ_MANAGER_RPC(ListSlice, List, Type::kList, Op::kSlice)
  FORQ_MANAGER_RPC(ListClear, List, Type::kList, Op::kClear)
  FORQ_MANAGER_RPC(ListAdd, List, Type::kList, Op::kAdd)

  FORQ_MANAGER_RPC(ValueGet, Value, Type::kValue, Op::kGet)
  FORQ_MANAGER_RPC(ValueSet, Value, Type::kValue, Op::kSet)
  FORQ_MANAGER_RPC(ValueAdd, Value, Type::kValue, Op::kAdd)
  FORQ_MANAGER_RPC(ValueCompareAndSet, Value, Type::kValue, Op::kCompareAndSet)

  FORQ_MANAGER_RPC(ArrayGet, Array, Type::kArray, Op::kGet)
  FORQ_MANAGER_RPC(ArraySet, Array, Type::kArray, Op::kSet)
  FORQ_MANAGER_RPC(ArrayAdd, Array, Type::kArray, Op::kAdd)
  FORQ_MANAGER_RPC(ArraySlice, Array, Type::kArray, Op::kSlice)
  FORQ_MANAGER_RPC(ArrayLen, Array, Type::kArray, Op::kLen)

  FORQ_MANAGER_RPC(NamespaceGet, Namespace, Type::kNamespace, Op::kGet)
  FORQ_MANAGER_RPC(NamespaceSet, Namespace, Type::kNamespace, Op::kSet)
  FORQ_MANAGER_RPC(NamespaceDelete, Namespace, Type::kNamespace, Op::kDelete)
  FORQ_MANAGER_RPC(NamespaceList, Namespace, Type::kNamespace, Op::kItems)

  FORQ_MANAGER_RPC(QueuePut, Queue, Type::kQueue, Op::kPut)
  FORQ_MANAGER_RPC(QueueGet, Queue, Type::kQueue, Op::kGet)
  FORQ_MANAGER_RPC(QueueSize, Queue, Type::kQueue, Op::kSize)
  FORQ_MANAGER_RPC(QueueTaskDone, Queue, Type::kQueue, Op::kTaskDone)
  FORQ_MANAGER_RPC(QueueJoin, Queue, Type::kQueue, Op::kJoin)

  FORQ_MANAGER_RPC(PipeSend, Pipe, Type::kPipe, Op::kSend)
  FORQ_MANAGER_RPC(PipeRecv, Pipe, Type::kPipe, Op::kRecv)
  FORQ_MANAGER_RPC(PipePoll, Pipe, Type::kPipe, Op::kPoll)

  FORQ_MANAGER_RPC(LockAcquire, Lock, Type::kLock, Op::kAcquire)
  FORQ_MANAGER_RPC(LockRelease, Lock, Type::kLock, Op::kRelease)
  FORQ_MANAGER_RPC(RLockAcquire, Lock, Type::kRLock, Op::kAcquire)
  FORQ_MANAGER_RPC(RLockRelease, Lock, Type::kRLock, Op::kRelease)

  FORQ_MANAGER_RPC(SemaphoreAcquire, Semaphore, Type::kSemaphore, Op::kAcquire)
  FORQ_MANAGER_RPC(SemaphoreRelease, Semaphore, Type::kSemaphore, Op::kRelease)
  FORQ_MANAGER_RPC(SemaphoreValue, Semaphore, Type::kSemaphore, Op::kValue)
  FORQ_MANAGER_RPC(BoundedSemaphoreAcquire, Semaphore, Type::kBoundedSemaphore,
                   Op::kAcquire)
  FORQ_MANAGER_RPC(BoundedSemaphoreRelease, Semaphore, Type::kBoundedSemaphore,
                   Op::kRelease)
  FORQ_MANAGER_RPC(BoundedSemaphoreValue, Semaphore, Type::kBoundedSemaphore,
                   Op::kValue)

  FORQ_MANAGER_RPC(ConditionAcquire, Condition, Type::kCondition, Op::kAcquire)
  FORQ_MANAGER_RPC(ConditionRelease, Condition, Type::kCondition, Op::kRelease)
  FORQ_MANAGER_RPC(ConditionWait, Condition, Type::kCondition, Op::kWait)
  FORQ_MANAGER_RPC(ConditionNotify, Condition, Type::kCondition, Op::kNotify)
  FORQ_MANAGER_RPC(ConditionNotifyAll, Condition, Type::kCondition,
                   Op::kNotifyAll)

  FORQ_MANAGER_RPC(EventSet, Event, Type::kEvent, Op::kSet)
  FORQ_MANAGER_RPC(EventClear, Event, Type::kEvent, Op::kClear)
  FORQ_MANAGER_RPC(EventIsSet, Event, Type::kEvent, Op::kIsSet)
  FORQ_MANAGER_RPC(EventWait, Event, Type::kEvent, Op::kWait)

#undef FORQ_MANAGER_RPC

  grpc::ServerUnaryReactor* OpenSession(
      grpc::CallbackServerContext*, const v1::OpenSessionRequest* req,
      v1::OpenSessionResponse* resp) override {
    ManagerRequest r = Base(Type::kSession, Op::kOpen, "");
    r.ttl_ms =
        google::protobuf::util::TimeUtil::DurationToMilliseconds(req->ttl());
    if (r.ttl_ms < 0) r.ttl_ms = 0;
    r.key = req->client_name();
    return new OpReactor(core_, std::move(r), [resp](const ManagerReply& rep) {
      resp->set_session(rep.value);
      *resp->mutable_ttl() =
          google::protobuf::util::TimeUtil::MillisecondsToDuration(rep.length);
    });
  }

  grpc::ServerUnaryReactor* KeepAlive(grpc::CallbackServerContext*,
                                      const v1::KeepAliveRequest* req,
                                      v1::KeepAliveResponse* resp) override {
    ManagerRequest r = Base(Type::kSession, Op::kKeepAlive, "");
    r.session = req->session();
    return new OpReactor(core_, std::move(r), [resp](const ManagerReply& rep) {
      *resp->mutable_ttl() =
          google::protobuf::util::TimeUtil::MillisecondsToDuration(rep.length);
    });
  }

  grpc::ServerUnaryReactor* CloseSession(
      grpc::CallbackServerContext*, const v1::CloseSessionRequest* req,
      v1::CloseSessionResponse* resp) override {
    ManagerRequest r = Base(Type::kSession, Op::kClose, "");
    r.session = req->session();
    return new OpReactor(core_, std::move(r), [resp](const ManagerReply& rep) {
      resp->set_released(static_cast<int32_t>(rep.count));
    });
  }

  grpc::ServerUnaryReactor* ListObjects(
      grpc::CallbackServerContext* ctx, const v1::ListObjectsRequest* req,
      v1::ListObjectsResponse* resp) override {
    for (const ManagerObjectInfo& info : core_.ListObjects(req->prefix())) {
      v1::ObjectInfo* o = resp->add_objects();
      o->set_name(info.name);
      o->set_type(ToProtoType(info.type));
      o->set_size(info.size);
      o->set_waiters(info.waiters);
      o->set_version(info.version);
    }
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  grpc::ServerUnaryReactor* DeleteObject(
      grpc::CallbackServerContext* ctx, const v1::DeleteObjectRequest* req,
      v1::DeleteObjectResponse* resp) override {
    absl::StatusOr<bool> deleted = core_.DeleteObject(req->name());
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    if (deleted.ok()) {
      resp->set_deleted(*deleted);
      reactor->Finish(grpc::Status::OK);
    } else {
      reactor->Finish(ToGrpcStatus(deleted.status()));
    }
    return reactor;
  }

  grpc::ServerWriteReactor<v1::ManagerEvent>* Watch(
      grpc::CallbackServerContext*,
      const v1::ManagerWatchRequest* req) override {
    return WatchReactor::Start(core_, req->name());
  }

 private:
  ObjectManager& core_;
};

ManagerService::ManagerService(Store* store, Metrics* metrics,
                               ObjectManagerOptions options)
    : core_(std::make_unique<ObjectManager>(store, metrics, options)),
      grpc_(std::make_unique<ManagerGrpcService>(*core_)) {}

ManagerService::~ManagerService() { Shutdown(); }

absl::Status ManagerService::Recover() { return core_->Recover(); }

grpc::Service* ManagerService::grpc_service() { return grpc_.get(); }

void ManagerService::HandleTaskCall(
    absl::string_view task_id, std::string request,
    std::function<void(absl::StatusOr<std::string>)> reply) {
  HandleManagerTaskCall(*core_, task_id, request, std::move(reply));
}

void ManagerService::CancelTaskCalls(absl::string_view task_id) {
  core_->CancelTagged(task_id);
}

void ManagerService::Shutdown() { core_->Shutdown(); }

}  // namespace forq::server
