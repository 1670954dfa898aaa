// Helpers shared by the files of libforq's Manager proxies (manager*.cc).
// Internal to libforq.
#ifndef FORQ_CLIENT_SRC_MANAGER_INTERNAL_H_
#define FORQ_CLIENT_SRC_MANAGER_INTERNAL_H_

#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "google/protobuf/util/time_util.h"

#include "api/forq/v1/manager_ops.h"
#include "forq/v1/manager.pb.h"

namespace forq::manager_internal {

template <typename Req>
void SetTimeout(Req& req, absl::Duration timeout) {
  if (timeout == absl::InfiniteDuration()) return;
  if (timeout < absl::ZeroDuration()) timeout = absl::ZeroDuration();
  *req.mutable_timeout() =
      google::protobuf::util::TimeUtil::MillisecondsToDuration(
          absl::ToInt64Milliseconds(timeout));
}

// The owner of RLock/Condition holds within a session: the calling thread.
inline std::string ThreadOwner() {
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

inline std::vector<std::string> ResultValues(const v1::ManagerResult& r) {
  return {r.values().begin(), r.values().end()};
}

inline std::map<std::string, std::string> ResultItems(
    const v1::ManagerResult& r) {
  std::map<std::string, std::string> out;
  for (const auto& kv : r.items()) out[kv.key()] = kv.value();
  return out;
}

// A google.rpc.Code from forqd as a Status (Unknown when out of range).
inline absl::Status StatusFromCode(int code, const std::string& message) {
  if (code < 0 || code > static_cast<int>(absl::StatusCode::kUnauthenticated)) {
    return absl::UnknownError(message);
  }
  return absl::Status(static_cast<absl::StatusCode>(code), message);
}

// One operation's answer (Session stream or local socket): its result,
// moved out, or its error.
inline absl::StatusOr<v1::ManagerResult> TakeResult(v1::SessionResult& r) {
  if (r.code() != 0) return StatusFromCode(r.code(), r.message());
  return std::move(*r.mutable_result());
}

}  // namespace forq::manager_internal

#endif  // FORQ_CLIENT_SRC_MANAGER_INTERNAL_H_
