// Small process helpers shared by the supervisor, workers and the exec
// runner. The functions marked async-signal-safe use only raw syscalls and
// may run between fork() and exec/worker loop.
#ifndef FORQ_WORKER_PROCESS_UTIL_H_
#define FORQ_WORKER_PROCESS_UTIL_H_

#include <sys/types.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/statusor.h"

namespace forq::worker {

// Closes every fd >= 0 except those in keep[0..n). `keep` is sorted in place.
// Async-signal-safe (close_range).
void CloseFdsExcept(int* keep, size_t n);

// Arranges for SIGKILL when the parent dies, and _exits(1) if the expected
// parent is already gone. Async-signal-safe. `expected_parent` is the
// parent's getpid() taken before fork(): the child's getppid() names its
// reaper once the parent died.
void DieWithParent(pid_t expected_parent);

// Restores default dispositions for all catchable signals and unblocks all
// signals. Async-signal-safe.
void ResetSignals();

// For the pool's processes (supervisor, workers): ignore SIGTERM and
// SIGINT. A service manager that signals every process of the service
// (systemd's default KillMode=control-group) then stops only forqd, which
// drains and stops its pool itself (with SIGKILL). Programs that exec
// tasks start get the default dispositions back (ResetSignals).
void IgnoreStopSignals();

// Resident set size of `pid` from /proc/PID/statm. NotFound if it is gone.
absl::StatusOr<uint64_t> ReadRssBytes(pid_t pid);

}  // namespace forq::worker

#endif  // FORQ_WORKER_PROCESS_UTIL_H_
