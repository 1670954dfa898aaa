// The `exec` task kind: runs an allow-listed program with argv from the
// payload (a JSON array of strings), without a shell, with a scrubbed
// environment, only fds 0-2, rlimits and no_new_privs; stdout is the result.
#ifndef FORQ_WORKER_EXEC_RUNNER_H_
#define FORQ_WORKER_EXEC_RUNNER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

#include "worker/handler.h"

namespace forq::worker {

struct ExecOptions {
  // Absolute paths argv[0] may name (exact match).
  std::vector<std::string> allow;
  // stdout beyond this is read and discarded.
  uint64_t max_output_bytes = 1 << 20;
  uint64_t max_memory_bytes = uint64_t{1} << 30;  // RLIMIT_AS
  int max_open_files = 64;                        // RLIMIT_NOFILE
  // When the worker runs as root, the program runs as this uid/gid (no
  // supplementary groups) with RLIMIT_NPROC = max_processes; as another
  // user it keeps that user (NPROC would count the user's other processes).
  uint32_t run_as_uid = 65534;  // nobody
  uint32_t run_as_gid = 65534;  // nogroup
  int max_processes = 64;
  // Each task runs in a fresh private directory under this one, removed
  // afterwards.
  std::string work_root = "/tmp";
};

// Runs one exec task in the calling process (a worker): fork + execve,
// waits for the child, honours ctx.cancelled() and ctx.deadline() by
// killing it. The caller becomes a child subreaper, so processes the program
// leaves behind (backgrounded, double-forked, setsid) are reparented to it
// and killed when the task ends. Errors:
// InvalidArgument for a malformed payload, PermissionDenied for a program
// not on the allow-list, FailedPrecondition if execve fails, Unknown with the
// exit code and the tail of stderr for a non-zero exit, Aborted if the
// program died from a signal, Cancelled if the task was cancelled,
// DeadlineExceeded past ctx.deadline(), ResourceExhausted if stdout passed
// max_output_bytes.
absl::Status RunExec(const ExecOptions& options, TaskContext& ctx,
                     absl::string_view payload, std::string* result);

// Registers RunExec under the kind "exec". InvalidArgument if an allow-list
// entry is not an absolute path.
absl::Status RegisterExecHandler(HandlerRegistry& registry,
                                 ExecOptions options);

}  // namespace forq::worker

#endif  // FORQ_WORKER_EXEC_RUNNER_H_
