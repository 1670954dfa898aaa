#include "server/manager/manager_messages.h"

#include <algorithm>
#include <chrono>
#include <limits>
#include <string>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/util/time_util.h"

#include "api/forq/v1/manager_ops.h"

namespace forq::server {

using worker::ManagerOp;
using worker::ManagerReply;
using worker::ManagerRequest;
using worker::ManagerType;
using Op = worker::ManagerOp;
using Type = worker::ManagerType;

namespace {

ManagerRequest Base(Type type, Op op, const std::string& name) {
  ManagerRequest r;
  r.type = type;
  r.op = op;
  r.name = name;
  return r;
}

}  // namespace

int64_t DurationToCeilMs(const google::protobuf::Duration& d) {
  // Seconds and nanos apart: the nanosecond count of a Duration beyond ~292
  // years (valid ones reach 10,000) does not fit in 64 bits.
  constexpr int64_t kMaxSeconds =
      std::numeric_limits<int64_t>::max() / 1000 - 1;
  if (d.seconds() < 0 || (d.seconds() == 0 && d.nanos() <= 0)) return 0;
  const int64_t seconds = std::min<int64_t>(d.seconds(), kMaxSeconds);
  const int64_t nanos = std::max<int32_t>(d.nanos(), 0);
  return seconds * 1000 + (nanos + 999'999) / 1'000'000;
}

// Milliseconds a blocking op may wait: the explicit timeout (absent = no
// limit of its own) capped by the RPC deadline.
int64_t TimeoutMs(grpc::CallbackServerContext* ctx, bool has_timeout,
                  const google::protobuf::Duration& timeout) {
  int64_t ms = has_timeout ? DurationToCeilMs(timeout) : -1;
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
  } else if (op == Op::kValues) {
    for (const auto& v : r.values) out->add_values(v);
  }
  if (op == Op::kPopItem && !r.items.empty()) {
    out->set_key(r.items[0].first);
    out->set_value(r.items[0].second);
  } else {
    for (const auto& [k, v] : r.items) (*out->mutable_items())[k] = v;
  }
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
  r.n = in.n();
  r.key = in.sort_key();
  r.reverse = in.reverse();
  return r;
}
void ToList(const ManagerReply& r, Op, v1::ListResponse* out) {
  out->set_value(r.value);
  out->set_count(r.count);
  out->set_found(r.found);
  for (const auto& v : r.values) out->add_values(v);
  out->set_length(r.length);
}

ManagerRequest FromValue(const v1::ValueRequest& in, Type type, Op op,
                         grpc::CallbackServerContext*) {
  ManagerRequest r = Base(type, op, in.name());
  r.typecode = in.typecode();
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
  r.values.assign(in.values().begin(), in.values().end());
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

ManagerRequest FromBarrier(const v1::BarrierRequest& in, Type type, Op op,
                           grpc::CallbackServerContext* ctx) {
  ManagerRequest r = Base(type, op, in.name());
  r.length = in.parties();
  r.timeout_ms = TimeoutMs(ctx, in.has_timeout(), in.timeout());
  return r;
}
void ToBarrier(const ManagerReply& r, Op op, v1::BarrierResponse* out) {
  if (op == Op::kWait) out->set_index(r.count);
  out->set_parties(r.maxsize);
  out->set_n_waiting(r.length);
  out->set_broken(r.flag);
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

int64_t StreamTimeoutMs(bool has_timeout,
                        const google::protobuf::Duration& timeout) {
  return has_timeout ? DurationToCeilMs(timeout) : -1;
}

// `timeout_ms` is the already-resolved wait of a blocking op.
absl::StatusOr<ManagerRequest> FromCall(const v1::ManagerCall& in,
                                        int64_t timeout_ms) {
  const int type = static_cast<int>(in.type());
  v1::ManagerOp op{};
  if (type < 1 || type > v1::kMaxManagerType) {
    return absl::InvalidArgumentError("manager call needs an object type");
  }
  if (!v1::ParseManagerOp(in.op(), &op)) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown manager operation '",
                     absl::CHexEscape(in.op().substr(0, 64)), "'"));
  }
  ManagerRequest r = Base(static_cast<Type>(type), op, in.name());
  r.session = in.session();
  r.owner = in.owner();
  r.key = in.key();
  r.value = in.value();
  r.expected = in.expected();
  r.expect_absent = in.expect_absent();
  r.values.assign(in.values().begin(), in.values().end());
  r.items.reserve(in.items_size());
  for (const v1::KeyValue& kv : in.items()) {
    r.items.emplace_back(kv.key(), kv.value());
  }
  r.has_index = in.has_index();
  r.index = in.index();
  r.has_start = in.has_start();
  r.start = in.start();
  r.has_stop = in.has_stop();
  r.stop = in.stop();
  r.delta = in.delta();
  r.timeout_ms = timeout_ms;
  r.maxsize = in.maxsize();
  r.length = in.length();
  r.typecode = in.typecode();
  r.has_initial = in.has_initial();
  r.initial = in.initial();
  r.one_way = in.one_way();
  r.end = in.end();
  // Condition notify wakes one by default; list repeat takes n as is.
  r.n = in.n() == 0 && op == Op::kNotify ? 1 : in.n();
  r.reverse = in.reverse();
  r.ttl_ms = std::max<int64_t>(
      0, google::protobuf::util::TimeUtil::DurationToMilliseconds(in.ttl()));
  if (r.type == Type::kSession && r.op == Op::kOpen) r.key = in.key();
  return r;
}

