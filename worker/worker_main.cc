#include "worker/worker_main.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <deque>
#include <exception>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

#include "worker/channel.h"
#include "worker/process_util.h"
#include "worker/protocol.h"
#include "worker/shm_region.h"
#include "worker/spill.h"

namespace forq::worker {
namespace {

// Exit codes of a worker that gives up; forqd reports them as "exit".
constexpr int kExitSetupFailed = 70;
constexpr int kExitLinkBroken = 71;

constexpr absl::Duration kProgressInterval = absl::Milliseconds(100);

void SleepBriefly() {
  timespec ts{0, 1'000'000};  // 1 ms
  nanosleep(&ts, nullptr);
}

// Waits up to `timeout_ms` (-1: forever) for a wake-up on `fd`.
void WaitForWake(int fd, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  int r;
  do {
    r = poll(&p, 1, timeout_ms);
  } while (r < 0 && errno == EINTR);
}

class Worker;

// TaskContext of the one attempt a worker is running.
class WorkerTaskContext : public TaskContext {
 public:
  WorkerTaskContext(Worker& worker, const AssignMessage& assign)
      : worker_(worker),
        assign_(assign),
        deadline_(assign.timeout_ns < 0
                      ? absl::InfiniteFuture()
                      : absl::Now() + absl::Nanoseconds(assign.timeout_ns)) {}

  absl::string_view task_id() const override { return assign_.task_id; }
  int attempt() const override { return assign_.attempt; }
  absl::Time deadline() const override { return deadline_; }
  bool cancelled() const override;
  void Progress(double fraction, absl::string_view message) override;
  absl::StatusOr<std::string> Call(absl::string_view request) override;

 private:
  Worker& worker_;
  const AssignMessage& assign_;
  const absl::Time deadline_;
  absl::Time last_progress_ = absl::InfinitePast();
  uint64_t next_call_id_ = 1;
};

// The worker's state: its mapping and channel. Confined to the worker's only
// thread.
class Worker {
 public:
  Worker(const WorkerConfig& config, ShmRegion region)
      : config_(config),
        region_(std::move(region)),
        view_(ViewSlot(region_.data(), config.ring_bytes)),
        channel_(ShmRing(view_.completion_control, view_.completion_data,
                         config.ring_bytes),
                 ShmRing(view_.submission_control, view_.submission_data,
                         config.ring_bytes),
                 ChannelFds{config.completion_wake_fd,
                            config.submission_wake_fd, config.spill_sock},
                 config.max_spill_bytes) {}

  [[noreturn]] void Run() {
    channel_.SetPeerWaitingFlag(&view_.control->forqd_waiting);
    ReadyMessage ready;
    ready.pid = getpid();
    SendOrDie(MessageType::kReady, Encode(ready));
    while (true) {
      std::optional<Message> m;
      if (!held_.empty()) {
        m = std::move(held_.front());
        held_.pop_front();
      } else {
        m = NextMessage(/*timeout_ms=*/-1);
      }
      if (!m.has_value()) continue;
      if (m->type != static_cast<uint16_t>(MessageType::kAssign)) {
        continue;  // a call reply for an attempt that already ended
      }
      absl::StatusOr<AssignMessage> assign = DecodeAssign(m->body);
      if (!assign.ok()) _exit(kExitLinkBroken);
      if (Take(assign->task_seq)) RunAssignment(*assign);
    }
  }

  // Keeps an assignment that arrived while a handler waited for a call
  // reply (forqd may queue several per worker); Run serves it next.
  void Hold(Message m) { held_.push_back(std::move(m)); }

  // Decides whether to run assignment `task_seq`: false (after answering
  // kSkipped) when forqd revoked it. See SlotControl::revoked_upto.
  bool Take(uint64_t task_seq) {
    SlotControl* control = view_.control;
    control->started_seq.store(task_seq, std::memory_order_relaxed);
    // Dekker with forqd's revoke: our store, then its value.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (task_seq > control->revoked_upto.load(std::memory_order_relaxed)) {
      return true;
    }
    SkippedMessage skipped;
    skipped.task_seq = task_seq;
    SendOrDie(MessageType::kSkipped, Encode(skipped));
    return false;
  }

  bool Cancelled(uint64_t task_seq) const {
    // Acquire is more than enough: the value is only compared.
    return view_.control->cancel_seq.load(std::memory_order_acquire) ==
           task_seq;
  }

  // Best effort: progress is dropped rather than waited for.
  void TrySend(MessageType type, const std::string& body) {
    (void)channel_.Send(static_cast<uint16_t>(type), body);
  }

  // Sends, waiting while the ring is full (forqd drains it promptly; if it
  // does not, it will kill us on timeout). Exits if the link is broken.
  void SendOrDie(MessageType type, const std::string& body) {
    while (true) {
      absl::Status s = channel_.Send(static_cast<uint16_t>(type), body);
      if (s.ok()) return;
      if (s.code() != absl::StatusCode::kResourceExhausted) {
        _exit(kExitLinkBroken);
      }
      SleepBriefly();
    }
  }

