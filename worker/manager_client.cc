#include "worker/manager_client.h"

#include <bitset>
#include <cstring>

#include "absl/strings/str_cat.h"

#include "common/status_macros.h"

namespace forq::worker {

// ---------------------------------------------------------------- client

namespace {

// A request of `type`/`op` on the object `name`.
ManagerRequest Request(ManagerType type, ManagerOp op, absl::string_view name) {
  ManagerRequest r;
  r.type = type;
  r.op = op;
  r.name = std::string(name);
  return r;
}

// ... naming an element of a list.
ManagerRequest At(ManagerOp op, absl::string_view name, int64_t index) {
  ManagerRequest r = Request(ManagerType::kList, op, name);
  r.has_index = true;
  r.index = index;
  return r;
}

absl::StatusOr<std::string> ValueOf(absl::StatusOr<ManagerReply> reply) {
  if (!reply.ok()) return reply.status();
  return std::move(reply->value);
}

}  // namespace

ManagerClient::ManagerClient(TaskContext& ctx, ManagerClientOptions options)
    : ctx_(ctx), options_(options) {}

ManagerClient::~ManagerClient() { (void)CloseSession(); }

int64_t ManagerClient::TimeoutMs(absl::Duration timeout) const {
  // Never block past the task's own deadline: the worker would be killed
  // while its call is still parked.
  absl::Duration left = ctx_.deadline() - absl::Now();
  if (left < timeout) timeout = left;
  if (timeout == absl::InfiniteDuration()) return -1;
  if (timeout <= absl::ZeroDuration()) return 0;
  return absl::ToInt64Milliseconds(absl::Ceil(timeout, absl::Milliseconds(1)));
}

absl::StatusOr<ManagerReply> ManagerClient::Call(
    const ManagerRequest& request) {
  FORQ_ASSIGN_OR_RETURN(std::string raw,
                        ctx_.Call(EncodeManagerRequest(request)));
  return DecodeManagerReply(raw);
}

absl::StatusOr<std::string> ManagerClient::Session() {
  if (!session_.empty()) return session_;
  ManagerRequest r = Request(ManagerType::kSession, ManagerOp::kOpen, "");
  r.ttl_ms = absl::ToInt64Milliseconds(options_.session_ttl);
  r.key = absl::StrCat("task ", ctx_.task_id());
  FORQ_ASSIGN_OR_RETURN(ManagerReply reply, Call(r));
  session_ = reply.value;
  return session_;
}

absl::Status ManagerClient::CloseSession() {
  if (session_.empty()) return absl::OkStatus();
  ManagerRequest r = Request(ManagerType::kSession, ManagerOp::kClose, "");
  r.session = std::exchange(session_, "");
  return Call(r).status();
}

absl::StatusOr<std::string> ManagerClient::DictGet(absl::string_view name,
                                                   absl::string_view key) {
  ManagerRequest r = Request(ManagerType::kDict, ManagerOp::kGet, name);
  r.key = std::string(key);
  return ValueOf(Call(r));
}

absl::Status ManagerClient::DictSet(absl::string_view name,
                                    absl::string_view key,
                                    absl::string_view value) {
  ManagerRequest r = Request(ManagerType::kDict, ManagerOp::kSet, name);
  r.key = std::string(key);
  r.value = std::string(value);
  return Call(r).status();
}

absl::StatusOr<std::string> ManagerClient::ListGet(absl::string_view name,
                                                   int64_t index) {
  return ValueOf(Call(At(ManagerOp::kGet, name, index)));
}

absl::Status ManagerClient::ListSet(absl::string_view name, int64_t index,
                                    absl::string_view value) {
  ManagerRequest r = At(ManagerOp::kSet, name, index);
  r.value = std::string(value);
  return Call(r).status();
}

absl::StatusOr<int64_t> ManagerClient::ListAppend(absl::string_view name,
                                                  absl::string_view value) {
  ManagerRequest r = Request(ManagerType::kList, ManagerOp::kAppend, name);
  r.value = std::string(value);
  FORQ_ASSIGN_OR_RETURN(ManagerReply reply, Call(r));
  return reply.length;
}

absl::StatusOr<std::string> ManagerClient::ListAdd(absl::string_view name,
                                                   int64_t index,
                                                   absl::string_view delta) {
  ManagerRequest r = At(ManagerOp::kAdd, name, index);
  r.delta = std::string(delta);
  return ValueOf(Call(r));
}

absl::StatusOr<std::string> ManagerClient::ValueAdd(absl::string_view name,
                                                    absl::string_view delta) {
  ManagerRequest r = Request(ManagerType::kValue, ManagerOp::kAdd, name);
  r.delta = std::string(delta);
  return ValueOf(Call(r));
}

absl::Status ManagerClient::QueuePut(absl::string_view name,
                                     absl::string_view item,
                                     absl::Duration timeout) {
  ManagerRequest r = Request(ManagerType::kQueue, ManagerOp::kPut, name);
  r.value = std::string(item);
  r.timeout_ms = TimeoutMs(timeout);
  return Call(r).status();
}

absl::StatusOr<std::string> ManagerClient::QueueGet(absl::string_view name,
                                                    absl::Duration timeout) {
  ManagerRequest r = Request(ManagerType::kQueue, ManagerOp::kGet, name);
  r.timeout_ms = TimeoutMs(timeout);
  return ValueOf(Call(r));
}

absl::StatusOr<uint64_t> ManagerClient::LockAcquire(absl::string_view name,
                                                    absl::Duration timeout) {
  FORQ_ASSIGN_OR_RETURN(std::string session, Session());
  ManagerRequest r = Request(ManagerType::kLock, ManagerOp::kAcquire, name);
  r.session = std::move(session);
  r.timeout_ms = TimeoutMs(timeout);
  FORQ_ASSIGN_OR_RETURN(ManagerReply reply, Call(r));
  if (!reply.flag) {
    return absl::DeadlineExceededError(
        absl::StrCat("lock '", name, "' not acquired in time"));
  }
  return reply.token;
}

absl::Status ManagerClient::LockRelease(absl::string_view name) {
  if (session_.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("lock '", name, "' is not held (no session)"));
  }
  ManagerRequest r = Request(ManagerType::kLock, ManagerOp::kRelease, name);
  r.session = session_;
  return Call(r).status();
}

absl::Status ManagerClient::EventSet(absl::string_view name) {
  return Call(Request(ManagerType::kEvent, ManagerOp::kSet, name)).status();
}

absl::StatusOr<bool> ManagerClient::EventWait(absl::string_view name,
                                              absl::Duration timeout) {
  ManagerRequest r = Request(ManagerType::kEvent, ManagerOp::kWait, name);
  r.timeout_ms = TimeoutMs(timeout);
  FORQ_ASSIGN_OR_RETURN(ManagerReply reply, Call(r));
  return reply.flag;
}

}  // namespace forq::worker
