#include "worker/exec_runner.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <utility>
#include <vector>

#include "absl/cleanup/cleanup.h"
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

// What the child applies to itself before execve.
struct ChildSetup {
  const rlimit* cpu = nullptr;
  rlimit as{};
  rlimit nofile{};
  rlimit nproc{};
  bool drop = false;  // switch to uid/gid (forqd runs as root)
  uid_t uid = 0;
  gid_t gid = 0;
  const char* workdir = nullptr;
};

[[noreturn]] void ChildFail(int errpipe_w) {
  int e = errno;
  (void)!write(errpipe_w, &e, sizeof(e));
  _exit(127);
}

// Child side: only async-signal-safe calls until execve.
[[noreturn]] void ExecChild(pid_t parent, int out_w, int err_w, int errpipe_w,
                            char* const argv[], char* const envp[],
                            const ChildSetup& setup) {
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
  if (setup.workdir != nullptr && chdir(setup.workdir) != 0) {
    ChildFail(errpipe_w);
  }
  if (setup.cpu != nullptr) setrlimit(RLIMIT_CPU, setup.cpu);
  setrlimit(RLIMIT_AS, &setup.as);
  setrlimit(RLIMIT_NOFILE, &setup.nofile);
  rlimit no_core{0, 0};
  setrlimit(RLIMIT_CORE, &no_core);
  if (setup.drop) {
    // Groups first, uid last: afterwards nothing can be changed back.
    setrlimit(RLIMIT_NPROC, &setup.nproc);
    if (setgroups(0, nullptr) != 0 || setgid(setup.gid) != 0 ||
        setuid(setup.uid) != 0) {
      ChildFail(errpipe_w);
    }
  }
  ResetSignals();
  execve(argv[0], argv, envp);
  int e = errno;
  (void)!write(errpipe_w, &e, sizeof(e));
  _exit(127);
}

// Parent pid of `pid` from /proc, or -1.
pid_t ParentOf(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat;
  std::getline(in, stat);
  const size_t paren = stat.rfind(')');
  if (paren == std::string::npos) return -1;
  char state = 0;
  int ppid = -1;
  if (sscanf(stat.c_str() + paren + 1, " %c %d", &state, &ppid) != 2) {
    return -1;
  }
  return ppid;
}

// Kills what the task left behind: its process group, then every process
// reparented to this (subreaper) process, round after round, as killing one
// hands its children to us.
void KillLeftovers(pid_t pgid) {
  kill(-pgid, SIGKILL);
  const pid_t self = getpid();
  for (int round = 0; round < 64; ++round) {
    std::vector<pid_t> found;
    DIR* proc = opendir("/proc");
    if (proc == nullptr) return;
    // readdir is safe on a DIR* no other thread uses.
    while (dirent* e = readdir(proc)) {  // NOLINT(concurrency-mt-unsafe)
      char* end = nullptr;
      const long pid = strtol(e->d_name, &end, 10);
      if (end == e->d_name || *end != '\0' || pid <= 0) continue;
      if (ParentOf(static_cast<pid_t>(pid)) == self) {
        found.push_back(static_cast<pid_t>(pid));
      }
    }
    closedir(proc);
    if (found.empty()) return;
    for (pid_t p : found) kill(p, SIGKILL);
    for (pid_t p : found) {
      while (waitpid(p, nullptr, 0) < 0 && errno == EINTR) {
      }
    }
  }
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
  ChildSetup setup;
  setup.cpu = cpu;
  setup.as = rlimit{options.max_memory_bytes, options.max_memory_bytes};
  setup.nofile = rlimit{static_cast<rlim_t>(options.max_open_files),
                        static_cast<rlim_t>(options.max_open_files)};
  setup.nproc = rlimit{static_cast<rlim_t>(options.max_processes),
                       static_cast<rlim_t>(options.max_processes)};
  setup.drop = geteuid() == 0;
  setup.uid = options.run_as_uid;
  setup.gid = options.run_as_gid;

  // A private working directory; owned by the task's user.
  std::string workdir = options.work_root + "/forq-exec-XXXXXX";
  if (mkdtemp(workdir.data()) == nullptr) {
    return ErrnoToStatus(errno, "exec: mkdtemp working directory");
  }
  absl::Cleanup remove_workdir = [&workdir] {
    std::error_code ec;
    std::filesystem::remove_all(workdir, ec);
  };
  if (setup.drop && chown(workdir.c_str(), setup.uid, setup.gid) != 0) {
    return ErrnoToStatus(errno, "exec: chown working directory");
  }
  setup.workdir = workdir.c_str();
  // Orphans of the program become our children, so none outlives the task.
  prctl(PR_SET_CHILD_SUBREAPER, 1);

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
              envp, setup);
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
        "exec: cannot run '", program, "': ", ErrnoText(exec_errno)));
  }

  std::string stdout_data, stderr_tail;
  bool cancelled = false;
  bool timed_out = false;
  bool truncated = false;
  bool exited = false;
  int status = 0;
  char buf[65536];
  pollfd fds[2] = {{out_r.get(), POLLIN, 0}, {err_r.get(), POLLIN, 0}};
  int open_fds = 2;
  while (open_fds > 0) {
    int r = poll(fds, 2, kPollMs);
    if (r < 0 && errno != EINTR) break;
    if (!cancelled && !timed_out) {
      if (ctx.cancelled()) {
        cancelled = true;
      } else if (absl::Now() >= ctx.deadline()) {
        timed_out = true;
      }
      if (cancelled || timed_out) {
        // The whole tree: a grandchild holding the pipes open would
        // otherwise keep us waiting for EOF.
        KillLeftovers(pid);
      }
    }
    if (!exited) {
      const pid_t w = waitpid(pid, &status, WNOHANG);
      if (w == pid) {
        exited = true;
        // The program is done; whatever it left running (holding our
        // pipes, or detached with setsid) ends with it.
        KillLeftovers(pid);
      }
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
        if (static_cast<size_t>(n) > room) truncated = true;
      } else {
        stderr_tail.append(buf, static_cast<size_t>(n));
        if (stderr_tail.size() > kStderrTail) {
          stderr_tail.erase(0, stderr_tail.size() - kStderrTail);
        }
      }
    }
  }
  if (!exited) {
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
  }
  // Background leftovers of the program die with the task.
  KillLeftovers(pid);
  if (cancelled) return absl::CancelledError("exec: task cancelled");
  if (timed_out) {
    return absl::DeadlineExceededError(
        absl::StrCat("exec: '", program, "' passed the task's deadline"));
  }
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
  if (truncated) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "exec: '", program, "' wrote more than ", options.max_output_bytes,
        " bytes to stdout (the result limit)"));
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