  // Returns the next message from forqd, waiting up to timeout_ms.
  std::optional<Message> NextMessage(int timeout_ms) {
    absl::StatusOr<std::optional<Message>> m = channel_.Receive();
    if (!m.ok()) _exit(kExitLinkBroken);
    if (m->has_value()) return std::move(*m);
    // forqd writes our eventfd only while this flag is up: raise it, then
    // look at the ring once more before sleeping (see SlotControl).
    std::atomic<uint32_t>& waiting = view_.control->worker_waiting;
    waiting.store(1, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (!channel_.HasPending()) {
      WaitForWake(channel_.own_wake_fd(), timeout_ms);
      channel_.ClearWake();
    }
    waiting.store(0, std::memory_order_relaxed);
    m = channel_.Receive();
    if (!m.ok()) _exit(kExitLinkBroken);
    return std::move(*m);
  }

 private:
  void RunAssignment(const AssignMessage& assign) {
    ResultMessage result;
    result.task_seq = assign.task_seq;
    const absl::Time start = absl::Now();
    const Handler* handler = config_.registry->Find(assign.kind);
    if (handler == nullptr) {
      result.unknown_kind = true;
      result.code = static_cast<int32_t>(absl::StatusCode::kNotFound);
      result.message = absl::StrCat("no handler for kind '", assign.kind, "'");
    } else {
      WorkerTaskContext ctx(*this, assign);
      absl::Status status;
      std::string out;
      // Handlers may come from plugins; an escaping exception must become a
      // task error, not a dead worker.
      try {
        status = (*handler)(ctx, assign.payload, &out);
      } catch (const std::exception& e) {
        status = absl::InternalError(
            absl::StrCat("handler threw an exception: ", e.what()));
      } catch (...) {
        status = absl::InternalError("handler threw a non-standard exception");
      }
      result.code = static_cast<int32_t>(status.code());
      result.message = std::string(status.message());
      if (status.ok()) result.result = std::move(out);
    }
    result.runtime_ns = absl::ToInt64Nanoseconds(absl::Now() - start);
    SendOrDie(MessageType::kResult, Encode(result));
  }

  const WorkerConfig& config_;
  ShmRegion region_;
  const SlotView view_;
  Channel channel_;
  std::deque<Message> held_;
};

bool WorkerTaskContext::cancelled() const {
  return worker_.Cancelled(assign_.task_seq);
}

void WorkerTaskContext::Progress(double fraction, absl::string_view message) {
  const absl::Time now = absl::Now();
  if (fraction < 1.0 && now - last_progress_ < kProgressInterval) return;
  last_progress_ = now;
  ProgressMessage m;
  m.task_seq = assign_.task_seq;
  m.fraction = fraction;
  m.message = std::string(message.substr(0, 1024));
  worker_.TrySend(MessageType::kProgress, Encode(m));
}

absl::StatusOr<std::string> WorkerTaskContext::Call(absl::string_view request) {
  CallMessage call;
  call.task_seq = assign_.task_seq;
  call.call_id = next_call_id_++;
  call.request = std::string(request);
  worker_.SendOrDie(MessageType::kCall, Encode(call));
  while (true) {
    if (cancelled()) return absl::CancelledError("task cancelled during call");
    // forqd wakes us on cancel too; the timeout only bounds a missed wake-up.
    std::optional<Message> m = worker_.NextMessage(/*timeout_ms=*/100);
    if (!m.has_value()) continue;
    if (m->type == static_cast<uint16_t>(MessageType::kAssign)) {
      worker_.Hold(std::move(*m));
      continue;
    }
    if (m->type != static_cast<uint16_t>(MessageType::kCallReply)) continue;
    absl::StatusOr<CallReplyMessage> reply = DecodeCallReply(m->body);
    if (!reply.ok()) _exit(kExitLinkBroken);
    if (reply->task_seq != call.task_seq || reply->call_id != call.call_id) {
      continue;  // reply to an earlier call that gave up (cancelled)
    }
    std::optional<absl::Status> status =
        StatusFromWire(reply->code, reply->message);
    if (!status.has_value()) _exit(kExitLinkBroken);
    if (!status->ok()) return *status;
    return std::move(reply->data);
  }
}

}  // namespace

void RunWorker(const WorkerConfig& config) {
  DieWithParent(config.supervisor_pid);
  // Own process group, so the supervisor can kill the worker together with
  // anything it spawned (exec tasks) in one kill(-pid).
  setpgid(0, 0);
  ResetSignals();
  // A write to a socket whose reader is gone must be an error, not death.
  signal(SIGPIPE, SIG_IGN);
  IgnoreStopSignals();
  char name[16];
  snprintf(name, sizeof(name), "forq-worker-%d", config.slot);
  prctl(PR_SET_NAME, name);
  int keep[] = {0,
                1,
                2,
                config.shm_fd,
                config.submission_wake_fd,
                config.completion_wake_fd,
                config.spill_sock};
  CloseFdsExcept(keep, sizeof(keep) / sizeof(keep[0]));

  absl::StatusOr<ShmRegion> region =
      ShmRegion::Map(config.shm_fd, config.shm_bytes);
  if (!region.ok()) _exit(kExitSetupFailed);
  close(config.shm_fd);
  // Spill fds queued for a previous worker of this slot are not ours.
  DrainSpillSocket(config.spill_sock);
  Worker worker(config, std::move(*region));
  worker.Run();
}

}  // namespace forq::worker
