#include "worker/launcher.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "absl/time/time.h"

#include "common/errno_status.h"
#include "common/scoped_fd.h"

namespace forq::worker {
namespace {

// How long Stop waits for the supervisor to reap its workers and exit.
constexpr absl::Duration kSupervisorExitWait = absl::Seconds(2);

class ForkingLauncher : public SupervisorLauncher {
 public:
  absl::StatusOr<pid_t> Start(const SupervisorConfig& config) override {
    const pid_t pid = fork();
    if (pid < 0) return ErrnoToStatus(errno, "fork supervisor");
    if (pid == 0) RunSupervisor(config);
    return pid;
  }

  void Stop(pid_t pid) override {
    if (pid <= 0) return;
    ScopedFd pidfd(static_cast<int>(syscall(SYS_pidfd_open, pid, 0)));
    if (pidfd.valid()) {
      pollfd p{pidfd.get(), POLLIN, 0};
      int r;
      do {
        r = poll(
            &p, 1,
            static_cast<int>(absl::ToInt64Milliseconds(kSupervisorExitWait)));
      } while (r < 0 && errno == EINTR);
      if (r == 0) kill(pid, SIGKILL);
    } else {
      kill(pid, SIGKILL);
    }
    // ECHILD if forqd's own reaper got it first; nothing left to do then.
    while (waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
    }
  }
};

}  // namespace

std::unique_ptr<SupervisorLauncher> NewForkingLauncher() {
  return std::make_unique<ForkingLauncher>();
}

}  // namespace forq::worker
