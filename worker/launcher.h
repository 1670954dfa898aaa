// How a ForkPool gets its worker processes: the seam between the pool's
// bookkeeping (assignments, exits, respawns, timers) and process creation.
// The real launcher forks the supervisor (worker/supervisor.h), which forks
// the workers; a test may pass a launcher that runs no process and plays the
// supervisor and the workers itself over the same pipes and rings.
#ifndef FORQ_WORKER_LAUNCHER_H_
#define FORQ_WORKER_LAUNCHER_H_

#include <sys/types.h>

#include <memory>

#include "absl/status/statusor.h"

#include "worker/supervisor.h"

namespace forq::worker {

// Called by ForkPool from one thread at a time: Start once from Init (before
// the pool has threads), Stop once from Shutdown.
class SupervisorLauncher {
 public:
  virtual ~SupervisorLauncher() = default;

  // Starts a supervisor serving `config`: it reads SupervisorCommand records
  // from config.command_fd, writes SupervisorEvent records to
  // config.event_fd, and starts one worker per slot. The fds in `config`
  // belong to the pool, which closes the worker-side ones after Start
  // returns: a launcher that keeps using them must dup them. Returns the
  // supervisor's pid, or 0 if it runs no process.
  virtual absl::StatusOr<pid_t> Start(const SupervisorConfig& config) = 0;

  // The pool has closed its end of the command pipe (a supervisor kills and
  // reaps its workers and exits on that EOF): waits for supervisor `pid`
  // (as returned by Start) to end, killing it if it takes too long.
  virtual void Stop(pid_t pid) = 0;
};

// The launcher forqd uses: forks the supervisor (RunSupervisor).
std::unique_ptr<SupervisorLauncher> NewForkingLauncher();

}  // namespace forq::worker

#endif  // FORQ_WORKER_LAUNCHER_H_
