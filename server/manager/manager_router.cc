#include "server/manager/manager_router.h"

#include <chrono>
#include <utility>

#include "absl/strings/str_cat.h"
#include "google/protobuf/util/time_util.h"
#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include "forq/v1/manager.grpc.pb.h"
#include "forq/v1/manager.pb.h"

namespace forq::server {
namespace {

using google::protobuf::util::TimeUtil;
using worker::ManagerReply;
using worker::ManagerRequest;

// Non-blocking forwarded calls (ListObjects, DeleteObject) give up after
// this long.
constexpr auto kForwardDeadline = std::chrono::seconds(30);

// The inverse of the service's ManagerCall decoding: every request field.
v1::ManagerCall ToCall(const ManagerRequest& r) {
  v1::ManagerCall c;
  c.set_type(static_cast<v1::ObjectType>(static_cast<int>(r.type)));
  c.set_op(std::string(v1::ManagerOpName(r.op)));
  c.set_name(r.name);
  c.set_session(r.session);
  c.set_owner(r.owner);
  c.set_key(r.key);
  c.set_value(r.value);
  c.set_expected(r.expected);
  c.set_expect_absent(r.expect_absent);
  for (const std::string& v : r.values) c.add_values(v);
  for (const auto& [k, v] : r.items) {
    v1::KeyValue* kv = c.add_items();
    kv->set_key(k);
    kv->set_value(v);
  }
  if (r.has_index) c.set_index(r.index);
  if (r.has_start) c.set_start(r.start);
  if (r.has_stop) c.set_stop(r.stop);
  c.set_delta(r.delta);
  if (r.timeout_ms >= 0) {
    *c.mutable_timeout() = TimeUtil::MillisecondsToDuration(r.timeout_ms);
  }
  c.set_maxsize(r.maxsize);
  c.set_length(r.length);
  c.set_typecode(r.typecode);
  if (r.has_initial) c.set_initial(r.initial);
  c.set_one_way(r.one_way);
  c.set_end(static_cast<int32_t>(r.end));
  c.set_n(static_cast<int32_t>(r.n));
  if (r.ttl_ms > 0) {
    *c.mutable_ttl() = TimeUtil::MillisecondsToDuration(r.ttl_ms);
  }
  c.set_reverse(r.reverse);
  return c;
}

ManagerReply FromResult(v1::ManagerResult& in) {
  ManagerReply r;
  r.value = std::move(*in.mutable_value());
  r.found = in.found();
  r.flag = in.flag();
  r.length = in.length();
  r.maxsize = in.maxsize();
  r.unfinished = in.unfinished();
  r.count = in.count();
  r.token = in.token();
  r.typecode = std::move(*in.mutable_typecode());
  r.values.reserve(in.values_size());
  for (std::string& v : *in.mutable_values()) r.values.push_back(std::move(v));
  r.items.reserve(in.items_size());
  for (v1::KeyValue& kv : *in.mutable_items()) {
    r.items.emplace_back(std::move(*kv.mutable_key()),
                         std::move(*kv.mutable_value()));
  }
  return r;
}

absl::Status Unavailable(absl::string_view why) {
  return absl::UnavailableError(
      absl::StrCat("manager: ", why,
                   "; retry (the cluster is handing the "
                   "Manager over to another node)"));
}

}  // namespace

// A connection to the owner.
class ManagerRouter::Remote {
 public:
  Remote(std::string node, std::string address,
         const std::shared_ptr<grpc::ChannelCredentials>& credentials)
      : node_(std::move(node)), address_(std::move(address)) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(-1);
    args.SetMaxSendMessageSize(-1);
    // Reconnect quickly once a new owner listens.
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
    channel_ = grpc::CreateCustomChannel(
        address_,
        credentials != nullptr ? credentials
                               : grpc::InsecureChannelCredentials(),
        args);
    stub_ = v1::ManagerService::NewStub(channel_);
  }
  const std::string& node() const { return node_; }
  const std::string& address() const { return address_; }
  v1::ManagerService::Stub& stub() { return *stub_; }

 private:
  const std::string node_;
  const std::string address_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::ManagerService::Stub> stub_;
};

struct ManagerRouter::RemoteCall {
  uint64_t id = 0;
  std::string tag;
  grpc::ClientContext ctx;
  v1::ManagerCall request;
  v1::ManagerResult result;
  Done done;
};

