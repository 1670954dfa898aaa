// The Manager's task-side protocol: the request/reply types of one Manager
// operation and their binary encoding, shared by worker/ (ManagerClient,
// over TaskContext::Call) and forqd's server/manager (which decodes them and
// runs the same core as the gRPC ManagerService). worker/ has no protobuf,
// so the encoding is our own: a small versioned TLV format, length-checked
// on decode (see manager_protocol.cc for the layout). forqd treats every
// decoded request as untrusted.
#ifndef FORQ_WORKER_MANAGER_PROTOCOL_H_
#define FORQ_WORKER_MANAGER_PROTOCOL_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

#include "api/forq/v1/manager_ops.h"

namespace forq::worker {

// The type and op vocabulary and the operation table live in
// api/forq/v1/manager_ops.h (plain C++), shared with forqd and the client.
using v1::kMaxManagerOp;
using v1::kMaxManagerType;
using v1::ManagerOp;
using v1::ManagerOpName;
using v1::ManagerType;
using v1::ManagerTypeName;

// One Manager operation. Fields an op does not use are ignored.
struct ManagerRequest {
  ManagerType type = ManagerType::kDict;
  ManagerOp op = ManagerOp::kGet;
  std::string name;
  // Owner of lock holds / permits; renewed by every request naming it.
  std::string session;
  // Distinguishes threads sharing one session (RLock re-entrancy).
  std::string owner;
  // Dict key / namespace attribute; list sort: the key kind ("bytes",
  // "int", "float").
  std::string key;
  std::string value;
  // Compare-and-set: required current value.
  std::string expected;
  bool expect_absent = false;
  std::vector<std::string> values;
  std::vector<std::pair<std::string, std::string>> items;
  bool has_index = false;
  int64_t index = 0;
  bool has_start = false;
  int64_t start = 0;
  bool has_stop = false;
  int64_t stop = 0;
  // Decimal number for add ops.
  std::string delta;
  // Blocking ops: -1 = no limit of its own, 0 = do not block, > 0 = ms.
  int64_t timeout_ms = -1;
  // Creation parameters.
  int64_t maxsize = 0;   // queue
  int64_t length = 0;    // array
  std::string typecode;  // array: "i" or "d"
  bool has_initial = false;
  int64_t initial = 1;   // semaphore permits
  bool one_way = false;  // pipe
  int64_t end = 0;       // pipe endpoint, 0 or 1
  int64_t n = 1;         // condition notify count
  int64_t ttl_ms = 0;    // session open
  bool reverse = false;  // list sort: descending
};

// The outcome of a successful operation; errors travel as absl::Status.
struct ManagerReply {
  std::string value;
  bool found = false;
  // acquired / notified / is_set / readable, by op.
  bool flag = false;
  // len / size / permits / woken / released, by op.
  int64_t length = 0;
  int64_t maxsize = 0;
  int64_t unfinished = 0;
  int64_t count = 0;
  uint64_t token = 0;
  std::string typecode;
  std::vector<std::string> values;
  std::vector<std::pair<std::string, std::string>> items;
};

// Wire format limits: a message above kMaxManagerMessage bytes or with more
// than kMaxManagerEntries values/items is refused.
inline constexpr size_t kMaxManagerMessage = 64u << 20;
inline constexpr size_t kMaxManagerEntries = 1u << 20;

std::string EncodeManagerRequest(const ManagerRequest& request);
// InvalidArgument for anything malformed: wrong magic or version, truncated
// or oversized fields, unknown tags, duplicated scalars, out-of-range enums.
absl::StatusOr<ManagerRequest> DecodeManagerRequest(absl::string_view data);
std::string EncodeManagerReply(const ManagerReply& reply);
absl::StatusOr<ManagerReply> DecodeManagerReply(absl::string_view data);

}  // namespace forq::worker

#endif  // FORQ_WORKER_MANAGER_PROTOCOL_H_
