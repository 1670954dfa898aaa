// Internals of the fork pool shared by its files (fork_pool.cc: set-up,
// dispatch and the public calls; fork_pool_events.cc: the event thread,
// worker messages, exits and timers): the per-worker Slot and the ForkPool
// class. Not part of worker/'s interface: include worker/fork_pool.h.
#ifndef FORQ_WORKER_FORK_POOL_INTERNAL_H_
#define FORQ_WORKER_FORK_POOL_INTERNAL_H_

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <deque>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <new>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"

#include "common/errno_status.h"
#include "common/mutex.h"
#include "common/scoped_fd.h"
#include "common/status_macros.h"
#include "worker/assignment_queue.h"
#include "worker/builtins.h"
#include "worker/channel.h"
#include "worker/cpu_quota.h"
#include "worker/exec_runner.h"
#include "worker/fork_pool.h"
#include "worker/launcher.h"
#include "worker/plugin_loader.h"
#include "worker/process_util.h"
#include "worker/protocol.h"
#include "worker/shm_region.h"
#include "worker/supervisor.h"

namespace forq::worker::fork_pool_internal {

// A worker may hand forqd bodies up to this size through the spill path;
// anything larger is treated as a protocol violation (forqd's memory is not
// the worker's to spend).
constexpr uint64_t kMaxSpillBytes = uint64_t{256} << 20;
// Frames handled per slot per event-loop turn, so one chatty worker cannot
// starve the others.
constexpr int kMaxFramesPerTurn = 256;
// A worker whose running attempt has gone this long gives back the
// assignments queued behind it when another worker is idle.
constexpr absl::Duration kStealAfter = absl::Milliseconds(2);
// About this much of a kind's mean run time waits in a worker's queue
// (MaxAssignedFor); a kind whose mean is kUnqueuedRunTime or more waits in
// the scheduler for an idle worker instead (a dispatch round trip is a
// small part of such a task).
constexpr absl::Duration kQueuedWork = absl::Milliseconds(2);
constexpr absl::Duration kUnqueuedRunTime = absl::Milliseconds(20);
// Kinds whose run time the pool keeps (MaxAssignedFor): plugins register a
// bounded set, but a pool that does not know its kinds takes any name.
constexpr size_t kMaxKindsTimed = 1024;

constexpr absl::Duration kRssPollInterval = absl::Milliseconds(100);
// The event thread's longest sleep (it recomputes its deadlines then).
constexpr absl::Duration kMaxEventSleep = absl::Seconds(60);
// GetPool and the metrics read worker RSS from /proc at most this often.
constexpr absl::Duration kRssCacheFor = absl::Seconds(1);
constexpr int kMaxWorkers = 1024;

constexpr uint64_t kSupervisorKey = uint64_t{1} << 32;
constexpr uint64_t kControlKey = kSupervisorKey + 1;

enum class KillReason {
  kNone,
  kTimeout,
  kCancel,
  kMemory,
  kRecycle,
  kProtocol,
};

// forqd's view of one worker slot.
struct Slot {
  explicit Slot(absl::Duration cancel_grace) : queue(cancel_grace) {}

  int index = 0;
  ShmRegion region;
  SlotView view{};
  ScopedFd submission_wake;
  ScopedFd completion_wake;
  ScopedFd spill_sock;         // forqd's end
  ScopedFd worker_spill_sock;  // the worker's end, closed after the fork
  std::unique_ptr<Channel> channel;

  // Current incarnation. generation changes whenever the worker dies, so
  // late call replies for a dead worker are dropped.
  uint64_t generation = 0;
  pid_t pid = 0;
  pid_t ready_pid = 0;  // pid announced by the Ready frame
  bool ready = false;
  bool ever_ready = false;
  int start_failures = 0;
  absl::Time started_at = absl::InfinitePast();
  WorkerState state = WorkerState::kStarting;
  KillReason kill_reason = KillReason::kNone;
  std::string kill_detail;
  uint64_t tasks_this_life = 0;
  uint64_t tasks_done = 0;
  uint32_t restarts = 0;

  // Assignments sent to this worker and not answered yet, in order: the
  // head runs (or is about to); the others wait in its ring.
  AssignmentQueue queue;
  absl::Time next_rss_check = absl::InfiniteFuture();
  // Cancel asked for an assignment still queued: revoke on the next turn.
  bool revoke_pending = false;
  // Worker RSS, sampled at most once per kRssCacheFor for Workers().
  uint64_t rss_bytes = 0;
  absl::Time rss_sampled = absl::InfinitePast();