namespace {

// Credentials and the loop guard for one forwarded call.
void Decorate(grpc::ClientContext& ctx, const ManagerCallOrigin& origin,
              const ManagerForwarding& f) {
  // This node has checked the caller's role for the method it called; the
  // owner sees the generic Call (which needs role submit), so the node's
  // own token vouches for the call when there is one.
  if (!f.token.empty()) {
    ctx.AddMetadata("authorization", absl::StrCat("Bearer ", f.token));
  } else if (!origin.authorization.empty()) {
    ctx.AddMetadata("authorization", origin.authorization);
  }
  ctx.AddMetadata(kManagerForwardedHeader, f.node_id);
  // A forwarded call waits for the owner to be reachable only briefly: a
  // dead owner should answer Unavailable, not hang the client.
  ctx.set_wait_for_ready(false);
}

absl::Status FromGrpc(const grpc::Status& s, const std::string& node,
                      const std::string& address) {
  if (s.ok()) return absl::OkStatus();
  if (s.error_code() == grpc::StatusCode::UNAVAILABLE) {
    return Unavailable(absl::StrCat("owner node ", node, " at ", address,
                                    " did not answer: ", s.error_message()));
  }
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()),
                      s.error_message());
}

}  // namespace

ManagerRouter::ManagerRouter(Store* store, Metrics* metrics,
                             ObjectManagerOptions options)
    : store_(store),
      metrics_(metrics),
      options_(options),
      fixed_(std::make_shared<ObjectManager>(store, metrics, options)) {}

ManagerRouter::ManagerRouter(Store* store, Metrics* metrics,
                             ObjectManagerOptions options,
                             ManagerForwarding forwarding)
    : store_(store),
      metrics_(metrics),
      options_(options),
      forwarding_(std::move(forwarding)) {}

ManagerRouter::~ManagerRouter() {
  Shutdown();
  MutexLock lock(&mu_);
  while (pending_ > 0) pending_done_.Wait(&mu_);
}

bool ManagerRouter::Begin() {
  MutexLock lock(&mu_);
  if (shutdown_) return false;
  ++pending_;
  return true;
}

void ManagerRouter::End(uint64_t id) {
  MutexLock lock(&mu_);
  if (id != 0) calls_.erase(id);
  if (--pending_ == 0) pending_done_.SignalAll();
}

absl::Status ManagerRouter::Recover() {
  return fixed_ != nullptr ? fixed_->Recover() : absl::OkStatus();
}

absl::Status ManagerRouter::BecomeOwner() {
  {
    MutexLock lock(&mu_);
    if (shutdown_) return absl::UnavailableError("manager shutting down");
  }
  auto core = std::make_shared<ObjectManager>(store_, metrics_, options_);
  absl::Status s = core->Recover();
  if (!s.ok()) {
    core->Shutdown();
    return s;
  }
  std::shared_ptr<ObjectManager> old;
  {
    MutexLock lock(&mu_);
    if (shutdown_) {
      old = std::move(core);
    } else {
      old = std::exchange(owned_, std::move(core));
      remote_.reset();
      owner_node_ = forwarding_.node_id;
    }
  }
  if (old != nullptr) old->Shutdown();
  return absl::OkStatus();
}

void ManagerRouter::StepDown() {
  std::shared_ptr<ObjectManager> old;
  {
    MutexLock lock(&mu_);
    old = std::move(owned_);
    owned_.reset();
    if (old != nullptr) owner_node_.clear();
  }
  // Parked calls fail with Unavailable; queued object writes still reach
  // the store (bounded), so the next owner loads them.
  if (old != nullptr) old->Shutdown();
}

void ManagerRouter::Follow(const std::string& owner_node,
                           const std::string& address) {
  MutexLock lock(&mu_);
  if (shutdown_ || owned_ != nullptr) return;
  owner_node_ = owner_node;
  if (address.empty()) {
    remote_.reset();
  } else if (remote_ == nullptr || remote_->address() != address ||
             remote_->node() != owner_node) {
    remote_ =
        std::make_shared<Remote>(owner_node, address, forwarding_.credentials);
  }
}

ManagerRouter::Route ManagerRouter::RouteFor(const ManagerCallOrigin& origin) {
  Route r;
  MutexLock lock(&mu_);
  if (shutdown_) {
    r.why = "shutting down";
  } else if (owned_ != nullptr) {
    r.core = owned_;
  } else if (origin.forwarded) {
    r.why = "this node does not own the Manager any more";
  } else if (remote_ != nullptr) {
    r.remote = remote_;
  } else {
    r.why = "no node owns the Manager yet";
  }
  return r;
}

