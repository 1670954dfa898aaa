#include "worker/fork_pool.h"

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
#include "worker/plugin_loader.h"
#include "worker/process_util.h"
#include "worker/protocol.h"
#include "worker/shm_region.h"
#include "worker/supervisor.h"

namespace forq::worker {
namespace {

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

constexpr absl::Duration kRssPollInterval = absl::Milliseconds(100);
constexpr absl::Duration kSupervisorExitWait = absl::Seconds(2);
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

std::string DescribeWait(int status) {
  if (WIFSIGNALED(status)) {
    const char* name = sigdescr_np(WTERMSIG(status));  // thread-safe
    return absl::StrCat("killed by signal ", WTERMSIG(status), " (",
                        name != nullptr ? name : "?", ")");
  }
  if (WIFEXITED(status)) {
    return absl::StrCat("exited with status ", WEXITSTATUS(status));
  }
  return absl::StrCat("ended with wait status ", status);
}

// The forqd side of the pool. Thread-safe; callbacks run on the event thread
// without mu_ held.
class ForkPool : public WorkerPool {
 public:
  ForkPool(ForkPoolOptions options, std::unique_ptr<HandlerRegistry> registry)
      : options_(std::move(options)),
        registry_(std::move(registry)),
        gate_(std::make_shared<ReplyGate>()) {}
  ForkPool(const ForkPool&) = delete;
  ForkPool& operator=(const ForkPool&) = delete;
  ~ForkPool() override { Shutdown(); }

  // Creates the slots and forks the supervisor. Single-threaded callers only.
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
  void WaitForSupervisor();

  const ForkPoolOptions options_;
  // Handlers the workers inherit; kept alive for the pool's lifetime.
  const std::unique_ptr<HandlerRegistry> registry_;
  const std::shared_ptr<ReplyGate> gate_;

  // Filled by Init, then never resized. A Slot is reachable only through
  // slots_, so holding mu_ to look one up is what guards its mutable fields
  // (the analysis checks every lookup; Slot's own fields carry no
  // annotation because they cannot name the pool's mutex).
  std::vector<std::unique_ptr<Slot>> slots_ ABSL_GUARDED_BY(mu_);
  pid_t supervisor_pid_ = 0;
  ScopedFd command_fd_;  // write end to the supervisor
  ScopedFd event_fd_;    // read end from the supervisor
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
  // When the event thread, asleep, will wake by itself.
  absl::Time planned_wake_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  size_t event_buf_len_ ABSL_GUARDED_BY(mu_) = 0;
};

absl::StatusOr<std::unique_ptr<Slot>> ForkPool::CreateSlot(int index) const {
  const size_t region_bytes = SlotLayout::TotalBytes(options_.ring_bytes);
  auto s = std::make_unique<Slot>(options_.cancel_grace);
  s->index = index;
  FORQ_ASSIGN_OR_RETURN(s->region,
                        ShmRegion::Create("forq-worker-slot", region_bytes));
  s->view = ViewSlot(s->region.data(), options_.ring_bytes);
  SlotControl* control = new (s->view.control) SlotControl();
  control->magic = kSlotMagic;
  control->version = kSlotVersion;
  control->ring_bytes = options_.ring_bytes;
  control->cancel_seq.store(0, std::memory_order_relaxed);
  new (s->view.submission_control) RingControl();
  new (s->view.completion_control) RingControl();
  s->submission_wake.reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  s->completion_wake.reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!s->submission_wake.valid() || !s->completion_wake.valid()) {
    return ErrnoToStatus(errno, "eventfd");
  }
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
    return ErrnoToStatus(errno, "socketpair");
  }
  s->spill_sock.reset(sv[0]);
  s->worker_spill_sock.reset(sv[1]);
  s->channel = std::make_unique<Channel>(
      ShmRing(s->view.submission_control, s->view.submission_data,
              options_.ring_bytes),
      ShmRing(s->view.completion_control, s->view.completion_data,
              options_.ring_bytes),
      ChannelFds{s->submission_wake.get(), s->completion_wake.get(),
                 s->spill_sock.get()},
      kMaxSpillBytes);
  s->channel->Reset();
  return s;
}

absl::Status ForkPool::SetUpEventLoopLocked() {
  epoll_fd_.reset(epoll_create1(EPOLL_CLOEXEC));
  control_wake_.reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!epoll_fd_.valid() || !control_wake_.valid()) {
    return ErrnoToStatus(errno, "epoll setup");
  }
  auto add = [this](int fd, uint64_t key) -> absl::Status {
    epoll_event ev;
    std::memset(&ev, 0, sizeof(ev));
    ev.events = EPOLLIN;
    ev.data.u64 = key;
    if (epoll_ctl(epoll_fd_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) {
      return ErrnoToStatus(errno, "epoll_ctl");
    }
    return absl::OkStatus();
  };
  FORQ_RETURN_IF_ERROR(add(event_fd_.get(), kSupervisorKey));
  FORQ_RETURN_IF_ERROR(add(control_wake_.get(), kControlKey));
  for (const auto& s : slots_) {
    FORQ_RETURN_IF_ERROR(
        add(s->completion_wake.get(), static_cast<uint64_t>(s->index)));
  }
  return absl::OkStatus();
}

