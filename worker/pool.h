// The worker pool as forqd sees it: dispatch an assignment to an idle worker,
// get its outcome back. worker/ knows nothing of gRPC or protobuf; payloads
// and results are bytes.
#ifndef FORQ_WORKER_POOL_H_
#define FORQ_WORKER_POOL_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace forq::worker {

// One attempt of one task, sent to one worker.
struct Assignment {
  std::string task_id;
  int attempt = 1;
  std::string kind;
  std::string payload;
  // Hard timeout: the worker is killed when it passes. InfiniteDuration (or
  // a non-positive duration) = none. It runs from the moment the attempt
  // starts in its worker.
  absl::Duration timeout = absl::InfiniteDuration();
  // Set by DispatchMany for each assignment it sent: true when it waits in
  // its worker's queue behind a running attempt (it starts when the one
  // before it ends: Outcome::next_task_id); false when it starts at once.
  bool queued = false;
};

// Assignments with a timeout at least this long (or none) may be queued
// behind a running one in a worker; shorter ones go only to idle workers, so
// their timeout starts when they are dispatched.
inline constexpr absl::Duration kMinQueuedTimeout = absl::Seconds(10);

inline bool MayQueueBehind(absl::Duration timeout) {
  return timeout == absl::InfiniteDuration() ||
         timeout <= absl::ZeroDuration() || timeout >= kMinQueuedTimeout;
}
inline bool MayQueueBehind(const Assignment& a) {
  return MayQueueBehind(a.timeout);
}

// How an attempt ended.
enum class OutcomeKind {
  kSucceeded,
  kHandlerError,       // status holds the handler's error
  kTimeout,            // hard timeout; worker killed
  kSignaled,           // worker died from `signal`
  kOutOfMemory,        // worker passed its memory limit
  kWorkerLost,         // worker exited/vanished for another reason
  kCancelled,          // cancelled while running
  kProtocolViolation,  // worker wrote garbage to its ring/pipe; killed
  kUnknownKind,        // no handler registered for the kind
  // Never started: the pool took the assignment back (it was queued behind
  // a long task while another worker went idle, or the pool is going away).
  // The attempt does not count; the scheduler queues the task again.
  kRevoked,
};

absl::string_view OutcomeKindName(OutcomeKind kind);

struct Outcome {
  std::string task_id;
  int attempt = 0;
  int worker_pid = 0;
  OutcomeKind kind = OutcomeKind::kWorkerLost;
  // OK for kSucceeded; the error (code + message) otherwise.
  absl::Status status;
  std::string result;
  int signal = 0;
  // Wall time the attempt ran in the worker.
  absl::Duration runtime;
  // The attempt that waited behind this one in its worker's queue and
  // started as this one ended (empty when none did).
  std::string next_task_id;
  int next_attempt = 0;
};

enum class WorkerState { kStarting, kIdle, kBusy, kRespawning };

struct WorkerInfo {
  int slot = 0;
  int pid = 0;
  int parent_pid = 0;
  WorkerState state = WorkerState::kStarting;
  std::string current_task_id;
  uint64_t tasks_done = 0;
  uint64_t rss_bytes = 0;
  uint32_t restarts = 0;
  absl::Time started_at;
};

// A worker exited (and is being replaced). `reason` is a short stable label
// for metrics: "crash", "killed", "timeout", "memory", "recycle",
// "protocol", "exit".
struct WorkerExit {
  int slot = 0;
  int pid = 0;
  std::string reason;
};

// Callbacks from the pool; all run on the pool's own event thread and must
// not block (hand work to another thread if needed).
struct PoolCallbacks {
  std::function<void(Outcome)> on_outcome;
  std::function<void(absl::string_view task_id, int attempt, double fraction,
                     absl::string_view message)>
      on_progress;
  // A worker became idle: the scheduler may dispatch.
  std::function<void()> on_worker_idle;
  std::function<void(const WorkerExit&)> on_worker_exit;
  // The pool cannot run tasks any more (its supervisor died); the owner
  // should stop and be restarted. Running attempts were reported lost.
  std::function<void(const absl::Status&)> on_pool_lost;
  // Runs after the other callbacks of one event-loop turn (a batch of
  // outcomes, say), so the receiver can act once per batch.
  std::function<void()> on_turn_end;
  // A task called TaskContext::Call. `reply` must be called exactly once,
  // from any thread, possibly later (blocking Manager operations).
  std::function<void(absl::string_view task_id, std::string request,
                     std::function<void(absl::StatusOr<std::string>)> reply)>
      on_call;
};

// Interface of the pool, so the scheduler can be tested with a fake.
// Thread-safe.
class WorkerPool {
 public:
  virtual ~WorkerPool() = default;

  // Starts delivering callbacks. Call once, before Dispatch.
  virtual absl::Status Start(PoolCallbacks callbacks) = 0;
  // Sends `a` to an idle worker. ResourceExhausted when none is idle,
  // Unavailable after Shutdown.
  virtual absl::Status Dispatch(Assignment a) = 0;
  // Sends the assignments of `batch`, in order, until one is refused.
  // Returns how many were sent (moved out of `batch`, `queued` set); the
  // refused one and those after it stay as they were.
  virtual size_t DispatchMany(std::vector<Assignment>& batch) {
    size_t n = 0;
    for (; n < batch.size(); ++n) {
      Assignment copy = batch[n];
      if (!Dispatch(std::move(copy)).ok()) break;
      batch[n].queued = false;  // Dispatch sends to idle workers only
    }
    return n;
  }
  // Workers ready for an assignment right now.
  virtual int IdleCount() = 0;
  // Assignments the pool would take right now if all may queue behind a
  // running one (MayQueueBehind); at least IdleCount().
  virtual int Room() { return IdleCount(); }
  // Room() for assignments of `kind`, for a pool that lets fewer of some
  // kinds wait behind a running attempt (ForkPool: by their run time).
  virtual int RoomFor(const std::string& kind) {
    (void)kind;
    return Room();
  }
  // Asks the worker running (task_id, attempt) to stop: ctx.cancelled()
  // turns true, and the worker is killed after the grace period. No-op if
  // that attempt is not running.
  virtual void Cancel(absl::string_view task_id, int attempt) = 0;
  virtual std::vector<WorkerInfo> Workers() = 0;
  virtual int size() const = 0;
  // Task kinds the workers can run (built-ins and plugins), sorted. Empty
  // means unknown: the scheduler then accepts any kind and the worker reports
  // kUnknownKind.
  virtual std::vector<std::string> Kinds() const { return {}; }
  virtual int supervisor_pid() const = 0;
  // Kills every worker and the supervisor; running attempts are abandoned
  // without callbacks. Idempotent. Must not be called from a pool callback
  // (it joins the thread that runs them).
  virtual void Shutdown() = 0;
};

}  // namespace forq::worker

#endif  // FORQ_WORKER_POOL_H_