ManagerRouter::WriteHold::WriteHold(ManagerRouter& router, bool hold) {
  if (!hold) return;
  core_ = router.fixed_ != nullptr ? router.fixed_ : router.local();
  if (core_ != nullptr) core_->HoldWrites();
}

ManagerRouter::WriteHold::~WriteHold() {
  if (core_ != nullptr) core_->ReleaseWrites();
}

uint64_t ManagerRouter::Execute(ManagerRequest request, Done done,
                                absl::string_view tag,
                                const ManagerCallOrigin& origin) {
  if (fixed_ != nullptr) {
    return fixed_->Execute(std::move(request), std::move(done), tag);
  }
  Route route = RouteFor(origin);
  if (route.core != nullptr) {
    return route.core->Execute(std::move(request), std::move(done), tag);
  }
  if (route.remote == nullptr) {
    done(Unavailable(route.why));
    return 0;
  }
  auto call = std::make_shared<RemoteCall>();
  call->id = NextManagerCallId();
  call->tag = std::string(tag);
  call->request = ToCall(request);
  call->done = std::move(done);
  Decorate(call->ctx, origin, forwarding_);
  {
    MutexLock lock(&mu_);
    if (shutdown_) {
      call->done(Unavailable("shutting down"));
      return 0;
    }
    ++pending_;
    calls_[call->id] = call;
  }
  std::shared_ptr<Remote> remote = route.remote;
  remote->stub().async()->Call(
      &call->ctx, &call->request, &call->result,
      [this, call, remote](const grpc::Status& s) {
        if (s.ok()) {
          call->done(FromResult(call->result));
        } else {
          if (s.error_code() == grpc::StatusCode::UNAVAILABLE &&
              forwarding_.on_unreachable) {
            forwarding_.on_unreachable();
          }
          call->done(FromGrpc(s, remote->node(), remote->address()));
        }
        End(call->id);
      });
  return call->id;
}

void ManagerRouter::Cancel(uint64_t id) {
  if (id == 0) return;
  if (fixed_ != nullptr) {
    fixed_->Cancel(id);
    return;
  }
  std::shared_ptr<RemoteCall> call;
  std::shared_ptr<ObjectManager> core;
  {
    MutexLock lock(&mu_);
    auto it = calls_.find(id);
    if (it != calls_.end()) {
      call = it->second;
    } else {
      core = owned_;
    }
  }
  // The forwarded call ends with Cancelled; the owner unparks it.
  if (call != nullptr) call->ctx.TryCancel();
  // Ids are unique per process: a stale one cancels nothing.
  if (core != nullptr) core->Cancel(id);
}

int ManagerRouter::CancelTagged(absl::string_view tag) {
  if (fixed_ != nullptr) return fixed_->CancelTagged(tag);
  std::vector<std::shared_ptr<RemoteCall>> calls;
  std::shared_ptr<ObjectManager> core;
  {
    MutexLock lock(&mu_);
    core = owned_;
    for (const auto& [id, c] : calls_) {
      if (c->tag == tag) calls.push_back(c);
    }
  }
  for (const auto& c : calls) c->ctx.TryCancel();
  int n = static_cast<int>(calls.size());
  if (core != nullptr) n += core->CancelTagged(tag);
  return n;
}

template <typename Resp, typename Req, typename Issue, typename OnReply,
          typename Fail>
void ManagerRouter::ForwardToOwner(const std::shared_ptr<Remote>& remote,
                                   const ManagerCallOrigin& origin, Req request,
                                   Issue issue, OnReply on_reply, Fail fail) {
  struct Call {
    grpc::ClientContext ctx;
    Req request;
    Resp response;
  };
  auto call = std::make_shared<Call>();
  call->request = std::move(request);
  Decorate(call->ctx, origin, forwarding_);
  call->ctx.set_deadline(std::chrono::system_clock::now() + kForwardDeadline);
  if (!Begin()) {
    fail(Unavailable("shutting down"));
    return;
  }
  issue(remote->stub().async(), &call->ctx, &call->request, &call->response,
        std::function<void(grpc::Status)>(
            [this, call, remote, on_reply = std::move(on_reply),
             fail = std::move(fail)](const grpc::Status& s) {
              if (s.ok()) {
                on_reply(call->response);
              } else {
                if (s.error_code() == grpc::StatusCode::UNAVAILABLE &&
                    forwarding_.on_unreachable) {
                  forwarding_.on_unreachable();
                }
                fail(FromGrpc(s, remote->node(), remote->address()));
              }
              End(0);
            }));
}

