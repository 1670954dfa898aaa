// The worker process: a single-threaded loop that takes assignments from its
// submission ring, runs the registered handler and posts the result, progress
// and side-channel calls on its completion ring.
#ifndef FORQ_WORKER_WORKER_MAIN_H_
#define FORQ_WORKER_WORKER_MAIN_H_

#include <sys/types.h>

#include <cstddef>
#include <cstdint>

#include "worker/handler.h"

namespace forq::worker {

// Everything a freshly forked worker needs; fds are inherited from the
// supervisor.
struct WorkerConfig {
  int slot = 0;
  pid_t supervisor_pid = 0;
  int shm_fd = -1;
  size_t shm_bytes = 0;
  uint64_t ring_bytes = 0;
  int submission_wake_fd = -1;  // forqd writes, we wait
  int completion_wake_fd = -1;  // we write, forqd waits
  int spill_sock = -1;
  uint64_t max_spill_bytes = 0;
  const HandlerRegistry* registry = nullptr;
};

// Runs the worker loop in the calling (just forked) process; never returns.
// Closes every fd not listed in `config` (except 0, 1, 2), dies with the
// supervisor (PR_SET_PDEATHSIG), and leaves with _exit so no atexit handler
// or static destructor inherited from forqd runs.
[[noreturn]] void RunWorker(const WorkerConfig& config);

}  // namespace forq::worker

#endif  // FORQ_WORKER_WORKER_MAIN_H_
