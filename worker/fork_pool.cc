#include "worker/fork_pool.h"

#include "worker/fork_pool_internal.h"

namespace forq::worker {
namespace fork_pool_internal {

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

  FORQ_ASSIGN_OR_RETURN(supervisor_pid_, launcher_->Start(config));

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

size_t ForkPool::MaxAssignedFor(const std::string& kind) const {
  const size_t max_assigned = MaxAssigned();
  if (max_assigned <= 2) return max_assigned;
  auto it = kind_run_time_.find(kind);
  if (it == kind_run_time_.end()) return 2;
  const absl::Duration mean = it->second;
  if (mean >= kUnqueuedRunTime) return 1;
  if (mean <= absl::ZeroDuration()) return max_assigned;
  const int64_t behind = kQueuedWork / mean;  // whole attempts
  return 1 + static_cast<size_t>(std::clamp<int64_t>(
                 behind, 1, static_cast<int64_t>(max_assigned - 1)));
}

void ForkPool::RecordRunTimeLocked(const std::string& kind,
                                   absl::Duration runtime) {
  auto it = kind_run_time_.find(kind);
  if (it == kind_run_time_.end()) {
    if (kind_run_time_.size() < kMaxKindsTimed) {
      kind_run_time_.emplace(kind, runtime);
    }
    return;
  }
  // Moving mean over about the last eight attempts.
  it->second += (runtime - it->second) / 8;
}

bool ForkPool::Usable(const Slot& s) const {
  return (s.state == WorkerState::kIdle || s.state == WorkerState::kBusy) &&
         s.kill_reason == KillReason::kNone;
}

bool ForkPool::DispatchLocked(Assignment& a, absl::Time now) {
  const size_t n = slots_.size();
  const bool may_queue = MayQueueBehind(a);
  // An idle worker first (round robin); else, if `a` may wait behind a
  // running attempt, the worker with the shortest queue that has room for
  // one of its kind.
  Slot* target = nullptr;
  for (size_t k = 0; k < n && target == nullptr; ++k) {
    Slot& s = *slots_[(next_slot_ + k) % n];
    if (Usable(s) && !s.busy()) target = &s;
  }
  if (target == nullptr && may_queue) {
    const size_t max_assigned = MaxAssignedFor(a.kind);
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
    a.kind = std::move(m.kind);
    a.payload = std::move(m.payload);
    // A ring (or spill socket) filled by the assignments queued behind the
    // running one: no room now. Full with nothing assigned, or a corrupt
    // consumer index: the worker misbehaves.
    if (absl::IsResourceExhausted(sent) && !s.queue.empty()) return false;
    ViolationLocked(s, sent);
    return DispatchLocked(a, now);
  }
  AssignmentQueue::Pending p;
  p.task_id = std::move(a.task_id);
  p.kind = std::move(m.kind);
  p.attempt = a.attempt;
  p.task_seq = m.task_seq;
  p.timeout = has_timeout ? a.timeout : absl::InfiniteDuration();
  const bool first = s.queue.empty();
  a.queued = !first;
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
  return RoomLocked(MaxAssigned());
}

int ForkPool::RoomFor(const std::string& kind) {
  MutexLock l(&mu_);
  return RoomLocked(MaxAssignedFor(kind));
}

int ForkPool::RoomLocked(size_t max_assigned) const {
  if (stopping_ || supervisor_lost_) return 0;
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
  launcher_->Stop(supervisor_pid_);
  supervisor_pid_ = 0;
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

}  // namespace fork_pool_internal

using fork_pool_internal::ForkPool;
using fork_pool_internal::ValidateOptions;

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
  return CreateForkPool(std::move(options), NewForkingLauncher());
}

absl::StatusOr<std::unique_ptr<WorkerPool>> CreateForkPool(
    ForkPoolOptions options, std::unique_ptr<SupervisorLauncher> launcher) {
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
  auto pool = std::make_unique<ForkPool>(
      std::move(options), std::move(registry), std::move(launcher));
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