  bool busy() const { return !queue.empty(); }
};

class ForkPool;

// Lets TaskContext::Call replies outlive the pool: a reply that arrives
// after Shutdown finds `pool` null and is dropped. shared_ptr because the
// reply callables are copied into the caller's code with no bound lifetime.
struct ReplyGate {
  Mutex mu;
  ForkPool* pool ABSL_GUARDED_BY(mu) = nullptr;
};

// "killed by signal 9 (Killed)", "exited with status 1", ...
std::string DescribeWait(int status);
// The metrics label of a worker's exit.
std::string ExitReason(KillReason kill, int status);
// Checks `o` and fills its defaults (workers = DefaultWorkerCount()).
absl::Status ValidateOptions(ForkPoolOptions& o);

// The forqd side of the pool. Thread-safe; callbacks run on the event thread
// without mu_ held.
class ForkPool : public WorkerPool {
 public:
  ForkPool(ForkPoolOptions options, std::unique_ptr<HandlerRegistry> registry,
           std::unique_ptr<SupervisorLauncher> launcher)
      : options_(std::move(options)),
        registry_(std::move(registry)),
        launcher_(std::move(launcher)),
        gate_(std::make_shared<ReplyGate>()) {}
  ForkPool(const ForkPool&) = delete;
  ForkPool& operator=(const ForkPool&) = delete;
  ~ForkPool() override { Shutdown(); }

  // Creates the slots and starts the supervisor through launcher_.
  // Single-threaded callers only.
  absl::Status Init() ABSL_LOCKS_EXCLUDED(mu_);
  // One slot's shared memory, rings, wake-up fds and spill socket.
  absl::StatusOr<std::unique_ptr<Slot>> CreateSlot(int index) const;
  // The epoll set of the event thread (after the fork).
  absl::Status SetUpEventLoopLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Status Start(PoolCallbacks callbacks) override ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status Dispatch(Assignment a) override ABSL_LOCKS_EXCLUDED(mu_);
  size_t DispatchMany(std::vector<Assignment>& batch) override
      ABSL_LOCKS_EXCLUDED(mu_);
  int IdleCount() override ABSL_LOCKS_EXCLUDED(mu_);
  int Room() override ABSL_LOCKS_EXCLUDED(mu_);
  int RoomFor(const std::string& kind) override ABSL_LOCKS_EXCLUDED(mu_);
  void Cancel(absl::string_view task_id, int attempt) override
      ABSL_LOCKS_EXCLUDED(mu_);
  std::vector<WorkerInfo> Workers() override ABSL_LOCKS_EXCLUDED(mu_);
  int size() const override { return options_.workers; }
  int supervisor_pid() const override { return supervisor_pid_; }
  std::vector<std::string> Kinds() const override { return registry_->Kinds(); }
  void Shutdown() override ABSL_LOCKS_EXCLUDED(mu_);

  // Sends the reply of a TaskContext::Call, if the calling attempt is still
  // running in the same worker.
  void DeliverCallReply(int slot, uint64_t generation, uint64_t task_seq,
                        uint64_t call_id,
                        const absl::StatusOr<std::string>& reply)
      ABSL_LOCKS_EXCLUDED(mu_);

 private:
  using Todo = std::vector<std::function<void()>>;

