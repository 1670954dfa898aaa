// Proxies of the message objects: Queue and Pipe.
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

}  // namespace forq