absl::Status ForkPool::Init() {
  // No other thread exists yet; mu_ is taken anyway so that slots_ is only
  // ever touched under it (but never held across fork()).
  const size_t region_bytes = SlotLayout::TotalBytes(options_.ring_bytes);
  ScopedFd cmd_read;
  ScopedFd evt_write;
  // Everything the supervisor needs is built before fork: after it, the
  // child must not allocate (the parent may have other threads).
  SupervisorConfig config;
  {
    MutexLock l(&mu_);
    for (int i = 0; i < options_.workers; ++i) {
      FORQ_ASSIGN_OR_RETURN(std::unique_ptr<Slot> slot, CreateSlot(i));
      slots_.push_back(std::move(slot));
    }

    int cmd[2], evt[2];
    if (pipe2(cmd, O_CLOEXEC) != 0) return ErrnoToStatus(errno, "pipe");
    cmd_read.reset(cmd[0]);
    command_fd_.reset(cmd[1]);
    if (pipe2(evt, O_CLOEXEC) != 0) return ErrnoToStatus(errno, "pipe");
    event_fd_.reset(evt[0]);
    evt_write.reset(evt[1]);

    config.forqd_pid = getpid();
    config.command_fd = cmd_read.get();
    config.event_fd = evt_write.get();
    for (const auto& s : slots_) {
      config.slots.push_back(
          SupervisorSlot{s->region.fd(), s->submission_wake.get(),
                         s->completion_wake.get(), s->worker_spill_sock.get()});
      config.unmap.emplace_back(s->region.data(), s->region.size());
    }
    config.worker.shm_bytes = region_bytes;
    config.worker.ring_bytes = options_.ring_bytes;
    config.worker.max_spill_bytes = kMaxSpillBytes;
    config.worker.registry = registry_.get();
  }

  const pid_t pid = fork();
  if (pid < 0) return ErrnoToStatus(errno, "fork supervisor");
  if (pid == 0) RunSupervisor(config);
  supervisor_pid_ = pid;

  {
    MutexLock l(&mu_);
    // Close what only the supervisor and workers use.
    for (auto& s : slots_) {
      s->worker_spill_sock.reset();
      s->region.CloseFd();
    }
    if (fcntl(event_fd_.get(), F_SETFL, O_NONBLOCK) != 0) {
      return ErrnoToStatus(errno, "fcntl supervisor pipe");
    }
    FORQ_RETURN_IF_ERROR(SetUpEventLoopLocked());
  }
  {
    MutexLock g(&gate_->mu);
    gate_->pool = this;
  }
  return absl::OkStatus();
}

absl::Status ForkPool::Start(PoolCallbacks callbacks) {
  MutexLock l(&mu_);
  if (started_) return absl::FailedPreconditionError("pool already started");
  if (stopping_) return absl::UnavailableError("pool is shut down");
  started_ = true;
  callbacks_ = std::move(callbacks);
  thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "forq-pool");
    EventLoop();
  });
  return absl::OkStatus();
}

size_t ForkPool::MaxAssigned() const {
  // Queued assignments would outlive a recycle decision taken between
  // tasks, so the recycling options keep one assignment per worker.
  if (options_.max_tasks_per_child > 0 || options_.max_worker_rss_bytes > 0) {
    return 1;
  }
  return 1 + static_cast<size_t>(options_.prefetch);
}

bool ForkPool::Usable(const Slot& s) const {
  return (s.state == WorkerState::kIdle || s.state == WorkerState::kBusy) &&
         s.kill_reason == KillReason::kNone;
}

bool ForkPool::DispatchLocked(Assignment& a, absl::Time now) {
  const size_t n = slots_.size();
  const bool may_queue = MayQueueBehind(a);
  const size_t max_assigned = MaxAssigned();
  // An idle worker first (round robin); else, if `a` may wait behind a
  // running attempt, the worker with the shortest queue that has room.
  Slot* target = nullptr;
  for (size_t k = 0; k < n && target == nullptr; ++k) {
    Slot& s = *slots_[(next_slot_ + k) % n];
    if (Usable(s) && !s.busy()) target = &s;
  }
  if (target == nullptr && may_queue) {
    for (size_t k = 0; k < n; ++k) {
      Slot& s = *slots_[(next_slot_ + k) % n];
      if (!Usable(s) || s.queue.size() >= max_assigned) continue;
      if (target == nullptr || s.queue.size() < target->queue.size()) {
        target = &s;
      }
    }
  }
  if (target == nullptr) return false;
  Slot& s = *target;
  AssignMessage m;
  m.task_seq = ++last_task_seq_;
  m.task_id = a.task_id;
  m.attempt = a.attempt;
  const bool has_timeout =
      a.timeout != absl::InfiniteDuration() && a.timeout > absl::ZeroDuration();
  m.timeout_ns = has_timeout ? absl::ToInt64Nanoseconds(a.timeout) : -1;
  m.kind = std::move(a.kind);
  m.payload = std::move(a.payload);
  absl::Status sent = s.channel->Send(
      static_cast<uint16_t>(MessageType::kAssign), Encode(m), /*wake=*/false);
  if (!sent.ok()) {
    // A full ring while the worker holds few assignments, or a corrupt
    // consumer index: the worker misbehaves.
    ViolationLocked(s, sent);
    a.kind = std::move(m.kind);
    a.payload = std::move(m.payload);
    return DispatchLocked(a, now);
  }
  AssignmentQueue::Pending p;
  p.task_id = std::move(a.task_id);
  p.attempt = a.attempt;
  p.task_seq = m.task_seq;
  p.timeout = has_timeout ? a.timeout : absl::InfiniteDuration();
  const bool first = s.queue.empty();
  s.queue.Push(std::move(p), now);
  if (first) HeadChangedLocked(s, now);
  s.state = WorkerState::kBusy;
  next_slot_ = (s.index + 1) % n;
  if (std::find(to_wake_.begin(), to_wake_.end(), &s) == to_wake_.end()) {
    to_wake_.push_back(&s);
  }
  return true;
}

void ForkPool::HeadChangedLocked(Slot& s, absl::Time now) {
  s.next_rss_check = s.busy() && options_.max_worker_rss_bytes > 0
                         ? now + kRssPollInterval
                         : absl::InfiniteFuture();
  // The event thread sleeps until the earliest deadline it knew of; wake it
  // only if this one is earlier (not for every task's one-hour timeout).
  if (std::min({s.queue.deadline(), s.queue.cancel_deadline(),
                s.next_rss_check}) < planned_wake_) {
    WakeEventThread();
  }
}