  void EventLoop() ABSL_LOCKS_EXCLUDED(mu_);
  // Sends `a` to a worker with room; false if none has. Wake-ups are left
  // to the caller (WakeWorkersLocked), one per worker per batch.
  bool DispatchLocked(Assignment& a, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void WakeWorkersLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Assignments a worker may hold at once (running + queued).
  size_t MaxAssigned() const;
  // Room() with at most `max_assigned` per worker.
  int RoomLocked(size_t max_assigned) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The same when the next one is of `kind`: as many queued as make about
  // kQueuedWork of the kind's mean run time, at least one and at most
  // MaxAssigned() - 1; none for a kind of kUnqueuedRunTime or more; one
  // while the kind's run time is unknown. A worker's queue then holds
  // little work, so a task submitted later (of higher priority, say) does
  // not wait behind many long ones.
  size_t MaxAssignedFor(const std::string& kind) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Folds an attempt's run time into its kind's mean.
  void RecordRunTimeLocked(const std::string& kind, absl::Duration runtime)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool Usable(const Slot& s) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The head of `s`'s queue changed at `now`: rearms the RSS check and
  // wakes the event thread if a deadline moved before its planned wake.
  void HeadChangedLocked(Slot& s, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Takes back every queued assignment of `s` the worker has not started;
  // each is answered kRevoked (kCancelled if a cancel asked for it).
  void RevokeLocked(Slot& s, Todo& todo) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Revokes what waits behind long attempts while another worker is idle.
  void StealLocked(absl::Time now, Todo& todo)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PushOutcomeLocked(Outcome o, Todo& todo)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Outcome RevokedOutcome(const Slot& s,
                         const AssignmentQueue::Pending& p) const;
  // How attempt `p`, taken by worker `pid` of `s` that ended with `status`,
  // is reported.
  Outcome DeathOutcome(const Slot& s, const AssignmentQueue::Pending& p,
                       pid_t pid, int status, absl::Duration runtime) const;
  void ReadSupervisorLocked(Todo& todo) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void HandleSupervisorEventLocked(const SupervisorEvent& e, Todo& todo)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SupervisorLostLocked(Todo& todo) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void HandleExitLocked(Slot& s, pid_t pid, int status, Todo& todo)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void DrainSlotLocked(Slot& s, Todo& todo, bool exiting)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void HandleMessageLocked(Slot& s, const Message& m, Todo& todo, bool exiting)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void HandleResultLocked(Slot& s, const Message& m, Todo& todo, bool exiting)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void HandleCallLocked(Slot& s, const Message& m, Todo& todo, bool exiting)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void MarkReadyLocked(Slot& s, Todo& todo) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ViolationLocked(Slot& s, const absl::Status& why)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void KillLocked(Slot& s, KillReason reason)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SendCallReplyLocked(Slot& s, uint64_t task_seq, uint64_t call_id,
                           const absl::StatusOr<std::string>& reply)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SendCommandLocked(uint32_t type, int slot, pid_t pid, int sig,
                         uint32_t delay_ms) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CheckTimersLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  int NextTimeoutMsLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void WakeEventThread();

  const ForkPoolOptions options_;
  // Handlers the workers inherit; kept alive for the pool's lifetime.
  const std::unique_ptr<HandlerRegistry> registry_;
  const std::unique_ptr<SupervisorLauncher> launcher_;
  const std::shared_ptr<ReplyGate> gate_;

  // Filled by Init, then never resized. A Slot is reachable only through
  // slots_, so holding mu_ to look one up is what guards its mutable fields
  // (the analysis checks every lookup; Slot's own fields carry no
  // annotation because they cannot name the pool's mutex).
  std::vector<std::unique_ptr<Slot>> slots_ ABSL_GUARDED_BY(mu_);
  pid_t supervisor_pid_ = 0;  // 0: none, or a launcher without a process
  ScopedFd command_fd_;       // write end to the supervisor
  ScopedFd event_fd_;         // read end from the supervisor
  ScopedFd epoll_fd_;
  ScopedFd control_wake_;
  // Set once by Start before the event thread exists; read-only after.
  PoolCallbacks callbacks_;
  std::thread thread_;

  Mutex mu_;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool supervisor_lost_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t last_task_seq_ ABSL_GUARDED_BY(mu_) = 0;
  size_t next_slot_ ABSL_GUARDED_BY(mu_) = 0;
  char event_buf_[sizeof(SupervisorEvent) * 64] ABSL_GUARDED_BY(mu_);
  // Slots sent frames since their last wake-up check.
  std::vector<Slot*> to_wake_ ABSL_GUARDED_BY(mu_);
  // Mean run time per task kind (MaxAssignedFor); at most kMaxKindsTimed
  // kinds, the first ones seen.
  std::map<std::string, absl::Duration, std::less<>> kind_run_time_
      ABSL_GUARDED_BY(mu_);
  // When the event thread, asleep, will wake by itself.
  absl::Time planned_wake_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  size_t event_buf_len_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace forq::worker::fork_pool_internal

#endif  // FORQ_WORKER_FORK_POOL_INTERNAL_H_
