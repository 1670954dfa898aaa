#include "worker/supervisor.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cstring>

#include "worker/process_util.h"
#include "worker/protocol.h"

namespace forq::worker {
namespace {

// Upper bound on slots, so the supervisor's state lives in fixed arrays
// allocated before anything else happens.
constexpr int kMaxSlots = 1024;

struct SlotState {
  pid_t pid = 0;           // live worker, 0 if none
  bool respawn = false;    // waiting for respawn_at
  int64_t respawn_at = 0;  // CLOCK_MONOTONIC ms
};

int64_t NowMs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1000 + ts.tv_nsec / 1'000'000;
}

class Supervisor {
 public:
  explicit Supervisor(const SupervisorConfig& config) : config_(config) {}

  [[noreturn]] void Run() {
    Setup();
    const int n = static_cast<int>(config_.slots.size());
    for (int i = 0; i < n; ++i) Spawn(i);
    while (true) {
      pollfd fds[2] = {{config_.command_fd, POLLIN, 0},
                       {signal_fd_, POLLIN, 0}};
      int r = poll(fds, 2, NextTimeoutMs());
      if (r < 0 && errno != EINTR) Exit();
      if (fds[1].revents != 0) Reap();
      if (fds[0].revents != 0) ReadCommands();
      RespawnDue();
    }
  }

 private:
  void Setup() {
    DieWithParent(config_.forqd_pid);
    // Own process group: a terminal's Ctrl-C goes to forqd, which shuts the
    // pool down in order, instead of killing workers mid-task.
    setpgid(0, 0);
    // Orphans of killed workers (exec grandchildren) are reparented here and
    // reaped, instead of escaping to init.
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    prctl(PR_SET_NAME, "forq-supervisor");
    ResetSignals();
    // The supervisor is single-threaded.
    signal(SIGPIPE, SIG_IGN);  // NOLINT(concurrency-mt-unsafe)
    IgnoreStopSignals();
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, nullptr);  // NOLINT(concurrency-mt-unsafe)
    for (const auto& [addr, len] : config_.unmap) munmap(addr, len);

    const size_t n = config_.slots.size();
    if (n > kMaxSlots) _exit(2);
    int keep[3 + 2 + 4 * kMaxSlots];
    size_t k = 0;
    keep[k++] = 0;
    keep[k++] = 1;
    keep[k++] = 2;
    keep[k++] = config_.command_fd;
    keep[k++] = config_.event_fd;
    for (const SupervisorSlot& s : config_.slots) {
      keep[k++] = s.shm_fd;
      keep[k++] = s.submission_wake_fd;
      keep[k++] = s.completion_wake_fd;
      keep[k++] = s.spill_sock;
    }
    CloseFdsExcept(keep, k);
    signal_fd_ = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    if (signal_fd_ < 0) _exit(2);
  }

  void Send(uint32_t type, int slot, pid_t pid, int status) {
    SupervisorEvent e;
    std::memset(&e, 0, sizeof(e));
    e.version = kProtocolVersion;
    e.type = type;
    e.slot = slot;
    e.pid = pid;
    e.wait_status = status;
    ssize_t n;
    do {
      n = write(config_.event_fd, &e, sizeof(e));
    } while (n < 0 && errno == EINTR);
    if (n != static_cast<ssize_t>(sizeof(e))) Exit();  // forqd is gone
  }

  void Spawn(int slot) {
    SlotState& s = state_[slot];
    s.respawn = false;
    // Taken before fork: a child that asked getppid() after this process
    // died would get its reaper's pid and live on, an orphan.
    const pid_t self = getpid();
    pid_t pid = fork();
    if (pid < 0) {
      Send(SupervisorEvent::kSpawnFailed, slot, 0, errno);
      s.respawn = true;
      s.respawn_at = NowMs() + 1000;
      return;
    }
    if (pid == 0) {
      WorkerConfig w = config_.worker;
      const SupervisorSlot& fds = config_.slots[slot];
      w.slot = slot;
      w.supervisor_pid = self;
      w.shm_fd = fds.shm_fd;
      w.submission_wake_fd = fds.submission_wake_fd;
      w.completion_wake_fd = fds.completion_wake_fd;
      w.spill_sock = fds.spill_sock;
      RunWorker(w);
    }
    // Also set the group here: whichever of parent and child runs first, the
    // group exists before any kill(-pid).
    setpgid(pid, pid);
    s.pid = pid;
    Send(SupervisorEvent::kSpawned, slot, pid, 0);
  }

