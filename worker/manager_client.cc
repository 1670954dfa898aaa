#include "worker/manager_client.h"

#include <bitset>
#include <cstring>

#include "absl/strings/str_cat.h"

#include "common/status_macros.h"

namespace forq::worker {

// ---------------------------------------------------------------- client

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
  ManagerRequest r;
  r.type = ManagerType::kSession;
  r.op = ManagerOp::kOpen;
  r.ttl_ms = absl::ToInt64Milliseconds(options_.session_ttl);
  r.key = absl::StrCat("task ", ctx_.task_id());
  FORQ_ASSIGN_OR_RETURN(ManagerReply reply, Call(r));
  session_ = reply.value;
  return session_;
}

absl::Status ManagerClient::CloseSession() {
  if (session_.empty()) return absl::OkStatus();
  ManagerRequest r;
  r.type = ManagerType::kSession;
  r.op = ManagerOp::kClose;
  r.session = std::exchange(session_, "");
  return Call(r).status();
}

absl::StatusOr<std::string> ManagerClient::DictGet(absl::string_view name,
                                                   absl::string_view key) {
  ManagerRequest r;
  r.type = ManagerType::kDict;
  r.op = ManagerOp::kGet;
  r.name = std::string(name);
  r.key = std::string(key);
  FORQ_ASSIGN_OR_RETURN(ManagerReply reply, Call(r));
  return std::move(reply.value);
}

absl::Status ManagerClient::DictSet(absl::string_view name,
                                    absl::string_view key,
                                    absl::string_view value) {
  ManagerRequest r;
  r.type = ManagerType::kDict;
  r.op = ManagerOp::kSet;
  r.name = std::string(name);
  r.key = std::string(key);
  r.value = std::string(value);
  return Call(r).status();
}

absl::StatusOr<std::string> ManagerClient::ListGet(absl::string_view name,
                                                   int64_t index) {
  ManagerRequest r;
  r.type = ManagerType::kList;
  r.op = ManagerOp::kGet;
  r.name = std::string(name);
  r.has_index = true;
  r.index = index;
  FORQ_ASSIGN_OR_RETURN(ManagerReply reply, Call(r));
  return std::move(reply.value);
}

absl::Status ManagerClient::ListSet(absl::string_view name, int64_t index,
                                    absl::string_view value) {
  ManagerRequest r;
  r.type = ManagerType::kList;
  r.op = ManagerOp::kSet;
  r.name = std::string(name);
  r.has_index = true;
  r.index = index;
  r.value = std::string(value);
  return Call(r).status();
}

absl::StatusOr<int64_t> ManagerClient::ListAppend(absl::string_view name,
                                                  absl::string_view value) {
  ManagerRequest r;
  r.type = ManagerType::kList;
  r.op = ManagerOp::kAppend;
  r.name = std::string(name);
  r.value = std::string(value);
  FORQ_ASSIGN_OR_RETURN(ManagerReply reply, Call(r));
  return reply.length;
}

absl::StatusOr<std::string> ManagerClient::ListAdd(absl::string_view name,
                                                   int64_t index,
                                                   absl::string_view delta) {
  ManagerRequest r;
  r.type = ManagerType::kList;
  r.op = ManagerOp::kAdd;
  r.name = std::string(name);
  r.has_index = true;
  r.index = index;
  r.delta = std::string(delta);
  FORQ_ASSIGN_OR_RETURN(ManagerReply reply, Call(r));
  return std::move(reply.value);
}

absl::StatusOr<std::string> ManagerClient::ValueAdd(absl::string_view name,
                                                    absl::string_view delta) {
  ManagerRequest r;
  r.type = ManagerType::kValue;
  r.op = ManagerOp::kAdd;
  r.name = std::string(name);
  r.delta = std::string(delta);
  FORQ_ASSIGN_OR_RETURN(ManagerReply reply, Call(r));
  return std::move(reply.value);
}

absl::Status ManagerClient::QueuePut(absl::string_view name,
                                     absl::string_view item,
                                     absl::Duration timeout) {
  ManagerRequest r;
  r.type = ManagerType::kQueue;
  r.op = ManagerOp::kPut;
  r.name = std::string(name);
  r.value = std::string(item);
  r.timeout_ms = TimeoutMs(timeout);
  return Call(r).status();
}

absl::StatusOr<std::string> ManagerClient::QueueGet(absl::string_view name,
                                                    absl::Duration timeout) {
  ManagerRequest r;
  r.type = ManagerType::kQueue;
  r.op = ManagerOp::kGet;
  r.name = std::string(name);
  r.timeout_ms = TimeoutMs(timeout);
  FORQ_ASSIGN_OR_RETURN(ManagerReply reply, Call(r));
  return std::move(reply.value);
}

absl::StatusOr<uint64_t> ManagerClient::LockAcquire(absl::string_view name,
                                                    absl::Duration timeout) {
  FORQ_ASSIGN_OR_RETURN(std::string session, Session());
  ManagerRequest r;
  r.type = ManagerType::kLock;
  r.op = ManagerOp::kAcquire;
  r.name = std::string(name);
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
  ManagerRequest r;
  r.type = ManagerType::kLock;
  r.op = ManagerOp::kRelease;
  r.name = std::string(name);
  r.session = session_;
  return Call(r).status();
}

absl::Status ManagerClient::EventSet(absl::string_view name) {
  ManagerRequest r;
  r.type = ManagerType::kEvent;
  r.op = ManagerOp::kSet;
  r.name = std::string(name);
  return Call(r).status();
}

absl::StatusOr<bool> ManagerClient::EventWait(absl::string_view name,
                                              absl::Duration timeout) {
  ManagerRequest r;
  r.type = ManagerType::kEvent;
  r.op = ManagerOp::kWait;
  r.name = std::string(name);
  r.timeout_ms = TimeoutMs(timeout);
  FORQ_ASSIGN_OR_RETURN(ManagerReply reply, Call(r));
  return reply.flag;
}

}  // namespace forq::worker
