// forq workers / drain / resume.
#include <iostream>

#include "absl/strings/str_format.h"

#include "client/cli/cli.h"

namespace forq::cli {
namespace {

std::string WorkerStateName(v1::WorkerState s) {
  switch (s) {
    case v1::STARTING:
      return "starting";
    case v1::IDLE:
      return "idle";
    case v1::BUSY:
      return "busy";
    case v1::RESPAWNING:
      return "respawning";
    default:
      return "unknown";
  }
}

void PrintPool(const CliContext& ctx, const v1::PoolStatus& p) {
  if (ctx.json) {
    PrintJson(p);
    return;
  }
  std::cout << absl::StrFormat(
      "pool: %d workers, supervisor pid %d, forqd pid %d%s\n", p.size(),
      p.supervisor_pid(), p.server_pid(), p.draining() ? ", DRAINING" : "");
  std::cout << absl::StrFormat("%-4s %-8s %-10s %-8s %-10s %-8s %s\n", "SLOT",
                               "PID", "STATE", "DONE", "RSS_MIB", "RESTARTS",
                               "TASK");
  for (const v1::Worker& w : p.workers()) {
    std::cout << absl::StrFormat("%-4d %-8d %-10s %-8d %-10.1f %-8d %s\n",
                                 w.slot(), w.pid(), WorkerStateName(w.state()),
                                 w.tasks_done(),
                                 static_cast<double>(w.rss_bytes()) / (1 << 20),
                                 w.restarts(), w.current_task_id());
  }
}

}  // namespace

void AddPoolCommands(CLI::App& app, CliContext& ctx) {
  {
    auto* cmd = app.add_subcommand("workers", "Show the worker pool");
    AddJsonFlag(cmd, ctx);
    cmd->callback([&ctx] {
      WithClient(ctx, [&](Client& client) {
        absl::StatusOr<v1::PoolStatus> p = client.GetPool();
        if (!p.ok()) {
          ctx.exit_code = Fail(p.status());
          return;
        }
        PrintPool(ctx, *p);
      });
    });
  }
  {
    auto* cmd = app.add_subcommand(
        "drain",
        "Stop dispatching and wait for running tasks (Pool.close()+join()); "
        "exit 0 when drained, 2 on timeout");
    auto timeout = std::make_shared<double>(60);
    cmd->add_option("--timeout,-t", *timeout, "Seconds to wait")
        ->capture_default_str();
    AddJsonFlag(cmd, ctx);
    cmd->callback([&ctx, timeout] {
      WithClient(ctx, [&](Client& client) {
        absl::StatusOr<v1::DrainResponse> r =
            client.Drain(absl::Seconds(*timeout));
        if (!r.ok()) {
          ctx.exit_code = Fail(r.status());
          return;
        }
        if (ctx.json) {
          PrintJson(*r);
        } else if (r->drained()) {
          std::cout << "drained\n";
        } else {
          std::cout << "not drained: " << r->running() << " tasks running\n";
        }
        if (!r->drained()) ctx.exit_code = kExitError;
      });
    });
  }
  {
    auto* cmd = app.add_subcommand("resume", "Undo drain: dispatch again");
    AddJsonFlag(cmd, ctx);
    cmd->callback([&ctx] {
      WithClient(ctx, [&](Client& client) {
        absl::StatusOr<v1::PoolStatus> p = client.Resume();
        if (!p.ok()) {
          ctx.exit_code = Fail(p.status());
          return;
        }
        PrintPool(ctx, *p);
      });
    });
  }
}

}  // namespace forq::cli
