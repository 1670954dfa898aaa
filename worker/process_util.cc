#include "worker/process_util.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

#include "common/errno_status.h"
#include "common/scoped_fd.h"

namespace forq::worker {

void CloseFdsExcept(int* keep, size_t n) {
  std::sort(keep, keep + n);
  unsigned int next = 0;
  for (size_t i = 0; i < n; ++i) {
    if (keep[i] < 0) continue;
    const unsigned int k = static_cast<unsigned int>(keep[i]);
    if (k > next) syscall(SYS_close_range, next, k - 1, 0);
    next = k + 1;
  }
  syscall(SYS_close_range, next, ~0U, 0);
}

void DieWithParent(pid_t expected_parent) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  // The parent may have died before prctl took effect.
  if (getppid() != expected_parent) _exit(1);
}

void ResetSignals() {
  struct sigaction sa;
  sa.sa_handler = SIG_DFL;
  sa.sa_flags = 0;
  sigemptyset(&sa.sa_mask);
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sig == SIGKILL || sig == SIGSTOP) continue;
    sigaction(sig, &sa, nullptr);
  }
  sigset_t all;
  sigemptyset(&all);
  pthread_sigmask(SIG_SETMASK, &all, nullptr);
}

void IgnoreStopSignals() {
  signal(SIGTERM, SIG_IGN);  // NOLINT(concurrency-mt-unsafe)
  signal(SIGINT, SIG_IGN);   // NOLINT(concurrency-mt-unsafe)
}

absl::StatusOr<uint64_t> ReadRssBytes(pid_t pid) {
  const std::string path = absl::StrCat("/proc/", pid, "/statm");
  ScopedFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return ErrnoToStatus(errno, path);
  char buf[128];
  ssize_t n = read(fd.get(), buf, sizeof(buf) - 1);
  if (n <= 0) return absl::NotFoundError(absl::StrCat(path, ": empty"));
  std::vector<absl::string_view> fields =
      absl::StrSplit(absl::string_view(buf, static_cast<size_t>(n)), ' ');
  uint64_t pages = 0;
  if (fields.size() < 2 || !absl::SimpleAtoi(fields[1], &pages)) {
    return absl::InternalError(absl::StrCat(path, ": unexpected format"));
  }
  return pages * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
}

}  // namespace forq::worker