  void Reap() {
    signalfd_siginfo info;
    while (read(signal_fd_, &info, sizeof(info)) > 0) {
    }
    while (true) {
      int status = 0;
      pid_t pid = waitpid(-1, &status, WNOHANG);
      if (pid <= 0) return;
      for (int i = 0; i < static_cast<int>(config_.slots.size()); ++i) {
        if (state_[i].pid != pid) continue;
        state_[i].pid = 0;
        // Anything the worker left in its process group goes with it. The
        // group id cannot be reused while members remain.
        kill(-pid, SIGKILL);
        Send(SupervisorEvent::kExited, i, pid, status);
        break;
      }
      // Not a worker: an orphan reparented to us; reaping it is all we do.
    }
  }

  void ReadCommands() {
    ssize_t n;
    do {
      n = read(config_.command_fd, buf_ + buf_len_, sizeof(buf_) - buf_len_);
    } while (n < 0 && errno == EINTR);
    if (n <= 0) Exit();  // EOF: forqd shut down or died
    buf_len_ += static_cast<size_t>(n);
    size_t off = 0;
    while (buf_len_ - off >= sizeof(SupervisorCommand)) {
      SupervisorCommand c;
      std::memcpy(&c, buf_ + off, sizeof(c));
      off += sizeof(c);
      Handle(c);
    }
    std::memmove(buf_, buf_ + off, buf_len_ - off);
    buf_len_ -= off;
  }

  void Handle(const SupervisorCommand& c) {
    if (c.version != kProtocolVersion || c.slot < 0 ||
        c.slot >= static_cast<int>(config_.slots.size())) {
      return;
    }
    SlotState& s = state_[c.slot];
    switch (c.type) {
      case SupervisorCommand::kKill:
        // Only a worker we have not reaped: its pid cannot have been reused.
        if (s.pid != 0 && s.pid == c.pid) {
          kill(-s.pid, c.signal);
          kill(s.pid, c.signal);
        }
        break;
      case SupervisorCommand::kRespawn:
        if (s.pid == 0 && !s.respawn) {
          s.respawn = true;
          s.respawn_at = NowMs() + c.delay_ms;
        }
        break;
      default:
        break;
    }
  }

  int NextTimeoutMs() const {
    int64_t next = -1;
    const int64_t now = NowMs();
    for (size_t i = 0; i < config_.slots.size(); ++i) {
      if (!state_[i].respawn) continue;
      int64_t wait =
          state_[i].respawn_at > now ? state_[i].respawn_at - now : 0;
      if (next < 0 || wait < next) next = wait;
    }
    return static_cast<int>(next);
  }

  void RespawnDue() {
    const int64_t now = NowMs();
    for (int i = 0; i < static_cast<int>(config_.slots.size()); ++i) {
      if (state_[i].respawn && state_[i].respawn_at <= now) Spawn(i);
    }
  }

  [[noreturn]] void Exit() {
    for (size_t i = 0; i < config_.slots.size(); ++i) {
      if (state_[i].pid != 0) {
        kill(-state_[i].pid, SIGKILL);
        kill(state_[i].pid, SIGKILL);
      }
    }
    // Reap every child, workers and adopted orphans alike.
    while (true) {
      pid_t pid = waitpid(-1, nullptr, 0);
      if (pid < 0 && errno == EINTR) continue;
      if (pid < 0) break;
    }
    _exit(0);
  }

  const SupervisorConfig& config_;
  SlotState state_[kMaxSlots];
  int signal_fd_ = -1;
  char buf_[sizeof(SupervisorCommand) * 64];
  size_t buf_len_ = 0;
};

}  // namespace

void RunSupervisor(const SupervisorConfig& config) {
  // On the stack (a few tens of KiB): the supervisor allocates nothing.
  Supervisor supervisor(config);
  supervisor.Run();
}

}  // namespace forq::worker
