#include "worker/exec_runner.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

#include "common/errno_status.h"
#include "common/scoped_fd.h"
#include "nlohmann/json.hpp"
#include "worker/process_util.h"

namespace forq::worker {
namespace {

constexpr size_t kMaxArgs = 4096;
constexpr size_t kMaxArgBytes = 1 << 20;
constexpr size_t kStderrTail = 2048;
constexpr int kPollMs = 50;

absl::StatusOr<std::vector<std::string>> ParseArgv(absl::string_view payload) {
  // allow_exceptions=false: a parse error yields a discarded value.
  nlohmann::json j = nlohmann::json::parse(payload.begin(), payload.end(),
                                           nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_array() || j.empty()) {
    return absl::InvalidArgumentError(
        "exec: payload must be a non-empty JSON array of strings");
  }
  if (j.size() > kMaxArgs) {
    return absl::InvalidArgumentError("exec: too many arguments");
  }
  std::vector<std::string> argv;
  size_t total = 0;
  for (const auto& v : j) {
    if (!v.is_string()) {
      return absl::InvalidArgumentError(
          "exec: every argv element must be a string");
    }
    std::string s = v.get<std::string>();
    if (s.find('\0') != std::string::npos) {
      return absl::InvalidArgumentError("exec: argument contains a NUL byte");
    }
    total += s.size();
    argv.push_back(std::move(s));
  }
  if (total > kMaxArgBytes) {
    return absl::InvalidArgumentError("exec: arguments too long");
  }
  return argv;
}

// Child side: only async-signal-safe calls until execve.
[[noreturn]] void ExecChild(pid_t parent, int out_w, int err_w, int errpipe_w,
                            char* const argv[], char* const envp[],
                            const rlimit* cpu, const rlimit& as,
                            const rlimit& nofile) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent) _exit(127);
  // Own process group, so cancel and cleanup reach whatever it spawns.
  setpgid(0, 0);
  prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
  int devnull = open("/dev/null", O_RDONLY);
  if (devnull < 0 || dup2(devnull, 0) < 0 || dup2(out_w, 1) < 0 ||
      dup2(err_w, 2) < 0) {
    int e = errno;
    (void)!write(errpipe_w, &e, sizeof(e));
    _exit(127);
  }
  // Keep only 0-2 and the CLOEXEC error pipe (closed by a successful exec).
  int keep[] = {0, 1, 2, errpipe_w};
  CloseFdsExcept(keep, 4);
  if (cpu != nullptr) setrlimit(RLIMIT_CPU, cpu);
  setrlimit(RLIMIT_AS, &as);
  setrlimit(RLIMIT_NOFILE, &nofile);
  rlimit no_core{0, 0};
  setrlimit(RLIMIT_CORE, &no_core);
  ResetSignals();
  execve(argv[0], argv, envp);
  int e = errno;
  (void)!write(errpipe_w, &e, sizeof(e));
  _exit(127);
}

}  // namespace

