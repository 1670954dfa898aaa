// Shared plumbing of the `forq` command-line client: global options, the
// lazily connected client, output helpers and exit codes. Each command group
// lives in its own cmd_*.cc and registers its subcommands on the app.
#ifndef FORQ_CLIENT_CLI_CLI_H_
#define FORQ_CLIENT_CLI_CLI_H_

#include <memory>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/message.h"

#include "forq/client.h"

namespace forq::cli {

// Exit codes (documented in docs/cli.md).
inline constexpr int kExitOk = 0;
// The task ended FAILED, DEAD or CANCELLED (or a lock/queue op said no).
inline constexpr int kExitTaskFailed = 1;
// Timeout, bad usage, connection or server error.
inline constexpr int kExitError = 2;

struct CliContext {
  // Set by the global flags (--addr, --token, --tls, --ca, ...). A forqd
  // that is not there is reported at once, not waited for.
  ClientOptions options{.wait_for_server = false};
  bool json = false;
  int exit_code = kExitOk;

  // Connects on first use; later calls return the same client.
  absl::StatusOr<Client*> client();

 private:
  std::unique_ptr<Client> client_;
};

// Prints "forq: <message>" to stderr and returns kExitError.
int Fail(const absl::Status& status);
int Fail(absl::string_view message);
// For a failed CliContext::client(): an unreachable forqd (Unavailable) is
// "forq: cannot reach forqd at ADDR (REASON); is forqd running? (--addr /
// FORQ_ADDR)"; any other error as Fail(status).
int FailConnect(const absl::Status& status);

// Runs `fn(Client&)` with the connected client; if connecting fails, prints
// the error and sets ctx.exit_code instead.
template <typename Fn>
void WithClient(CliContext& ctx, Fn&& fn) {
  absl::StatusOr<Client*> client = ctx.client();
  if (!client.ok()) {
    ctx.exit_code = FailConnect(client.status());
    return;
  }
  fn(**client);
}

// Returns the payload named by a PAYLOAD argument: "-" reads all of stdin,
// anything else is taken literally.
std::string ReadPayload(const std::string& arg);
// Prints `msg` as one line of JSON (protobuf JSON mapping) to stdout.
void PrintJson(const google::protobuf::Message& msg);
// True when stdout is a terminal (progress lines only then).
bool StdoutIsTty();
// Adds --json to a subcommand, bound to ctx.json.
void AddJsonFlag(CLI::App* cmd, CliContext& ctx);

// Command groups.
void AddTaskCommands(CLI::App& app, CliContext& ctx);
void AddPoolCommands(CLI::App& app, CliContext& ctx);
void AddManagerCommands(CLI::App& app, CliContext& ctx);
void AddMapCommands(CLI::App& app, CliContext& ctx);
// Adds examples and exit codes to the help of the app and its commands; call
// after every command is registered.
void AddHelpFooters(CLI::App& app);

}  // namespace forq::cli

#endif  // FORQ_CLIENT_CLI_CLI_H_
