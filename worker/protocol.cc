#include "worker/protocol.h"

#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace forq::worker {
namespace {

// Little-endian fixed-width integers and u32-length-prefixed byte strings.
class WireWriter {
 public:
  template <typename T>
  void Put(T v) {
    static_assert(std::is_trivially_copyable_v<T>);
    char buf[sizeof(T)];
    std::memcpy(buf, &v, sizeof(T));
    out_.append(buf, sizeof(T));
  }
  void PutBytes(absl::string_view s) {
    Put<uint32_t>(static_cast<uint32_t>(s.size()));
    out_.append(s.data(), s.size());
  }
  std::string Finish() { return std::move(out_); }

 private:
  std::string out_;
};

class WireReader {
 public:
  explicit WireReader(absl::string_view in) : in_(in) {}
  template <typename T>
  bool Get(T* v) {
    if (in_.size() < sizeof(T)) return false;
    std::memcpy(v, in_.data(), sizeof(T));
    in_.remove_prefix(sizeof(T));
    return true;
  }
  bool GetBytes(std::string* s) {
    uint32_t n;
    if (!Get(&n) || n > in_.size()) return false;
    s->assign(in_.data(), n);
    in_.remove_prefix(n);
    return true;
  }
  bool done() const { return in_.empty(); }

 private:
  absl::string_view in_;
};

absl::Status Malformed(absl::string_view what) {
  return absl::DataLossError(absl::StrCat("malformed ", what, " message"));
}

}  // namespace

std::string Encode(const AssignMessage& m) {
  WireWriter w;
  w.Put(m.task_seq);
  w.PutBytes(m.task_id);
  w.Put(m.attempt);
  w.Put(m.timeout_ns);
  w.PutBytes(m.kind);
  w.PutBytes(m.payload);
  return w.Finish();
}

absl::StatusOr<AssignMessage> DecodeAssign(absl::string_view body) {
  WireReader r(body);
  AssignMessage m;
  if (!r.Get(&m.task_seq) || !r.GetBytes(&m.task_id) || !r.Get(&m.attempt) ||
      !r.Get(&m.timeout_ns) || !r.GetBytes(&m.kind) ||
      !r.GetBytes(&m.payload) || !r.done()) {
    return Malformed("assign");
  }
  return m;
}

std::string Encode(const ReadyMessage& m) {
  WireWriter w;
  w.Put(m.pid);
  w.Put(m.protocol_version);
  return w.Finish();
}

absl::StatusOr<ReadyMessage> DecodeReady(absl::string_view body) {
  WireReader r(body);
  ReadyMessage m;
  if (!r.Get(&m.pid) || !r.Get(&m.protocol_version) || !r.done() ||
      m.pid <= 0) {
    return Malformed("ready");
  }
  if (m.protocol_version != kProtocolVersion) {
    return absl::DataLossError(absl::StrCat("worker speaks protocol ",
                                            m.protocol_version, ", want ",
                                            kProtocolVersion));
  }
  return m;
}

std::string Encode(const ResultMessage& m) {
  WireWriter w;
  w.Put(m.task_seq);
  w.Put(m.code);
  w.Put<uint8_t>(m.unknown_kind ? 1 : 0);
  w.PutBytes(m.message);
  w.PutBytes(m.result);
  w.Put(m.runtime_ns);
  return w.Finish();
}

absl::StatusOr<ResultMessage> DecodeResult(absl::string_view body) {
  WireReader r(body);
  ResultMessage m;
  uint8_t unknown = 0;
  if (!r.Get(&m.task_seq) || !r.Get(&m.code) || !r.Get(&unknown) ||
      !r.GetBytes(&m.message) || !r.GetBytes(&m.result) ||
      !r.Get(&m.runtime_ns) || !r.done() || unknown > 1 || m.runtime_ns < 0) {
    return Malformed("result");
  }
  m.unknown_kind = unknown == 1;
  return m;
}

std::string Encode(const ProgressMessage& m) {
  WireWriter w;
  w.Put(m.task_seq);
  w.Put(m.fraction);
  w.PutBytes(m.message);
  return w.Finish();
}

absl::StatusOr<ProgressMessage> DecodeProgress(absl::string_view body) {
  WireReader r(body);
  ProgressMessage m;
  if (!r.Get(&m.task_seq) || !r.Get(&m.fraction) || !r.GetBytes(&m.message) ||
      !r.done() || !std::isfinite(m.fraction)) {
    return Malformed("progress");
  }
  m.fraction = std::min(1.0, std::max(0.0, m.fraction));
  return m;
}

std::string Encode(const SkippedMessage& m) {
  WireWriter w;
  w.Put(m.task_seq);
  return w.Finish();
}

absl::StatusOr<SkippedMessage> DecodeSkipped(absl::string_view body) {
  WireReader r(body);
  SkippedMessage m;
  if (!r.Get(&m.task_seq) || !r.done()) return Malformed("skipped");
  return m;
}

std::string Encode(const CallMessage& m) {
  WireWriter w;
  w.Put(m.task_seq);
  w.Put(m.call_id);
  w.PutBytes(m.request);
  return w.Finish();
}

absl::StatusOr<CallMessage> DecodeCall(absl::string_view body) {
  WireReader r(body);
  CallMessage m;
  if (!r.Get(&m.task_seq) || !r.Get(&m.call_id) || !r.GetBytes(&m.request) ||
      !r.done()) {
    return Malformed("call");
  }
  return m;
}

std::string Encode(const CallReplyMessage& m) {
  WireWriter w;
  w.Put(m.task_seq);
  w.Put(m.call_id);
  w.Put(m.code);
  w.PutBytes(m.message);
  w.PutBytes(m.data);
  return w.Finish();
}

absl::StatusOr<CallReplyMessage> DecodeCallReply(absl::string_view body) {
  WireReader r(body);
  CallReplyMessage m;
  if (!r.Get(&m.task_seq) || !r.Get(&m.call_id) || !r.Get(&m.code) ||
      !r.GetBytes(&m.message) || !r.GetBytes(&m.data) || !r.done()) {
    return Malformed("call reply");
  }
  return m;
}

std::optional<absl::Status> StatusFromWire(int32_t code,
                                           absl::string_view message) {
  if (code < 0 ||
      code > static_cast<int32_t>(absl::StatusCode::kUnauthenticated)) {
    return std::nullopt;
  }
  if (code == 0) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(code), message);
}

}  // namespace forq::worker