void ForkPool::WakeWorkersLocked() {
  for (Slot* s : to_wake_) s->channel->WakePeerIfWaiting();
  to_wake_.clear();
}

absl::Status ForkPool::Dispatch(Assignment a) {
  MutexLock l(&mu_);
  if (stopping_) return absl::UnavailableError("worker pool is shut down");
  if (supervisor_lost_) {
    return absl::UnavailableError("worker pool supervisor died");
  }
  const bool sent = DispatchLocked(a, absl::Now());
  WakeWorkersLocked();
  if (!sent) return absl::ResourceExhaustedError("no idle worker");
  return absl::OkStatus();
}

size_t ForkPool::DispatchMany(std::vector<Assignment>& batch) {
  MutexLock l(&mu_);
  if (stopping_ || supervisor_lost_) return 0;
  const absl::Time now = absl::Now();
  size_t n = 0;
  while (n < batch.size() && DispatchLocked(batch[n], now)) ++n;
  WakeWorkersLocked();
  return n;
}

int ForkPool::IdleCount() {
  MutexLock l(&mu_);
  if (stopping_ || supervisor_lost_) return 0;
  int idle = 0;
  for (const auto& s : slots_) {
    if (Usable(*s) && !s->busy()) ++idle;
  }
  return idle;
}

int ForkPool::Room() {
  MutexLock l(&mu_);
  if (stopping_ || supervisor_lost_) return 0;
  const size_t max_assigned = MaxAssigned();
  int room = 0;
  for (const auto& s : slots_) {
    if (Usable(*s) && s->queue.size() < max_assigned) {
      room += static_cast<int>(max_assigned - s->queue.size());
    }
  }
  return room;
}

void ForkPool::Cancel(absl::string_view task_id, int attempt) {
  MutexLock l(&mu_);
  for (auto& sp : slots_) {
    Slot& s = *sp;
    if (s.kill_reason != KillReason::kNone) continue;
    bool queued = false;
    std::optional<uint64_t> seq =
        s.queue.RequestCancel(task_id, attempt, absl::Now(), &queued);
    if (!seq.has_value()) continue;
    // Still queued: take it back rather than run it (the event thread
    // revokes, so outcomes keep coming from one thread).
    if (queued) s.revoke_pending = true;
    // Release: nothing else is published with it, but it keeps the store
    // from being reordered before the decision above on weak machines.
    s.view.control->cancel_seq.store(*seq, std::memory_order_release);
    // Wake a handler blocked in TaskContext::Call.
    s.channel->WakePeer();
    WakeEventThread();
    return;
  }
}

std::vector<WorkerInfo> ForkPool::Workers() {
  std::vector<WorkerInfo> out;
  std::vector<Slot*> stale;
  const absl::Time now = absl::Now();
  {
    MutexLock l(&mu_);
    for (const auto& s : slots_) {
      WorkerInfo w;
      w.slot = s->index;
      w.pid = s->pid;
      w.parent_pid = supervisor_pid_;
      w.state = s->state;
      if (s->busy()) w.current_task_id = s->queue.head().task_id;
      w.tasks_done = s->tasks_done;
      w.restarts = s->restarts;
      w.started_at = s->started_at;
      w.rss_bytes = s->rss_bytes;
      if (s->pid > 0 && now - s->rss_sampled >= kRssCacheFor) {
        stale.push_back(s.get());
      }
      out.push_back(std::move(w));
    }
  }
  // /proc is read outside the lock, and at most once per kRssCacheFor per
  // worker however often Workers() is called.
  for (Slot* s : stale) {
    pid_t pid;
    {
      MutexLock l(&mu_);
      pid = s->pid;
    }
    const uint64_t rss = pid > 0 ? ReadRssBytes(pid).value_or(0) : 0;
    MutexLock l(&mu_);
    if (s->pid != pid) continue;
    s->rss_bytes = rss;
    s->rss_sampled = now;
    out[s->index].rss_bytes = rss;
  }
  return out;
}

