// The messages forqd, the supervisor and workers exchange: frame bodies on
// the shared-memory rings (forqd <-> worker) and fixed-size records on the
// supervisor pipes (forqd <-> supervisor). Decoders treat their input as
// hostile: every length is bounded by the bytes actually present.
#ifndef FORQ_WORKER_PROTOCOL_H_
#define FORQ_WORKER_PROTOCOL_H_

#include <cstdint>
#include <optional>
#include <string>
#include <type_traits>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace forq::worker {

inline constexpr uint32_t kProtocolVersion = 1;

// Frame types on the rings.
enum class MessageType : uint16_t {
  // forqd -> worker (submission ring)
  kAssign = 1,
  kCallReply = 2,
  // worker -> forqd (completion ring)
  kReady = 16,
  kResult = 17,
  kProgress = 18,
  kCall = 19,
  // An assignment the worker did not run because forqd revoked it (see
  // SlotControl::revoked_upto). Every assignment is answered by exactly one
  // kResult or kSkipped, in assignment order.
  kSkipped = 20,
};

// Run one attempt. task_seq identifies the assignment for the rest of the
// exchange (results, progress, calls, cancel).
struct AssignMessage {
  uint64_t task_seq = 0;
  std::string task_id;
  int32_t attempt = 0;
  int64_t timeout_ns = -1;  // < 0: no hard timeout
  std::string kind;
  std::string payload;
};

// The worker is initialised and waits for an assignment.
struct ReadyMessage {
  int32_t pid = 0;
  uint32_t protocol_version = kProtocolVersion;
};

struct ResultMessage {
  uint64_t task_seq = 0;
  int32_t code = 0;  // absl::StatusCode
  bool unknown_kind = false;
  std::string message;
  std::string result;
  int64_t runtime_ns = 0;
};

struct ProgressMessage {
  uint64_t task_seq = 0;
  double fraction = 0;
  std::string message;
};

struct SkippedMessage {
  uint64_t task_seq = 0;
};

// TaskContext::Call request and its reply.
struct CallMessage {
  uint64_t task_seq = 0;
  uint64_t call_id = 0;
  std::string request;
};
struct CallReplyMessage {
  uint64_t task_seq = 0;
  uint64_t call_id = 0;
  int32_t code = 0;  // absl::StatusCode
  std::string message;
  std::string data;
};

// Encoders never fail; decoders return DataLoss for truncated input,
// trailing bytes or out-of-range values.
std::string Encode(const AssignMessage& m);
std::string Encode(const ReadyMessage& m);
std::string Encode(const ResultMessage& m);
std::string Encode(const ProgressMessage& m);
std::string Encode(const SkippedMessage& m);
std::string Encode(const CallMessage& m);
std::string Encode(const CallReplyMessage& m);
absl::StatusOr<AssignMessage> DecodeAssign(absl::string_view body);
absl::StatusOr<ReadyMessage> DecodeReady(absl::string_view body);
absl::StatusOr<ResultMessage> DecodeResult(absl::string_view body);
absl::StatusOr<ProgressMessage> DecodeProgress(absl::string_view body);
absl::StatusOr<SkippedMessage> DecodeSkipped(absl::string_view body);
absl::StatusOr<CallMessage> DecodeCall(absl::string_view body);
absl::StatusOr<CallReplyMessage> DecodeCallReply(absl::string_view body);

// The Status a wire code and message stand for; nullopt for a code outside
// absl::StatusCode. (Not StatusOr<Status>: that cannot tell a decoding error
// from a decoded error.)
std::optional<absl::Status> StatusFromWire(int32_t code,
                                           absl::string_view message);

// forqd -> supervisor pipe record. Smaller than PIPE_BUF, so each write is
// atomic.
struct SupervisorCommand {
  enum Type : uint32_t {
    kKill = 1,  // send `signal` to the worker `pid` in `slot` (and its group)
    kRespawn = 2,  // fork a new worker for the dead `slot` after `delay_ms`
  };
  uint32_t version;
  uint32_t type;
  int32_t slot;
  int32_t pid;
  int32_t signal;
  uint32_t delay_ms;
};
static_assert(sizeof(SupervisorCommand) == 24);
static_assert(std::is_trivially_copyable_v<SupervisorCommand>);

// supervisor -> forqd pipe record.
struct SupervisorEvent {
  enum Type : uint32_t {
    kSpawned = 1,      // a worker `pid` started in `slot`
    kExited = 2,       // worker `pid` in `slot` was reaped; see wait_status
    kSpawnFailed = 3,  // fork failed for `slot` (errno in wait_status);
                       // the supervisor retries on its own
  };
  uint32_t version;
  uint32_t type;
  int32_t slot;
  int32_t pid;
  int32_t wait_status;
  int32_t reserved;
};
static_assert(sizeof(SupervisorEvent) == 24);
static_assert(std::is_trivially_copyable_v<SupervisorEvent>);

}  // namespace forq::worker

#endif  // FORQ_WORKER_PROTOCOL_H_
