// Starts a real forqd binary for integration tests: loopback only, ports
// chosen by the kernel, a private data directory, and a ready handshake over
// a pipe (no polling, no sleeps).
#ifndef FORQ_TESTS_TESTING_FORQD_PROCESS_H_
#define FORQ_TESTS_TESTING_FORQD_PROCESS_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace forq::testing {

struct ForqdOptions {
  int workers = 2;
  // Extra command-line flags, e.g. "--durability=none".
  std::vector<std::string> flags;
  // Empty: a fresh temporary directory removed by the destructor.
  std::string data_dir;
  // How long to wait for the ready handshake. This and the other timeouts
  // of ForqdProcess count time in which the test ran (RunBudget): a stop
  // of the test and forqd together does not use them up.
  absl::Duration start_timeout = absl::Seconds(30);
};

// Owns one forqd process. Thread-compatible.
class ForqdProcess {
 public:
  static absl::StatusOr<std::unique_ptr<ForqdProcess>> Start(
      ForqdOptions options);
  ForqdProcess(const ForqdProcess&) = delete;
  ForqdProcess& operator=(const ForqdProcess&) = delete;
  // Kills (SIGKILL) and reaps a running forqd; removes an owned data dir.
  ~ForqdProcess();

  const std::string& grpc_address() const { return grpc_address_; }
  const std::string& http_address() const { return http_address_; }
  int grpc_port() const { return grpc_port_; }
  int http_port() const { return http_port_; }
  int pid() const { return pid_; }
  const std::string& data_dir() const { return data_dir_; }
  const std::string& log_path() const { return log_path_; }

  // Sends `sig` and reaps the process; returns its wait status.
  absl::StatusOr<int> Kill(int sig);
  // SIGTERM, then waits up to `timeout` for exit; returns the wait status.
  absl::StatusOr<int> Stop(absl::Duration timeout = absl::Seconds(30));
  // Waits up to `timeout` for forqd to exit on its own; returns its wait
  // status (DeadlineExceeded if it is still running).
  absl::StatusOr<int> AwaitExit(absl::Duration timeout);
  // Starts forqd again on the same data dir and the same ports.
  absl::Status Restart();
  // Last lines of forqd's log, for failure messages.
  std::string LogTail(int lines = 40) const;

 private:
  explicit ForqdProcess(ForqdOptions options) : options_(std::move(options)) {}
  absl::Status Spawn();

  ForqdOptions options_;
  bool owns_data_dir_ = false;
  std::string data_dir_;
  std::string log_path_;
  std::string grpc_address_;
  std::string http_address_;
  int grpc_port_ = 0;
  int http_port_ = 0;
  int pid_ = -1;
};

// Path of the built forqd / forq binaries.
std::string ForqdBinary();
std::string ForqBinary();

// Runs `argv` (argv[0] = path), feeding `stdin_data`; returns exit code and
// captured stdout/stderr. Kills the child after `timeout` of time in which
// the test ran (RunBudget).
struct CommandResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};
absl::StatusOr<CommandResult> RunCommand(
    const std::vector<std::string>& argv, const std::string& stdin_data = "",
    absl::Duration timeout = absl::Seconds(60));

// Creates a fresh directory under $TMPDIR (or /tmp).
std::string MakeTempDir(const std::string& prefix);

}  // namespace forq::testing

#endif  // FORQ_TESTS_TESTING_FORQD_PROCESS_H_