void ToResult(ManagerReply r, v1::ManagerResult* out) {
  out->set_value(std::move(r.value));
  out->set_found(r.found);
  out->set_flag(r.flag);
  out->set_length(r.length);
  out->set_maxsize(r.maxsize);
  out->set_unfinished(r.unfinished);
  out->set_count(r.count);
  out->set_token(r.token);
  out->set_typecode(std::move(r.typecode));
  for (auto& v : r.values) out->add_values(std::move(v));
  for (auto& [k, v] : r.items) {
    v1::KeyValue* kv = out->add_items();
    kv->set_key(std::move(k));
    kv->set_value(std::move(v));
  }
}

void ToSessionResult(uint64_t id, absl::StatusOr<ManagerReply> r,
                     v1::SessionResult* out) {
  out->set_id(id);
  if (r.ok()) {
    ToResult(*std::move(r), out->mutable_result());
  } else {
    out->set_code(static_cast<int>(r.status().code()));
    out->set_message(std::string(r.status().message()));
  }
}

ManagerRequest FromOpenSession(const v1::OpenSessionRequest& in, Type type,
                               Op op, grpc::CallbackServerContext*) {
  ManagerRequest r = Base(type, op, "");
  r.ttl_ms = google::protobuf::util::TimeUtil::DurationToMilliseconds(in.ttl());
  if (r.ttl_ms < 0) r.ttl_ms = 0;
  r.key = in.client_name();
  return r;
}
void ToOpenSession(const ManagerReply& r, Op, v1::OpenSessionResponse* out) {
  out->set_session(r.value);
  *out->mutable_ttl() =
      google::protobuf::util::TimeUtil::MillisecondsToDuration(r.length);
}

ManagerRequest FromKeepAlive(const v1::KeepAliveRequest& in, Type type, Op op,
                             grpc::CallbackServerContext*) {
  ManagerRequest r = Base(type, op, "");
  r.session = in.session();
  return r;
}
void ToKeepAlive(const ManagerReply& r, Op, v1::KeepAliveResponse* out) {
  *out->mutable_ttl() =
      google::protobuf::util::TimeUtil::MillisecondsToDuration(r.length);
}

ManagerRequest FromCloseSession(const v1::CloseSessionRequest& in, Type type,
                                Op op, grpc::CallbackServerContext*) {
  ManagerRequest r = Base(type, op, "");
  r.session = in.session();
  return r;
}
void ToCloseSession(const ManagerReply& r, Op, v1::CloseSessionResponse* out) {
  out->set_released(static_cast<int32_t>(r.count));
}

}  // namespace forq::server
