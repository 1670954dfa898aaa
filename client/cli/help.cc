// Examples and exit codes appended to `forq --help` and each command's help.
#include <map>
#include <string>

#include "client/cli/cli.h"

namespace forq::cli {

void AddHelpFooters(CLI::App& app) {
  app.footer(
      "Run `forq COMMAND --help` for a command's flags and examples.\n"
      "The server address comes from --addr or $FORQ_ADDR.\n"
      "Exit codes: 0 ok; 1 a task ended FAILED, DEAD or CANCELLED (or a\n"
      "Manager lock/queue operation said no); 2 timeout, bad usage,\n"
      "connection or server error. Reference: docs/cli.md.\n"
      "\n"
      "Examples:\n"
      "  forq submit primes 1000000 --wait\n"
      "  seq 1 20 | forq map sleep --unordered\n"
      "  forq list --state dead\n"
      "  forq workers");
  static const auto* kFooters = new std::map<std::string, std::string>{
      {"submit",
       "Prints the new task id (with --wait: the result, exit 0/1/2 as for\n"
       "`forq wait`). With --wait on a terminal, a progress line (elapsed,\n"
       "state, progress reported by the task) is drawn on stderr.\n"
       "Examples:\n"
       "  forq submit echo hello\n"
       "  forq submit sleep 500 --wait --wait-timeout 10\n"
       "  cat input.bin | forq submit sha256 - --queue hashing --json"},
      {"wait",
       "Exit: 0 SUCCEEDED, 1 FAILED/DEAD/CANCELLED, 2 timeout or error.\n"
       "Example: forq wait 01HV... --timeout 30"},
      {"get", "Example: forq get 01HV... --json"},
      {"cancel",
       "A QUEUED task is cancelled at once; a RUNNING one is asked to stop\n"
       "and killed after a grace period. Error (exit 2) for a finished task.\n"
       "Example: forq cancel 01HV..."},
      {"retry",
       "Gives a DEAD, FAILED or CANCELLED task fresh attempts.\n"
       "Example: forq list --state dead --json; forq retry 01HV..."},
      {"list",
       "Examples:\n"
       "  forq list --state running\n"
       "  forq list --queue emails --kind send --all --json"},
      {"watch",
       "Streams until the task is terminal (exit 0 only if SUCCEEDED), or\n"
       "forever for --queue.\n"
       "Examples: forq watch 01HV...; forq watch --queue '*'"},
      {"workers",
       "Columns: slot, pid, state, tasks done, RSS, restarts, task."},
      {"drain",
       "Queued tasks stay queued; `forq resume` dispatches again.\n"
       "Example: forq drain --timeout 120 && systemctl restart my-app"},
      {"resume", "Example: forq resume"},
  };
  for (CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) {
    auto it = kFooters->find(sub->get_name());
    if (it != kFooters->end() && sub->get_footer().empty()) {
      sub->footer(it->second);
    }
  }
}

}  // namespace forq::cli
