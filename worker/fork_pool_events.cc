// ForkPool's event thread: worker frames (results, calls, progress),
// supervisor events, worker exits and deaths, revokes, steals and timers.
#include "worker/fork_pool_internal.h"

namespace forq::worker::fork_pool_internal {

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
      planned_wake_ = now + absl::Milliseconds(timeout_ms);
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
    RecordRunTimeLocked(p.kind, runtime);
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
  if (s.busy()) {
    o.next_task_id = s.queue.head().task_id;
    o.next_attempt = s.queue.head().attempt;
  }
  RecordRunTimeLocked(head.kind, o.runtime);
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
  // Never asleep for longer than kMaxEventSleep: a dispatch then wakes
  // this thread only for a deadline earlier than its planned wake, not for
  // the default one-hour timeout of every task sent to an idle pool.
  next = std::min(next, now + kMaxEventSleep);
  if (next <= now) return 0;
  return static_cast<int>(
      absl::ToInt64Milliseconds(absl::Ceil(next - now, absl::Milliseconds(1))));
}

}  // namespace forq::worker::fork_pool_internal