void ForkPool::Shutdown() {
  {
    MutexLock l(&mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  {
    // After this no reply callable reaches the pool; one in progress
    // finishes first because it holds gate_->mu.
    MutexLock g(&gate_->mu);
    gate_->pool = nullptr;
  }
  WakeEventThread();
  if (thread_.joinable()) thread_.join();
  // EOF on its command pipe makes the supervisor kill and reap all workers.
  command_fd_.reset();
  WaitForSupervisor();
}

void ForkPool::WaitForSupervisor() {
  if (supervisor_pid_ <= 0) return;
  ScopedFd pidfd(static_cast<int>(syscall(SYS_pidfd_open, supervisor_pid_, 0)));
  if (pidfd.valid()) {
    pollfd p{pidfd.get(), POLLIN, 0};
    int r;
    do {
      r = poll(
          &p, 1,
          static_cast<int>(absl::ToInt64Milliseconds(kSupervisorExitWait)));
    } while (r < 0 && errno == EINTR);
    if (r == 0) kill(supervisor_pid_, SIGKILL);
  } else {
    kill(supervisor_pid_, SIGKILL);
  }
  // ECHILD if forqd's own reaper got it first; nothing left to do then.
  while (waitpid(supervisor_pid_, nullptr, 0) < 0 && errno == EINTR) {
  }
  supervisor_pid_ = 0;
}

void ForkPool::WakeEventThread() {
  uint64_t one = 1;
  ssize_t n = write(control_wake_.get(), &one, sizeof(one));
  (void)n;  // EAGAIN: already pending
}

void ForkPool::EventLoop() {
  epoll_event events[64];
  std::vector<bool> signalled(static_cast<size_t>(options_.workers));
  while (true) {
    int timeout_ms;
    {
      MutexLock l(&mu_);
      if (stopping_) return;
      const absl::Time now = absl::Now();
      timeout_ms = NextTimeoutMsLocked(now);
      // Workers write our eventfd only while this flag is up (see
      // SlotControl::forqd_waiting): raise it, then look at every ring once
      // more, so a frame pushed just before is not slept on.
      for (const auto& sp : slots_) {
        sp->view.control->forqd_waiting.store(1, std::memory_order_relaxed);
      }
      std::atomic_thread_fence(std::memory_order_seq_cst);
      for (const auto& sp : slots_) {
        if (sp->channel->HasPending()) timeout_ms = 0;
      }
      planned_wake_ = timeout_ms < 0 ? absl::InfiniteFuture()
                                     : now + absl::Milliseconds(timeout_ms);
    }
    int n = epoll_wait(epoll_fd_.get(), events, 64, timeout_ms);
    if (n < 0) n = 0;  // EINTR
    Todo todo;
    {
      MutexLock l(&mu_);
      planned_wake_ = absl::InfinitePast();
      if (stopping_) return;
      for (const auto& sp : slots_) {
        sp->view.control->forqd_waiting.store(0, std::memory_order_relaxed);
      }
      std::fill(signalled.begin(), signalled.end(), false);
      for (int i = 0; i < n; ++i) {
        const uint64_t key = events[i].data.u64;
        if (key == kControlKey) {
          uint64_t v;
          ssize_t r = read(control_wake_.get(), &v, sizeof(v));
          (void)r;
        } else if (key == kSupervisorKey) {
          ReadSupervisorLocked(todo);
        } else if (key < slots_.size()) {
          signalled[key] = true;
        }
      }
      // Every ring, not only the signalled ones: a worker that saw us awake
      // pushed without waking us.
      for (auto& sp : slots_) {
        Slot& s = *sp;
        if (signalled[s.index]) s.channel->ClearWake();
        if (signalled[s.index] || s.channel->HasPending()) {
          DrainSlotLocked(s, todo, /*exiting=*/false);
        }
        if (s.revoke_pending) {
          s.revoke_pending = false;
          RevokeLocked(s, todo);
        }
      }
      const absl::Time now = absl::Now();
      CheckTimersLocked(now);
      StealLocked(now, todo);
    }
    for (auto& f : todo) f();
    if (!todo.empty() && callbacks_.on_turn_end) callbacks_.on_turn_end();
  }
}

void ForkPool::ReadSupervisorLocked(Todo& todo) {
  while (true) {
    ssize_t n = read(event_fd_.get(), event_buf_ + event_buf_len_,
                     sizeof(event_buf_) - event_buf_len_);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return;
    if (n <= 0) {
      SupervisorLostLocked(todo);
      return;
    }
    event_buf_len_ += static_cast<size_t>(n);
    size_t off = 0;
    while (event_buf_len_ - off >= sizeof(SupervisorEvent)) {
      SupervisorEvent e;
      std::memcpy(&e, event_buf_ + off, sizeof(e));
      off += sizeof(e);
      HandleSupervisorEventLocked(e, todo);
    }
    std::memmove(event_buf_, event_buf_ + off, event_buf_len_ - off);
    event_buf_len_ -= off;
  }
}

void ForkPool::HandleSupervisorEventLocked(const SupervisorEvent& e,
                                           Todo& todo) {
  if (e.version != kProtocolVersion || e.slot < 0 ||
      e.slot >= static_cast<int>(slots_.size())) {
    return;
  }
  Slot& s = *slots_[e.slot];
  switch (e.type) {
    case SupervisorEvent::kSpawned:
      s.pid = e.pid;
      s.started_at = absl::Now();
      s.state = WorkerState::kStarting;
      if (s.kill_reason != KillReason::kNone) {
        // Misbehaved before we knew its pid.
        SendCommandLocked(SupervisorCommand::kKill, s.index, s.pid, SIGKILL, 0);
      } else if (s.ready_pid != 0) {
        if (s.ready_pid == s.pid) {
          MarkReadyLocked(s, todo);
        } else {
          ViolationLocked(s, absl::DataLossError("Ready frame with wrong pid"));
        }
      }
      break;
    case SupervisorEvent::kExited:
      HandleExitLocked(s, e.pid, e.wait_status, todo);
      break;
    default:
      break;  // kSpawnFailed: the supervisor retries by itself
  }
}

void ForkPool::SupervisorLostLocked(Todo& todo) {
  if (supervisor_lost_) return;
  supervisor_lost_ = true;
  if (callbacks_.on_pool_lost) {
    todo.push_back([cb = callbacks_.on_pool_lost] {
      cb(absl::UnavailableError(
          "the worker pool's supervisor process died; workers cannot be "
          "replaced"));
    });
  }
  epoll_ctl(epoll_fd_.get(), EPOLL_CTL_DEL, event_fd_.get(), nullptr);
  const absl::Time now = absl::Now();
  // Workers die with the supervisor (PR_SET_PDEATHSIG).
  for (auto& sp : slots_) {
    Slot& s = *sp;
    const absl::Duration runtime = now - s.queue.head_since();
    std::vector<AssignmentQueue::Pending> ended, unstarted;
    s.queue.TakeOnExit(/*started=*/0, &ended, &unstarted);
    for (const AssignmentQueue::Pending& p : ended) {
      Outcome o;
      o.task_id = p.task_id;
      o.attempt = p.attempt;
      o.worker_pid = s.pid;
      o.kind = OutcomeKind::kWorkerLost;
      o.status = absl::UnavailableError("worker pool supervisor died");
      o.runtime = runtime;
      PushOutcomeLocked(std::move(o), todo);
    }
    for (const AssignmentQueue::Pending& p : unstarted) {
      PushOutcomeLocked(RevokedOutcome(s, p), todo);
    }
    if (s.pid != 0 && callbacks_.on_worker_exit) {
      WorkerExit x{s.index, s.pid, "killed"};
      todo.push_back([cb = callbacks_.on_worker_exit, x] { cb(x); });
    }
    s.pid = 0;
    s.ready = false;
    s.state = WorkerState::kRespawning;
  }
}

// The metrics label of a worker's exit.
std::string ExitReason(KillReason kill, int status) {
  switch (kill) {
    case KillReason::kTimeout:
      return "timeout";
    case KillReason::kCancel:
      return "killed";
    case KillReason::kMemory:
      return "memory";
    case KillReason::kRecycle:
      return "recycle";
    case KillReason::kProtocol:
      return "protocol";
    case KillReason::kNone:
      break;
  }
  if (WIFSIGNALED(status)) {
    return WTERMSIG(status) == SIGKILL ? "killed" : "crash";
  }
  return "exit";
}

Outcome ForkPool::DeathOutcome(const Slot& s, const AssignmentQueue::Pending& p,
                               pid_t pid, int status,
                               absl::Duration runtime) const {
  Outcome o;
  o.task_id = p.task_id;
  o.attempt = p.attempt;
  o.worker_pid = pid;
  o.runtime = runtime;
  o.signal = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
  if (p.cancel_requested) {
    o.kind = OutcomeKind::kCancelled;
    o.status = absl::CancelledError(
        absl::StrCat("task cancelled; worker ", DescribeWait(status)));
  } else {
    switch (s.kill_reason) {
      case KillReason::kTimeout:
        o.kind = OutcomeKind::kTimeout;
        o.status = absl::DeadlineExceededError(
            absl::StrCat("task exceeded its hard timeout of ",
                         absl::FormatDuration(p.timeout), "; worker killed"));
        break;
      case KillReason::kMemory:
        o.kind = OutcomeKind::kOutOfMemory;
        o.status = absl::ResourceExhaustedError(
            absl::StrCat("worker exceeded its memory limit of ",
                         options_.max_worker_rss_bytes, " bytes; killed"));
        break;
      case KillReason::kProtocol:
        o.kind = OutcomeKind::kProtocolViolation;
        o.status = absl::InternalError(absl::StrCat(
            "worker violated the ring protocol (", s.kill_detail, "); killed"));
        break;
      default:
        if (WIFSIGNALED(status)) {
          o.kind = OutcomeKind::kSignaled;
          o.status =
              absl::AbortedError(absl::StrCat("worker ", DescribeWait(status)));
        } else {
          o.kind = OutcomeKind::kWorkerLost;
          o.status = absl::UnavailableError(
              absl::StrCat("worker ", DescribeWait(status)));
        }
        break;
    }
  }
  return o;
}

void ForkPool::HandleExitLocked(Slot& s, pid_t pid, int status, Todo& todo) {
  if (pid != s.pid) return;
  // Frames it wrote before dying still count (a result posted just before a
  // crash, say), unless we already decided its fate.
  if (s.kill_reason == KillReason::kNone) {
    DrainSlotLocked(s, todo, /*exiting=*/true);
  }
  const absl::Time now = absl::Now();
  const std::string reason = ExitReason(s.kill_reason, status);
  // What the worker took (started_seq; stored before it decided) ended with
  // it; assignments behind that never started and go back without cost.
  const absl::Duration runtime = now - s.queue.head_since();
  std::vector<AssignmentQueue::Pending> ended, unstarted;
  s.queue.TakeOnExit(
      s.view.control->started_seq.load(std::memory_order_acquire), &ended,
      &unstarted);
  for (const AssignmentQueue::Pending& p : ended) {
    PushOutcomeLocked(DeathOutcome(s, p, pid, status, runtime), todo);
  }
  for (const AssignmentQueue::Pending& p : unstarted) {
    PushOutcomeLocked(RevokedOutcome(s, p), todo);
  }
  if (callbacks_.on_worker_exit) {
    WorkerExit x{s.index, pid, reason};
    todo.push_back([cb = callbacks_.on_worker_exit, x] { cb(x); });
  }

  // The worker is gone and its successor is not forked until we say so, so
  // nobody else touches the slot's rings now.
  s.channel->Reset();
  s.view.control->cancel_seq.store(0, std::memory_order_relaxed);
  s.view.control->started_seq.store(0, std::memory_order_relaxed);
  s.view.control->worker_waiting.store(0, std::memory_order_relaxed);
  ++s.generation;
  ++s.restarts;
  s.pid = 0;
  s.ready_pid = 0;
  s.ready = false;
  s.revoke_pending = false;
  s.next_rss_check = absl::InfiniteFuture();
  s.kill_reason = KillReason::kNone;
  s.kill_detail.clear();
  s.tasks_this_life = 0;
  s.state = WorkerState::kRespawning;
  uint32_t delay_ms = 0;
  if (!s.ever_ready) {
    // Died before it was ever ready: back off so a worker that cannot start
    // does not spin the CPU.
    ++s.start_failures;
    delay_ms = static_cast<uint32_t>(std::min<int64_t>(
        int64_t{50} << std::min(s.start_failures - 1, 7), 5000));
  } else {
    s.start_failures = 0;
  }
  s.ever_ready = false;
  if (!stopping_ && !supervisor_lost_) {
    SendCommandLocked(SupervisorCommand::kRespawn, s.index, 0, 0, delay_ms);
  }
}

void ForkPool::DrainSlotLocked(Slot& s, Todo& todo, bool exiting) {
  if (s.kill_reason != KillReason::kNone) return;
  for (int i = 0; i < kMaxFramesPerTurn; ++i) {
    absl::StatusOr<std::optional<Message>> m = s.channel->Receive();
    if (!m.ok()) {
      ViolationLocked(s, m.status());
      return;
    }
    if (!m->has_value()) return;
    HandleMessageLocked(s, **m, todo, exiting);
    if (s.kill_reason != KillReason::kNone) return;
  }
  // More may be pending: the event loop sees it before sleeping and comes
  // back on the next turn, after the other slots.
}

void ForkPool::HandleMessageLocked(Slot& s, const Message& m, Todo& todo,
                                   bool exiting) {
  switch (static_cast<MessageType>(m.type)) {
    case MessageType::kReady: {
      absl::StatusOr<ReadyMessage> r = DecodeReady(m.body);
      if (!r.ok()) return ViolationLocked(s, r.status());
      if (s.ready || s.ready_pid != 0) {
        return ViolationLocked(s, absl::DataLossError("duplicate Ready"));
      }
      s.ready_pid = r->pid;
      if (s.pid != 0) {
        if (s.pid != r->pid) {
          return ViolationLocked(
              s, absl::DataLossError("Ready frame with wrong pid"));
        }
        if (!exiting) MarkReadyLocked(s, todo);
      }
      return;
    }
    case MessageType::kResult:
      return HandleResultLocked(s, m, todo, exiting);
    case MessageType::kProgress: {
      absl::StatusOr<ProgressMessage> p = DecodeProgress(m.body);
      if (!p.ok()) return ViolationLocked(s, p.status());
      if (!s.busy() || p->task_seq != s.queue.head().task_seq) {
        return ViolationLocked(
            s,
            absl::DataLossError("progress for an assignment it does not hold"));
      }
      if (callbacks_.on_progress) {
        todo.push_back(
            [cb = callbacks_.on_progress, id = s.queue.head().task_id,
             attempt = s.queue.head().attempt,
             p = std::move(*p)] { cb(id, attempt, p.fraction, p.message); });
      }
      return;
    }
    case MessageType::kSkipped: {
      absl::StatusOr<SkippedMessage> k = DecodeSkipped(m.body);
      if (!k.ok()) return ViolationLocked(s, k.status());
      AssignmentQueue::Pending skipped;
      switch (s.queue.OnSkipped(k->task_seq, absl::Now(), &skipped)) {
        case AssignmentQueue::Skip::kInvalid:
          return ViolationLocked(
              s, absl::DataLossError("skipped an assignment nobody revoked"));
        case AssignmentQueue::Skip::kStale:
          return;  // revoked for certain already; this only confirms it
        case AssignmentQueue::Skip::kHead:
          break;
      }
      PushOutcomeLocked(RevokedOutcome(s, skipped), todo);
      HeadChangedLocked(s, absl::Now());
      if (!s.busy()) {
        s.state = WorkerState::kIdle;
        if (callbacks_.on_worker_idle) {
          todo.push_back(callbacks_.on_worker_idle);
        }
      }
      return;
    }
    case MessageType::kCall:
      return HandleCallLocked(s, m, todo, exiting);
    default:
      return ViolationLocked(s, absl::DataLossError(absl::StrCat(
                                    "unexpected message type ", m.type)));
  }
}

void ForkPool::HandleResultLocked(Slot& s, const Message& m, Todo& todo,
                                  bool exiting) {
  absl::StatusOr<ResultMessage> r = DecodeResult(m.body);
  if (!r.ok()) return ViolationLocked(s, r.status());
  if (!s.busy() || r->task_seq != s.queue.head().task_seq) {
    return ViolationLocked(
        s, absl::DataLossError("result for an assignment it does not hold"));
  }
  std::optional<absl::Status> status = StatusFromWire(r->code, r->message);
  if (!status.has_value()) {
    return ViolationLocked(s, absl::DataLossError(absl::StrCat(
                                  "result with status code ", r->code)));
  }
  const absl::Time now = absl::Now();
  AssignmentQueue::Pending head = s.queue.PopHead(now);
  HeadChangedLocked(s, now);
  Outcome o;
  o.task_id = std::move(head.task_id);
  o.attempt = head.attempt;
  o.worker_pid = s.pid;
  o.runtime = absl::Nanoseconds(r->runtime_ns);
  if (head.cancel_requested) {
    o.kind = OutcomeKind::kCancelled;
    o.status = status->code() == absl::StatusCode::kCancelled
                   ? *status
                   : absl::CancelledError("task cancelled");
  } else if (r->unknown_kind) {
    o.kind = OutcomeKind::kUnknownKind;
    o.status = absl::NotFoundError(r->message);
  } else if (status->ok()) {
    o.kind = OutcomeKind::kSucceeded;
    o.result = std::move(r->result);
  } else {
    o.kind = OutcomeKind::kHandlerError;
    o.status = *status;
  }
  ++s.tasks_done;
  ++s.tasks_this_life;
  PushOutcomeLocked(std::move(o), todo);
  if (s.busy()) return;
  s.state = WorkerState::kIdle;
  if (exiting) return;
  // Recycling happens between tasks, never under one (MaxAssigned keeps a
  // single assignment per worker when recycling is on).
  if (options_.max_tasks_per_child > 0 &&
      s.tasks_this_life >=
          static_cast<uint64_t>(options_.max_tasks_per_child)) {
    s.state = WorkerState::kRespawning;
    return KillLocked(s, KillReason::kRecycle);
  }
  if (options_.max_worker_rss_bytes > 0) {
    absl::StatusOr<uint64_t> rss = ReadRssBytes(s.pid);
    if (rss.ok() && *rss > options_.max_worker_rss_bytes) {
      s.state = WorkerState::kRespawning;
      return KillLocked(s, KillReason::kMemory);
    }
  }
  if (callbacks_.on_worker_idle) todo.push_back(callbacks_.on_worker_idle);
}

void ForkPool::PushOutcomeLocked(Outcome o, Todo& todo) {
  if (!callbacks_.on_outcome) return;
  todo.push_back([cb = callbacks_.on_outcome, o = std::move(o)]() mutable {
    cb(std::move(o));
  });
}

Outcome ForkPool::RevokedOutcome(const Slot& s,
                                 const AssignmentQueue::Pending& p) const {
  Outcome o;
  o.task_id = p.task_id;
  o.attempt = p.attempt;
  o.worker_pid = s.pid;
  if (p.cancel_requested) {
    o.kind = OutcomeKind::kCancelled;
    o.status = absl::CancelledError("task cancelled before it started");
  } else {
    o.kind = OutcomeKind::kRevoked;
    o.status = absl::UnavailableError("assignment taken back before it ran");
  }
  return o;
}

void ForkPool::RevokeLocked(Slot& s, Todo& todo) {
  if (s.queue.size() < 2 && !(s.busy() && s.queue.head().cancel_requested)) {
    return;
  }
  SlotControl* control = s.view.control;
  control->revoked_upto.store(s.queue.BeginRevoke(), std::memory_order_relaxed);
  // Dekker with the worker's Take(): our store, then its started_seq.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  const uint64_t started = control->started_seq.load(std::memory_order_relaxed);
  // Everything after what the worker took is revoked for certain. The one
  // it took (or is deciding on) stays: its kResult or kSkipped will tell.
  const absl::Time now = absl::Now();
  std::vector<AssignmentQueue::Pending> revoked =
      s.queue.FinishRevoke(started, now);
  if (revoked.empty()) return;
  for (const AssignmentQueue::Pending& p : revoked) {
    PushOutcomeLocked(RevokedOutcome(s, p), todo);
  }
  HeadChangedLocked(s, now);
  if (!s.busy()) {
    s.state = WorkerState::kIdle;
    if (callbacks_.on_worker_idle) todo.push_back(callbacks_.on_worker_idle);
  }
}

void ForkPool::HandleCallLocked(Slot& s, const Message& m, Todo& todo,
                                bool exiting) {
  absl::StatusOr<CallMessage> c = DecodeCall(m.body);
  if (!c.ok()) return ViolationLocked(s, c.status());
  if (!s.busy() || c->task_seq != s.queue.head().task_seq) {
    return ViolationLocked(
        s, absl::DataLossError("call for an assignment it does not hold"));
  }
  if (exiting) return;
  if (!callbacks_.on_call) {
    return SendCallReplyLocked(
        s, c->task_seq, c->call_id,
        absl::UnimplementedError("this pool serves no side-channel calls"));
  }
  std::function<void(absl::StatusOr<std::string>)> reply =
      [gate = gate_, slot = s.index, generation = s.generation,
       task_seq = c->task_seq,
       call_id = c->call_id](const absl::StatusOr<std::string>& r) {
        MutexLock g(&gate->mu);
        if (gate->pool != nullptr) {
          gate->pool->DeliverCallReply(slot, generation, task_seq, call_id, r);
        }
      };
  todo.push_back([cb = callbacks_.on_call, id = s.queue.head().task_id,
                  request = std::move(c->request),
                  reply = std::move(reply)]() mutable {
    cb(id, std::move(request), std::move(reply));
  });
}

void ForkPool::DeliverCallReply(int slot, uint64_t generation,
                                uint64_t task_seq, uint64_t call_id,
                                const absl::StatusOr<std::string>& reply) {
  MutexLock l(&mu_);
  if (slot < 0 || slot >= static_cast<int>(slots_.size())) return;
  Slot& s = *slots_[slot];
  if (s.generation != generation || !s.busy() ||
      s.queue.head().task_seq != task_seq ||
      s.kill_reason != KillReason::kNone) {
    return;  // that attempt is over
  }
  SendCallReplyLocked(s, task_seq, call_id, reply);
}

void ForkPool::SendCallReplyLocked(Slot& s, uint64_t task_seq, uint64_t call_id,
                                   const absl::StatusOr<std::string>& reply) {
  CallReplyMessage m;
  m.task_seq = task_seq;
  m.call_id = call_id;
  m.code = static_cast<int32_t>(reply.status().code());
  if (reply.ok()) {
    m.data = *reply;
  } else {
    m.message = std::string(reply.status().message());
  }
  absl::Status sent = s.channel->Send(
      static_cast<uint16_t>(MessageType::kCallReply), Encode(m));
  // A worker waits for each reply before calling again, so its ring has
  // room unless it stopped reading.
  if (!sent.ok()) ViolationLocked(s, sent);
}

void ForkPool::MarkReadyLocked(Slot& s, Todo& todo) {
  s.ready = true;
  s.ever_ready = true;
  s.start_failures = 0;
  s.state = WorkerState::kIdle;
  if (callbacks_.on_worker_idle) todo.push_back(callbacks_.on_worker_idle);
}

void ForkPool::ViolationLocked(Slot& s, const absl::Status& why) {
  if (s.kill_reason != KillReason::kNone) return;
  s.kill_detail = std::string(why.message());
  KillLocked(s, KillReason::kProtocol);
}

void ForkPool::KillLocked(Slot& s, KillReason reason) {
  if (s.kill_reason != KillReason::kNone) return;
  s.kill_reason = reason;
  if (!s.busy()) s.state = WorkerState::kRespawning;
  // With pid unknown yet, the kill is sent when the Spawned event arrives.
  if (s.pid != 0) {
    SendCommandLocked(SupervisorCommand::kKill, s.index, s.pid, SIGKILL, 0);
  }
}

void ForkPool::SendCommandLocked(uint32_t type, int slot, pid_t pid, int sig,
                                 uint32_t delay_ms) {
  if (!command_fd_.valid()) return;
  SupervisorCommand c;
  std::memset(&c, 0, sizeof(c));
  c.version = kProtocolVersion;
  c.type = type;
  c.slot = slot;
  c.pid = pid;
  c.signal = sig;
  c.delay_ms = delay_ms;
  // Blocking write of < PIPE_BUF bytes: atomic, and the supervisor drains
  // its pipe continuously. EPIPE (supervisor gone) shows up as EOF on the
  // event pipe, handled there.
  ssize_t n;
  do {
    n = write(command_fd_.get(), &c, sizeof(c));
  } while (n < 0 && errno == EINTR);
}

void ForkPool::CheckTimersLocked(absl::Time now) {
  for (auto& sp : slots_) {
    Slot& s = *sp;
    if (!s.busy() || s.kill_reason != KillReason::kNone) continue;
    if (now >= s.queue.deadline()) {
      KillLocked(s, KillReason::kTimeout);
    } else if (now >= s.queue.cancel_deadline()) {
      KillLocked(s, KillReason::kCancel);
    } else if (now >= s.next_rss_check) {
      s.next_rss_check = now + kRssPollInterval;
      absl::StatusOr<uint64_t> rss = ReadRssBytes(s.pid);
      if (rss.ok() && *rss > options_.max_worker_rss_bytes) {
        KillLocked(s, KillReason::kMemory);
      }
    }
  }
}

void ForkPool::StealLocked(absl::Time now, Todo& todo) {
  bool idle = false;
  for (const auto& sp : slots_) {
    if (Usable(*sp) && !sp->busy()) idle = true;
  }
  if (!idle) return;
  for (auto& sp : slots_) {
    Slot& s = *sp;
    if (s.kill_reason == KillReason::kNone &&
        s.queue.ShouldGiveBack(now, kStealAfter)) {
      RevokeLocked(s, todo);
    }
  }
}

int ForkPool::NextTimeoutMsLocked(absl::Time now) {
  absl::Time next = absl::InfiniteFuture();
  bool idle = false;
  for (const auto& sp : slots_) {
    if (Usable(*sp) && !sp->busy()) idle = true;
  }
  for (const auto& sp : slots_) {
    const Slot& s = *sp;
    if (!s.busy() || s.kill_reason != KillReason::kNone) continue;
    next = std::min({next, s.queue.deadline(), s.queue.cancel_deadline(),
                     s.next_rss_check});
    if (idle && s.queue.size() >= 2) {
      next = std::min(next, s.queue.head_since() + kStealAfter);
    }
  }
  if (next == absl::InfiniteFuture()) return -1;
  if (next <= now) return 0;
  return static_cast<int>(std::min<int64_t>(
      absl::ToInt64Milliseconds(absl::Ceil(next - now, absl::Milliseconds(1))),
      60'000));
}

absl::Status ValidateOptions(ForkPoolOptions& o) {
  if (o.workers < 0 || o.workers > kMaxWorkers) {
    return absl::InvalidArgumentError(absl::StrCat(
        "workers must be in [0, ", kMaxWorkers, "], got ", o.workers));
  }
  if (o.workers == 0) o.workers = DefaultWorkerCount();
  const uint64_t ring = o.ring_bytes;
  if (ring < ShmRing::kMinCapacity || ring > ShmRing::kMaxCapacity ||
      (ring & (ring - 1)) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ring_bytes must be a power of two in [", ShmRing::kMinCapacity, ", ",
        ShmRing::kMaxCapacity, "], got ", ring));
  }
  if (o.prefetch < 0 || o.prefetch > 256) {
    return absl::InvalidArgumentError(
        absl::StrCat("prefetch must be in [0, 256], got ", o.prefetch));
  }
  if (o.max_tasks_per_child < 0) {
    return absl::InvalidArgumentError("max_tasks_per_child must be >= 0");
  }
  if (o.cancel_grace < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("cancel_grace must be >= 0");
  }
  for (const std::string& p : o.exec_allow) {
    if (p.empty() || p[0] != '/') {
      return absl::InvalidArgumentError(absl::StrCat(
          "exec allow-list entry '", p, "' is not an absolute path"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::string_view OutcomeKindName(OutcomeKind kind) {
  switch (kind) {
    case OutcomeKind::kSucceeded:
      return "succeeded";
    case OutcomeKind::kHandlerError:
      return "handler_error";
    case OutcomeKind::kTimeout:
      return "timeout";
    case OutcomeKind::kSignaled:
      return "signaled";
    case OutcomeKind::kOutOfMemory:
      return "out_of_memory";
    case OutcomeKind::kWorkerLost:
      return "worker_lost";
    case OutcomeKind::kCancelled:
      return "cancelled";
    case OutcomeKind::kProtocolViolation:
      return "protocol_violation";
    case OutcomeKind::kUnknownKind:
      return "unknown_kind";
    case OutcomeKind::kRevoked:
      return "revoked";
  }
  return "unknown";
}

absl::StatusOr<std::unique_ptr<WorkerPool>> CreateForkPool(
    ForkPoolOptions options) {
  FORQ_RETURN_IF_ERROR(ValidateOptions(options));
  auto registry = std::make_unique<HandlerRegistry>();
  FORQ_RETURN_IF_ERROR(RegisterBuiltins(*registry));
  if (!options.exec_allow.empty()) {
    ExecOptions exec;
    exec.allow = options.exec_allow;
    exec.max_output_bytes = options.exec_max_output_bytes;
    exec.max_memory_bytes = options.exec_max_memory_bytes;
    exec.max_open_files = options.exec_max_open_files;
    FORQ_RETURN_IF_ERROR(RegisterExecHandler(*registry, std::move(exec)));
  }
  for (const std::string& path : options.plugins) {
    FORQ_RETURN_IF_ERROR(LoadPlugin(path, *registry));
  }
  auto pool =
      std::make_unique<ForkPool>(std::move(options), std::move(registry));
  FORQ_RETURN_IF_ERROR(pool->Init());
  return pool;
}

int DefaultWorkerCount() {
  int n = 0;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) n = CPU_COUNT(&set);
  if (n <= 0) n = static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
  if (n <= 0) n = 1;
  if (std::optional<int> limit = CgroupCpuLimit()) n = std::min(n, *limit);
  return n;
}

}  // namespace forq::worker
