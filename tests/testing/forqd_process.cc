#include "tests/testing/forqd_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

#include "common/errno_status.h"
#include "common/scoped_fd.h"
#include "tests/testing/run_budget.h"

namespace forq::testing {
namespace {

// Waits for `pid` at most `timeout` of time in which the test ran
// (RunBudget), polling waitpid(WNOHANG) on a short period: there is no fd
// to wait on for a child's exit without pidfd.
absl::StatusOr<int> WaitForExit(int pid, absl::Duration timeout) {
  RunBudget run(timeout);
  while (true) {
    int status = 0;
    int r = waitpid(pid, &status, WNOHANG);
    if (r == pid) return status;
    if (r < 0 && errno != EINTR) return ErrnoToStatus(errno, "waitpid");
    if (!run.NextSlice()) {
      return absl::DeadlineExceededError(
          absl::StrCat("pid ", pid, " did not exit"));
    }
    usleep(2000);
  }
}

}  // namespace

std::string ForqdBinary() { return FORQ_FORQD_PATH; }
std::string ForqBinary() { return FORQ_CLI_PATH; }

std::string MakeTempDir(const std::string& prefix) {
  const char* tmp = getenv("TMPDIR");
  std::string templ =
      absl::StrCat(tmp != nullptr ? tmp : "/tmp", "/", prefix, "-XXXXXX");
  char* dir = mkdtemp(templ.data());
  return dir != nullptr ? std::string(dir) : std::string();
}

absl::StatusOr<std::unique_ptr<ForqdProcess>> ForqdProcess::Start(
    ForqdOptions options) {
  std::unique_ptr<ForqdProcess> p(new ForqdProcess(std::move(options)));
  if (p->options_.data_dir.empty()) {
    p->data_dir_ = MakeTempDir("forqd-test");
    if (p->data_dir_.empty()) return ErrnoToStatus(errno, "mkdtemp");
    p->owns_data_dir_ = true;
  } else {
    p->data_dir_ = p->options_.data_dir;
  }
  p->log_path_ = p->data_dir_ + "/forqd.log";
  absl::Status s = p->Spawn();
  if (!s.ok()) return s;
  return p;
}

absl::Status ForqdProcess::Spawn() {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return ErrnoToStatus(errno, "pipe2");
  ScopedFd read_end(fds[0]);
  ScopedFd write_end(fds[1]);

  std::vector<std::string> args = {
      ForqdBinary(),
      absl::StrCat("--grpc_addr=127.0.0.1:", grpc_port_),
      absl::StrCat("--http_addr=127.0.0.1:", http_port_),
      absl::StrCat("--workers=", options_.workers),
      absl::StrCat("--data_dir=", data_dir_ + "/data"),
      "--ready_fd=3",
  };
  for (const auto& f : options_.flags) args.push_back(f);
  std::vector<char*> argv;
  argv.reserve(args.size() + 1);
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);

  int log_fd =
      open(log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) return ErrnoToStatus(errno, "open forqd log");
  ScopedFd log(log_fd);

  // forqd dies with the test or benchmark that started it, so a killed or
  // timed-out run leaves no forqd behind. The signal follows the death of
  // the forking *thread*: only the main thread lives as long as the process.
  const bool from_main_thread = gettid() == getpid();
  const pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) return ErrnoToStatus(errno, "fork");
  if (pid == 0) {
    // Child: only async-signal-safe calls until exec.
    if (from_main_thread) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(127);  // it died before prctl
    }
    dup2(write_end.get(), 3);  // dup2 clears FD_CLOEXEC on the copy
    dup2(log.get(), 1);
    dup2(log.get(), 2);
    int devnull = open("/dev/null", O_RDONLY);
    if (devnull >= 0) dup2(devnull, 0);
    execv(argv[0], argv.data());
    _exit(127);
  }
  pid_ = pid;
  write_end.reset();

  // Read "grpc_port=N http_port=M\n" or EOF (forqd died before ready),
  // for at most start_timeout of time in which the test ran (RunBudget).
  std::string line;
  RunBudget run(options_.start_timeout);
  char buf[256];
  while (line.find('\n') == std::string::npos) {
    const std::optional<absl::Time> until = run.NextSlice();
    if (!until) {
      Kill(SIGKILL).IgnoreError();
      return absl::DeadlineExceededError("forqd did not become ready: " +
                                         LogTail());
    }
    pollfd pfd{read_end.get(), POLLIN, 0};
    const int ms = static_cast<int>(absl::ToInt64Milliseconds(
        std::max(*until - absl::Now(), absl::Milliseconds(1))));
    int r = poll(&pfd, 1, ms);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) continue;
    ssize_t n = read(read_end.get(), buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      Kill(SIGKILL).IgnoreError();
      return absl::InternalError("forqd exited before ready: " + LogTail());
    }
    line.append(buf, n);
  }
  for (absl::string_view kv :
       absl::StrSplit(line, absl::ByAnyChar(" \n"), absl::SkipEmpty())) {
    std::pair<std::string, std::string> p = absl::StrSplit(kv, '=');
    if (p.first == "grpc_port") (void)absl::SimpleAtoi(p.second, &grpc_port_);
    if (p.first == "http_port") (void)absl::SimpleAtoi(p.second, &http_port_);
  }
  if (grpc_port_ == 0) {
    return absl::InternalError("bad ready line from forqd: " + line);
  }
  grpc_address_ = absl::StrCat("127.0.0.1:", grpc_port_);
  http_address_ = absl::StrCat("127.0.0.1:", http_port_);
  return absl::OkStatus();
}

