// forq: command-line client of forqd. See `forq --help` and docs/cli.md.
#include <unistd.h>

#include <cstdlib>
#include <iostream>
#include <iterator>

#include "absl/strings/str_cat.h"
#include "google/protobuf/util/json_util.h"

#include "client/cli/cli.h"
#include "common/release_build.h"

namespace forq::cli {

absl::StatusOr<Client*> CliContext::client() {
  if (client_ == nullptr) {
    absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(options);
    if (!c.ok()) return c.status();
    client_ = std::move(*c);
  }
  return client_.get();
}

int Fail(const absl::Status& status) {
  std::cerr << "forq: " << absl::StatusCodeToString(status.code()) << ": "
            << status.message() << std::endl;
  return kExitError;
}

int FailConnect(const absl::Status& status) {
  if (status.code() != absl::StatusCode::kUnavailable) return Fail(status);
  return Fail(absl::StrCat(status.message(),
                           "; is forqd running? (--addr / FORQ_ADDR)"));
}

int Fail(absl::string_view message) {
  std::cerr << "forq: " << message << std::endl;
  return kExitError;
}

std::string ReadPayload(const std::string& arg) {
  if (arg != "-") return arg;
  return std::string(std::istreambuf_iterator<char>(std::cin),
                     std::istreambuf_iterator<char>());
}

void PrintJson(const google::protobuf::Message& msg) {
  std::string out;
  google::protobuf::util::JsonPrintOptions opts;
  opts.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(msg, &out, opts);
  std::cout << out << "\n";
}

bool StdoutIsTty() { return isatty(STDOUT_FILENO) == 1; }

void AddJsonFlag(CLI::App* cmd, CliContext& ctx) {
  cmd->add_flag("--json", ctx.json, "Print JSON (protobuf JSON mapping)");
}

}  // namespace forq::cli

int main(int argc, char** argv) {
  forq::SkipDeadlockDetectionInReleaseBuilds();
  forq::cli::CliContext ctx;
  CLI::App app{
      "forq: submit and manage tasks on a forqd server.\n"
      "Exit codes: 0 ok, 1 task failed/dead/cancelled, 2 timeout or error."};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "Show help for every command");
  app.add_option("--addr", ctx.options.address,
                 "forqd gRPC address (host:port)")
      ->envname("FORQ_ADDR")
      ->capture_default_str();
  app.add_option("--token", ctx.options.token,
                 "Bearer token for a forqd with --auth_tokens_file")
      ->envname("FORQ_TOKEN");
  app.add_flag("--tls", ctx.options.tls,
               "Use TLS (implied by --ca, --cert or --key)")
      ->envname("FORQ_TLS");
  app.add_option("--ca", ctx.options.ca_file,
                 "PEM CA bundle that verifies forqd's certificate (default: "
                 "system roots)")
      ->envname("FORQ_CA");
  app.add_option("--cert", ctx.options.cert_file,
                 "PEM client certificate, for a forqd with --tls_client_ca")
      ->envname("FORQ_CERT");
  app.add_option("--key", ctx.options.key_file, "PEM private key of --cert")
      ->envname("FORQ_KEY");
  app.add_option("--tls-server-name", ctx.options.tls_server_name,
                 "Name to verify in forqd's certificate (default: the host "
                 "of --addr)")
      ->envname("FORQ_TLS_SERVER_NAME");
  forq::cli::AddTaskCommands(app, ctx);
  forq::cli::AddPoolCommands(app, ctx);
  forq::cli::AddManagerCommands(app, ctx);
  forq::cli::AddMapCommands(app, ctx);
  forq::cli::AddHelpFooters(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : forq::cli::kExitError;
  }
  // The command has finished its calls and written its output. Tearing
  // down the Client and gRPC (cancelling the channel, joining gRPC's
  // threads) would cost a one-shot command about as much as its call, so
  // the process ends here; the kernel closes the connection.
  std::cout.flush();
  std::cerr.flush();
  std::_Exit(ctx.exit_code);
}