absl::Status RunExec(const ExecOptions& options, TaskContext& ctx,
                     absl::string_view payload, std::string* result) {
  absl::StatusOr<std::vector<std::string>> args = ParseArgv(payload);
  if (!args.ok()) return args.status();
  const std::string& program = (*args)[0];
  if (std::find(options.allow.begin(), options.allow.end(), program) ==
      options.allow.end()) {
    return absl::PermissionDeniedError(absl::StrCat(
        "exec: '", program.substr(0, 256), "' is not allow-listed"));
  }
  // Everything the child needs is prepared before fork.
  std::vector<char*> argv;
  for (std::string& a : *args) argv.push_back(a.data());
  argv.push_back(nullptr);
  char path_env[] = "PATH=/usr/bin:/bin";
  char* envp[] = {path_env, nullptr};
  rlimit cpu_limit{RLIM_INFINITY, RLIM_INFINITY};
  const rlimit* cpu = nullptr;
  if (ctx.deadline() != absl::InfiniteFuture()) {
    const double secs = absl::ToDoubleSeconds(ctx.deadline() - absl::Now());
    const rlim_t s = static_cast<rlim_t>(std::max(1.0, std::ceil(secs)));
    cpu_limit = rlimit{s, s + 1};
    cpu = &cpu_limit;
  }
  const rlimit as{options.max_memory_bytes, options.max_memory_bytes};
  const rlimit nofile{static_cast<rlim_t>(options.max_open_files),
                      static_cast<rlim_t>(options.max_open_files)};

  int out[2], err[2], errpipe[2];
  if (pipe2(out, O_CLOEXEC) != 0) return ErrnoToStatus(errno, "exec: pipe");
  ScopedFd out_r(out[0]), out_w(out[1]);
  if (pipe2(err, O_CLOEXEC) != 0) return ErrnoToStatus(errno, "exec: pipe");
  ScopedFd err_r(err[0]), err_w(err[1]);
  if (pipe2(errpipe, O_CLOEXEC) != 0) return ErrnoToStatus(errno, "exec: pipe");
  ScopedFd errpipe_r(errpipe[0]), errpipe_w(errpipe[1]);

  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) return ErrnoToStatus(errno, "exec: fork");
  if (pid == 0) {
    ExecChild(parent, out_w.get(), err_w.get(), errpipe_w.get(), argv.data(),
              envp, cpu, as, nofile);
  }
  setpgid(pid, pid);  // also here: the group exists before any kill(-pid)
  out_w.reset();
  err_w.reset();
  errpipe_w.reset();

  int exec_errno = 0;
  ssize_t en;
  do {
    en = read(errpipe_r.get(), &exec_errno, sizeof(exec_errno));
  } while (en < 0 && errno == EINTR);
  if (en == sizeof(exec_errno)) {
    while (waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
    }
    return absl::FailedPreconditionError(absl::StrCat(
        "exec: cannot run '", program, "': ", strerror(exec_errno)));
  }

  std::string stdout_data, stderr_tail;
  bool cancelled = false;
  char buf[65536];
  pollfd fds[2] = {{out_r.get(), POLLIN, 0}, {err_r.get(), POLLIN, 0}};
  int open_fds = 2;
  while (open_fds > 0) {
    int r = poll(fds, 2, kPollMs);
    if (r < 0 && errno != EINTR) break;
    if (!cancelled && ctx.cancelled()) {
      cancelled = true;
      // The whole group: a grandchild holding the pipes open would
      // otherwise keep us waiting for EOF.
      kill(-pid, SIGKILL);
    }
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      ssize_t n = read(fds[i].fd, buf, sizeof(buf));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        fds[i].fd = -1;
        --open_fds;
        continue;
      }
      if (i == 0) {
        const size_t room = options.max_output_bytes > stdout_data.size()
                                ? options.max_output_bytes - stdout_data.size()
                                : 0;
        // Output past the cap is drained and dropped, so the program
        // never blocks on a full pipe.
        stdout_data.append(buf, std::min(room, static_cast<size_t>(n)));
      } else {
        stderr_tail.append(buf, static_cast<size_t>(n));
        if (stderr_tail.size() > kStderrTail) {
          stderr_tail.erase(0, stderr_tail.size() - kStderrTail);
        }
      }
    }
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  // Background leftovers of the program die with the task.
  kill(-pid, SIGKILL);
  if (cancelled) return absl::CancelledError("exec: task cancelled");
  if (WIFSIGNALED(status)) {
    return absl::AbortedError(
        absl::StrCat("exec: '", program, "' killed by signal ",
                     WTERMSIG(status), "; stderr: ", stderr_tail));
  }
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  if (code != 0) {
    return absl::UnknownError(absl::StrCat("exec: '", program,
                                           "' exited with code ", code,
                                           "; stderr: ", stderr_tail));
  }
  *result = std::move(stdout_data);
  return absl::OkStatus();
}

absl::Status RegisterExecHandler(HandlerRegistry& registry,
                                 ExecOptions options) {
  for (const std::string& p : options.allow) {
    if (p.empty() || p[0] != '/') {
      return absl::InvalidArgumentError(absl::StrCat(
          "exec allow-list entry '", p, "' is not an absolute path"));
    }
  }
  return registry.Register(
      "exec",
      [options = std::move(options)](
          TaskContext& ctx, absl::string_view payload, std::string* result) {
        return RunExec(options, ctx, payload, result);
      });
}

}  // namespace forq::worker