ForqdProcess::~ForqdProcess() {
  if (pid_ > 0) Kill(SIGKILL).IgnoreError();
  if (owns_data_dir_ && !data_dir_.empty() &&
      getenv("FORQ_KEEP_TEST_DIRS") == nullptr) {
    std::error_code ec;
    std::filesystem::remove_all(data_dir_, ec);
  }
}

absl::StatusOr<int> ForqdProcess::Kill(int sig) {
  if (pid_ <= 0) return absl::FailedPreconditionError("forqd not running");
  kill(pid_, sig);
  absl::StatusOr<int> status = WaitForExit(pid_, absl::Seconds(30));
  if (status.ok()) pid_ = -1;
  return status;
}

absl::StatusOr<int> ForqdProcess::Stop(absl::Duration timeout) {
  if (pid_ <= 0) return absl::FailedPreconditionError("forqd not running");
  kill(pid_, SIGTERM);
  absl::StatusOr<int> status = WaitForExit(pid_, timeout);
  if (status.ok()) pid_ = -1;
  return status;
}

absl::StatusOr<int> ForqdProcess::AwaitExit(absl::Duration timeout) {
  if (pid_ <= 0) return absl::FailedPreconditionError("forqd not running");
  absl::StatusOr<int> status = WaitForExit(pid_, timeout);
  if (status.ok()) pid_ = -1;
  return status;
}

absl::Status ForqdProcess::Restart() {
  if (pid_ > 0) return absl::FailedPreconditionError("forqd still running");
  return Spawn();
}

std::string ForqdProcess::LogTail(int lines) const {
  std::ifstream in(log_path_);
  std::vector<std::string> all;
  std::string l;
  while (std::getline(in, l)) all.push_back(l);
  std::ostringstream out;
  for (size_t i = all.size() > static_cast<size_t>(lines) ? all.size() - lines
                                                          : 0;
       i < all.size(); ++i) {
    out << all[i] << "\n";
  }
  return out.str();
}

absl::StatusOr<CommandResult> RunCommand(const std::vector<std::string>& argv,
                                         const std::string& stdin_data,
                                         absl::Duration timeout) {
  int in[2], out[2], err[2];
  if (pipe2(in, O_CLOEXEC) || pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC)) {
    return ErrnoToStatus(errno, "pipe2");
  }
  std::vector<std::string> args = argv;
  std::vector<char*> cargv;
  cargv.reserve(args.size() + 1);
  for (auto& a : args) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  pid_t pid = fork();
  if (pid < 0) return ErrnoToStatus(errno, "fork");
  if (pid == 0) {
    dup2(in[0], 0);
    dup2(out[1], 1);
    dup2(err[1], 2);
    execv(cargv[0], cargv.data());
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  close(err[1]);
  ScopedFd in_w(in[1]), out_r(out[0]), err_r(err[0]);
  fcntl(in_w.get(), F_SETFL, O_NONBLOCK);
  size_t written = 0;
  if (stdin_data.empty()) in_w.reset();
  CommandResult result;
  RunBudget run(timeout);
  char buf[65536];
  while (out_r.valid() || err_r.valid()) {
    std::vector<pollfd> pfds;
    if (in_w.valid()) pfds.push_back({in_w.get(), POLLOUT, 0});
    if (out_r.valid()) pfds.push_back({out_r.get(), POLLIN, 0});
    if (err_r.valid()) pfds.push_back({err_r.get(), POLLIN, 0});
    const std::optional<absl::Time> until = run.NextSlice();
    if (!until) {
      kill(pid, SIGKILL);
      WaitForExit(pid, absl::Seconds(10)).IgnoreError();
      return absl::DeadlineExceededError(
          absl::StrCat("command timed out: ", argv[0], "\nstdout: ", result.out,
                       "\nstderr: ", result.err));
    }
    const int ms = static_cast<int>(absl::ToInt64Milliseconds(
        std::max(*until - absl::Now(), absl::Milliseconds(1))));
    int r = poll(pfds.data(), pfds.size(), ms);
    if (r < 0 && errno != EINTR) return ErrnoToStatus(errno, "poll");
    for (const pollfd& p : pfds) {
      if (p.revents == 0) continue;
      if (in_w.valid() && p.fd == in_w.get()) {
        ssize_t n = write(in_w.get(), stdin_data.data() + written,
                          stdin_data.size() - written);
        if (n > 0) written += n;
        if (n < 0 && errno != EAGAIN) in_w.reset();
        if (written == stdin_data.size()) in_w.reset();
        continue;
      }
      ssize_t n = read(p.fd, buf, sizeof(buf));
      if (n > 0) {
        (p.fd == out_r.get() ? result.out : result.err).append(buf, n);
      } else if (n == 0 || errno != EINTR) {
        if (p.fd == out_r.get()) {
          out_r.reset();
        } else {
          err_r.reset();
        }
      }
    }
  }
  absl::StatusOr<int> status = WaitForExit(pid, run.left() + absl::Seconds(1));
  if (!status.ok()) {
    kill(pid, SIGKILL);
    WaitForExit(pid, absl::Seconds(10)).IgnoreError();
    return status.status();
  }
  result.exit_code =
      WIFEXITED(*status) ? WEXITSTATUS(*status) : 128 + WTERMSIG(*status);
  return result;
}

}  // namespace forq::testing
