// The forkserver-based WorkerPool: a supervisor process, forked before any
// thread exists, forks N single-threaded workers fed through shared-memory
// rings and wake-up fds, and respawns them when they die.
#ifndef FORQ_WORKER_FORK_POOL_H_
#define FORQ_WORKER_FORK_POOL_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

#include "worker/pool.h"

namespace forq::worker {

class SupervisorLauncher;

struct ForkPoolOptions {
  // Worker processes; 0 = online cores (respecting the cgroup CPU quota).
  int workers = 0;
  // Plugin .so files, dlopen'ed in the supervisor before forking.
  std::vector<std::string> plugins;
  // Assignments queued in a worker's ring behind the one it runs, so a
  // worker goes from task to task without waiting for forqd. Only tasks
  // whose timeout is at least kMinQueuedTimeout (or none) are queued; a
  // worker whose attempt runs longer than a few milliseconds gives its
  // queue back as soon as another worker is idle, so nothing waits behind a
  // long task while a worker could run it. Fewer of a kind whose mean run
  // time is long (about 2 ms of work is queued; see MaxAssignedFor). Forced
  // to 0 by the recycling options (max_tasks_per_child,
  // max_worker_rss_bytes).
  int prefetch = 64;
  // Recycle a worker after this many tasks; 0 = never.
  int max_tasks_per_child = 0;
  // Recycle (between tasks) or kill (mid-task) a worker whose RSS passes
  // this; 0 = no limit.
  uint64_t max_worker_rss_bytes = 0;
  // After a cancel / soft timeout, how long the handler has to notice
  // ctx.cancelled() before its worker is killed.
  absl::Duration cancel_grace = absl::Seconds(5);
  // Absolute paths of programs the `exec` kind may run; empty = exec off.
  std::vector<std::string> exec_allow;
  // Limits of an `exec` task: stdout kept as the result (the rest is
  // dropped), RLIMIT_AS, RLIMIT_NOFILE. RLIMIT_CPU follows the task timeout.
  uint64_t exec_max_output_bytes = 1 << 20;
  uint64_t exec_max_memory_bytes = uint64_t{1} << 30;
  int exec_max_open_files = 64;
  // Bytes per shared-memory ring (each worker has two); a power of two in
  // [4 KiB, 1 GiB]. Frames over a quarter of it go through the spill path.
  size_t ring_bytes = 1 << 20;
};

// Registers the built-in handlers, the `exec` kind (if exec_allow is set)
// and plugins, creates each worker's shared memory and wake-up fds, then
// forks the supervisor, which forks the workers. Must be called while the
// process is still single-threaded (before gRPC, spdlog async sinks or any
// std::thread): the supervisor then never inherits a held lock. Returns
// InvalidArgument for bad options or a plugin that fails to load, and the
// syscall's error if creating shared memory or forking fails. The returned
// pool reports workers as idle (on_worker_idle) once Start is called and
// they are ready.
absl::StatusOr<std::unique_ptr<WorkerPool>> CreateForkPool(
    ForkPoolOptions options);
// The same with the supervisor started by `launcher` (worker/launcher.h), so
// a test can drive the pool without forking.
absl::StatusOr<std::unique_ptr<WorkerPool>> CreateForkPool(
    ForkPoolOptions options, std::unique_ptr<SupervisorLauncher> launcher);

// Number of CPUs this process may use: sched_getaffinity, capped by the
// cgroup v2 cpu.max quota when one is set. At least 1.
int DefaultWorkerCount();

}  // namespace forq::worker

#endif  // FORQ_WORKER_FORK_POOL_H_
