// The Manager as tasks see it: a typed client over TaskContext::Call, plus
// the request/reply types and their binary encoding shared with forqd's
// server/manager (which decodes them and runs the same core as the gRPC
// ManagerService). worker/ has no protobuf, so the encoding is our own: a
// small versioned TLV format, length-checked on decode (see manager_client.cc
// for the layout). forqd treats every decoded request as untrusted.
#ifndef FORQ_WORKER_MANAGER_CLIENT_H_
#define FORQ_WORKER_MANAGER_CLIENT_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

#include "worker/handler.h"

namespace forq::worker {

// Object types; the numbers match forq.v1.ObjectType.
enum class ManagerType : uint8_t {
  kDict = 1,
  kList = 2,
  kValue = 3,
  kArray = 4,
  kNamespace = 5,
  kQueue = 6,
  kPipe = 7,
  kLock = 8,
  kRLock = 9,
  kSemaphore = 10,
  kBoundedSemaphore = 11,
  kCondition = 12,
  kEvent = 13,
  // Not an object: session operations (kOpen, kKeepAlive, kClose).
  kSession = 14,
};
inline constexpr uint8_t kMaxManagerType = 14;

// Operations. Which ops a type accepts is checked by the server.
enum class ManagerOp : uint8_t {
  kGet = 1,
  kSet = 2,
  kDelete = 3,
  kContains = 4,
  kKeys = 5,
  kItems = 6,
  kLen = 7,
  kUpdate = 8,
  kClear = 9,
  kCompareAndSet = 10,
  kSetIfAbsent = 11,
  kAppend = 12,
  kExtend = 13,
  kPop = 14,
  kInsert = 15,
  kRemove = 16,
  kSlice = 17,
  kAdd = 18,
  kPut = 19,
  kSize = 20,
  kTaskDone = 21,
  kJoin = 22,
  kSend = 23,
  kRecv = 24,
  kPoll = 25,
  kAcquire = 26,
  kRelease = 27,
  kValue = 28,
  kWait = 29,
  kNotify = 30,
  kNotifyAll = 31,
  kIsSet = 32,
  kOpen = 33,
  kKeepAlive = 34,
  kClose = 35,
};
inline constexpr uint8_t kMaxManagerOp = 35;

// Lower-case names for logs, metrics labels and the CLI ("dict", "get").
absl::string_view ManagerTypeName(ManagerType type);
absl::string_view ManagerOpName(ManagerOp op);

// One Manager operation. Fields an op does not use are ignored.
struct ManagerRequest {
  ManagerType type = ManagerType::kDict;
  ManagerOp op = ManagerOp::kGet;
  std::string name;
  // Owner of lock holds / permits; renewed by every request naming it.
  std::string session;
  // Distinguishes threads sharing one session (RLock re-entrancy).
  std::string owner;
  // Dict key / namespace attribute.
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

struct ManagerClientOptions {
  // Lease of the session this client opens for locks and permits.
  absl::Duration session_ttl = absl::Seconds(30);
};

// A typed Manager client for one handler call, over its TaskContext.
// Thread-compatible (like TaskContext). Blocking operations are also bounded
// by the task's deadline. The session for locks and permits is opened on
// first use, renewed by every call that names it, and closed by the
// destructor, so whatever the task still holds is released when it returns;
// if the worker dies instead, the session expires after session_ttl.
class ManagerClient {
 public:
  explicit ManagerClient(TaskContext& ctx, ManagerClientOptions options = {});
  ~ManagerClient();
  ManagerClient(const ManagerClient&) = delete;
  ManagerClient& operator=(const ManagerClient&) = delete;

  // Sends any request (the typed helpers below are shorthands).
  absl::StatusOr<ManagerReply> Call(ManagerRequest request);

  absl::StatusOr<std::string> DictGet(absl::string_view name,
                                      absl::string_view key);
  absl::Status DictSet(absl::string_view name, absl::string_view key,
                       absl::string_view value);
  absl::StatusOr<std::string> ListGet(absl::string_view name, int64_t index);
  absl::Status ListSet(absl::string_view name, int64_t index,
                       absl::string_view value);
  absl::StatusOr<int64_t> ListAppend(absl::string_view name,
                                     absl::string_view value);
  // Atomic add; returns the new value as decimal text.
  absl::StatusOr<std::string> ListAdd(absl::string_view name, int64_t index,
                                      absl::string_view delta);
  absl::StatusOr<std::string> ValueAdd(absl::string_view name,
                                       absl::string_view delta);
  // Blocks while the queue is full; ResourceExhausted after `timeout`.
  absl::Status QueuePut(absl::string_view name, absl::string_view item,
                        absl::Duration timeout = absl::InfiniteDuration());
  // Blocks while the queue is empty; DeadlineExceeded after `timeout`.
  absl::StatusOr<std::string> QueueGet(
      absl::string_view name,
      absl::Duration timeout = absl::InfiniteDuration());
  // Acquires a Lock for this client's session; returns its fencing token.
  // DeadlineExceeded when `timeout` passes first.
  absl::StatusOr<uint64_t> LockAcquire(
      absl::string_view name,
      absl::Duration timeout = absl::InfiniteDuration());
  absl::Status LockRelease(absl::string_view name);
  absl::Status EventSet(absl::string_view name);
  // True if set, false if `timeout` passed first.
  absl::StatusOr<bool> EventWait(absl::string_view name,
                                 absl::Duration timeout);

  // The session id, opening it if needed.
  absl::StatusOr<std::string> Session();
  // Closes the session now (releasing its holdings); a later lock op opens a
  // new one.
  absl::Status CloseSession();

 private:
  int64_t TimeoutMs(absl::Duration timeout) const;

  TaskContext& ctx_;
  const ManagerClientOptions options_;
  std::string session_;
};

}  // namespace forq::worker

#endif  // FORQ_WORKER_MANAGER_CLIENT_H_
