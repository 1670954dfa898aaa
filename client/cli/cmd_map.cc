// forq map: imap / imap_unordered from the shell, one payload per stdin line.
#include <iostream>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"

#include "client/cli/cli.h"
#include "forq/map.h"

namespace forq::cli {
namespace {

struct MapOpts {
  std::string kind, queue;
  bool unordered = false, fail_fast = false, index = false;
  int window = 0, priority = 0, max_attempts = 0;
  double timeout = 0;
};

v1::MapResult ToProto(const MapItem& item) {
  v1::MapResult r;
  r.set_index(item.index);
  r.set_task_id(item.task_id);
  r.set_state(item.state);
  r.set_result(item.result);
  *r.mutable_error() = item.error;
  r.set_attempt(item.attempt);
  return r;
}

int RunMap(CliContext& ctx, const MapOpts& o) {
  absl::StatusOr<Client*> client = ctx.client();
  if (!client.ok()) return FailConnect(client.status());
  MapOptions mo;
  mo.queue = o.queue;
  mo.priority = o.priority;
  mo.max_attempts = o.max_attempts;
  mo.timeout = absl::Seconds(o.timeout);
  mo.window = o.window;
  mo.fail_fast = o.fail_fast;
  // Lines are read only as the window opens, so a huge or endless stdin
  // never sits in memory.
  MapSource lines([]() -> std::optional<MapInput> {
    std::string line;
    if (!std::getline(std::cin, line)) return std::nullopt;
    return MapInput(std::move(line));
  });
  MapStream stream = o.unordered
                         ? (*client)->MapUnordered(o.kind, std::move(lines), mo)
                         : (*client)->Map(o.kind, std::move(lines), mo);
  int rc = kExitOk;
  for (const MapItem& item : stream) {
    if (ctx.json) {
      PrintJson(ToProto(item));
    } else {
      if (o.index) std::cout << item.index << "\t";
      std::cout << item.result;
      if (item.result.empty() || item.result.back() != '\n') std::cout << "\n";
    }
    // Line-at-a-time output, so `forq map ... | head` sees results live.
    std::cout.flush();
    if (!item.ok()) {
      rc = kExitTaskFailed;
      if (!ctx.json) {
        std::cerr << "forq: item " << item.index << " (task "
                  << (item.task_id.empty() ? "-" : item.task_id)
                  << "): " << item.status.message() << "\n";
      }
    }
  }
  absl::Status s = stream.status();
  if (!s.ok()) {
    // A fail_fast stop already reported its item.
    if (o.fail_fast && s.code() == absl::StatusCode::kAborted) {
      return kExitTaskFailed;
    }
    return Fail(s);
  }
  return rc;
}

}  // namespace

void AddMapCommands(CLI::App& app, CliContext& ctx) {
  auto* cmd = app.add_subcommand(
      "map",
      "Run KIND once per stdin line (imap / imap_unordered); print one "
      "result line per input");
  cmd->footer(
      "Each stdin line is one payload. Results are printed one per line, in\n"
      "input order (or as they complete with --unordered). A failed item\n"
      "prints an empty line and its error on stderr.\n"
      "Exit: 0 all succeeded, 1 some item failed, 2 error.\n"
      "Example: seq 1 20 | forq map sleep --unordered --window 8");
  auto o = std::make_shared<MapOpts>();
  cmd->add_option("KIND", o->kind, "Handler kind (echo, sleep, sha256, ...)")
      ->required();
  cmd->add_flag("--unordered,-u", o->unordered,
                "Print results as they complete (imap_unordered)");
  cmd->add_option("--window,-W", o->window,
                  absl::StrCat("Inputs in flight at most, 1..10000 (default ",
                               kDefaultMapWindow, ")"))
      ->check(CLI::Range(0, kMaxMapWindow));
  cmd->add_flag("--fail-fast", o->fail_fast,
                "Stop at the first failed item (exit 1)");
  cmd->add_flag("--index", o->index, "Prefix each result with INDEX<TAB>");
  cmd->add_option("--queue,-q", o->queue, "Queue (default: default)");
  cmd->add_option("--priority,-p", o->priority,
                  "Higher runs first, [-1000, 1000]");
  cmd->add_option("--max-attempts", o->max_attempts,
                  "Attempts per input for retryable failures");
  cmd->add_option("--timeout", o->timeout, "Hard timeout per attempt, seconds");
  AddJsonFlag(cmd, ctx);
  cmd->callback([&ctx, o] { ctx.exit_code = RunMap(ctx, *o); });
}

}  // namespace forq::cli