void ManagerRouter::ListObjects(const std::string& prefix,
                                const ManagerCallOrigin& origin,
                                ListDone done) {
  Route route = fixed_ != nullptr ? Route{.core = fixed_} : RouteFor(origin);
  if (route.core != nullptr) {
    done(route.core->ListObjects(prefix));
    return;
  }
  if (route.remote == nullptr) {
    done(Unavailable(route.why));
    return;
  }
  v1::ListObjectsRequest request;
  request.set_prefix(prefix);
  auto shared_done = std::make_shared<ListDone>(std::move(done));
  ForwardToOwner<v1::ListObjectsResponse>(
      route.remote, origin, std::move(request),
      [](auto* stub, auto... args) { stub->ListObjects(std::move(args)...); },
      [shared_done](const v1::ListObjectsResponse& response) {
        std::vector<ManagerObjectInfo> out;
        for (const v1::ObjectInfo& o : response.objects()) {
          ManagerObjectInfo info;
          info.name = o.name();
          info.type =
              static_cast<worker::ManagerType>(static_cast<int>(o.type()));
          info.size = o.size();
          info.waiters = o.waiters();
          info.version = o.version();
          out.push_back(std::move(info));
        }
        (*shared_done)(std::move(out));
      },
      [shared_done](absl::Status s) { (*shared_done)(std::move(s)); });
}

void ManagerRouter::DeleteObject(const std::string& name,
                                 const ManagerCallOrigin& origin,
                                 DeleteDone done) {
  Route route = fixed_ != nullptr ? Route{.core = fixed_} : RouteFor(origin);
  if (route.core != nullptr) {
    done(route.core->DeleteObject(name));
    return;
  }
  if (route.remote == nullptr) {
    done(Unavailable(route.why));
    return;
  }
  v1::DeleteObjectRequest request;
  request.set_name(name);
  auto shared_done = std::make_shared<DeleteDone>(std::move(done));
  ForwardToOwner<v1::DeleteObjectResponse>(
      route.remote, origin, std::move(request),
      [](auto* stub, auto... args) { stub->DeleteObject(std::move(args)...); },
      [shared_done](const v1::DeleteObjectResponse& response) {
        (*shared_done)(response.deleted());
      },
      [shared_done](absl::Status s) { (*shared_done)(std::move(s)); });
}

absl::Status ManagerRouter::ForwardWatch(
    const v1::ManagerWatchRequest& request, const ManagerCallOrigin& origin,
    grpc::ClientContext* ctx,
    grpc::ClientReadReactor<v1::ManagerEvent>* reactor) {
  Route route = fixed_ != nullptr ? Route{.core = fixed_} : RouteFor(origin);
  if (route.remote == nullptr) {
    return Unavailable(route.core != nullptr ? "this node owns the Manager now"
                                             : route.why);
  }
  Decorate(*ctx, origin, forwarding_);
  route.remote->stub().async()->Watch(ctx, &request, reactor);
  return absl::OkStatus();
}

std::shared_ptr<ObjectManager> ManagerRouter::local() {
  if (fixed_ != nullptr) return fixed_;
  MutexLock lock(&mu_);
  return owned_;
}

std::string ManagerRouter::owner_address() {
  MutexLock lock(&mu_);
  return remote_ != nullptr ? remote_->address() : "";
}

void ManagerRouter::Shutdown() {
  if (fixed_ != nullptr) {
    fixed_->Shutdown();
    return;
  }
  std::shared_ptr<ObjectManager> core;
  std::vector<std::shared_ptr<RemoteCall>> calls;
  {
    MutexLock lock(&mu_);
    shutdown_ = true;
    core = std::move(owned_);
    owned_.reset();
    remote_.reset();
    for (const auto& [id, c] : calls_) calls.push_back(c);
  }
  if (core != nullptr) core->Shutdown();
  // Each ends with Cancelled through its callback.
  for (const auto& c : calls) c->ctx.TryCancel();
}

}  // namespace forq::server
