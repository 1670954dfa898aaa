// The forkserver supervisor: a small single-threaded process forked from
// forqd before any thread exists. It forks the workers, reports spawns and
// exits to forqd over a pipe, respawns a slot when forqd says so, and kills
// workers on request.
#ifndef FORQ_WORKER_SUPERVISOR_H_
#define FORQ_WORKER_SUPERVISOR_H_

#include <sys/types.h>

#include <utility>
#include <vector>

#include "worker/worker_main.h"

namespace forq::worker {

// The fds of one slot that a worker inherits.
struct SupervisorSlot {
  int shm_fd = -1;
  int submission_wake_fd = -1;
  int completion_wake_fd = -1;
  int spill_sock = -1;  // the worker's end
};

// Built by forqd before the fork; the supervisor only reads it.
struct SupervisorConfig {
  pid_t forqd_pid = 0;
  int command_fd = -1;  // read end: SupervisorCommand records from forqd
  int event_fd = -1;    // write end: SupervisorEvent records to forqd
  std::vector<SupervisorSlot> slots;
  // forqd's own mappings of the slot regions, dropped in the supervisor.
  std::vector<std::pair<void*, size_t>> unmap;
  // Template for each worker; slot and fds are filled in per slot.
  WorkerConfig worker;
};

// Runs the supervisor in the calling (just forked) process; never returns.
// Exits (killing and reaping all workers first) when the command pipe
// reaches EOF, i.e. forqd shut the pool down or died; dies with forqd via
// PR_SET_PDEATHSIG. Uses only syscalls and the pre-built config, because its
// parent may have had other threads when it forked.
[[noreturn]] void RunSupervisor(const SupervisorConfig& config);

}  // namespace forq::worker

#endif  // FORQ_WORKER_SUPERVISOR_H_
