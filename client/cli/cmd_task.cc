// forq submit / wait / get / cancel / retry / list / watch.
#include <unistd.h>

#include <cstdio>
#include <functional>
#include <iostream>
#include <map>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"

#include "client/cli/cli.h"
#include "forq/v1/task.grpc.pb.h"

namespace forq::cli {
namespace {

// Prints a task's result (or error) and returns the exit code for it.
int ReportOutcome(const CliContext& ctx, const v1::Task& task, bool done) {
  if (ctx.json) {
    PrintJson(task);
  } else if (done && task.state() == v1::SUCCEEDED) {
    std::cout << task.result();
    if (task.result().empty() || task.result().back() != '\n') {
      std::cout << "\n";
    }
  }
  if (!done) {
    std::cerr << "forq: timed out: task " << task.id() << " is "
              << StateName(task.state()) << "\n";
    return kExitError;
  }
  if (task.state() == v1::SUCCEEDED) return kExitOk;
  if (!ctx.json) {
    std::cerr << "forq: task " << task.id() << " " << StateName(task.state())
              << ": " << task.error().message() << "\n";
  }
  return kExitTaskFailed;
}

// One wait of at most the given time: the task as it stands then.
using WaitCall =
    std::function<absl::StatusOr<v1::WaitTaskResponse>(absl::Duration)>;

// Calls `wait` until the task is terminal or `timeout_s` (0: none) ran
// out, drawing a progress line on stderr when it is a terminal.
int WaitAndReport(CliContext& ctx, const WaitCall& wait, double timeout_s) {
  const bool tty = isatty(STDERR_FILENO) == 1 && StdoutIsTty();
  const absl::Time start = absl::Now();
  const absl::Time deadline =
      timeout_s > 0 ? start + absl::Seconds(timeout_s) : absl::InfiniteFuture();
  // Short slices only when a progress line is drawn; Wait returns at once
  // when the task finishes, so slicing costs no latency.
  const absl::Duration slice =
      tty ? absl::Milliseconds(500) : absl::Seconds(60);
  while (true) {
    absl::Duration left = deadline - absl::Now();
    if (left < absl::ZeroDuration()) left = absl::ZeroDuration();
    absl::StatusOr<v1::WaitTaskResponse> r = wait(std::min(left, slice));
    if (!r.ok()) return Fail(r.status());
    bool timed_out = !r->done() && absl::Now() >= deadline;
    if (tty) {
      const v1::Task& t = r->task();
      std::string line = absl::StrFormat(
          "\r%6.1fs %-9s", absl::ToDoubleSeconds(absl::Now() - start),
          std::string(StateName(t.state())));
      if (t.progress() > 0) {
        absl::StrAppendFormat(&line, " %3.0f%% %s", t.progress() * 100,
                              t.progress_message());
      }
      std::cerr << line << "\x1b[K" << (r->done() || timed_out ? "\n" : "")
                << std::flush;
    }
    if (r->done() || timed_out) return ReportOutcome(ctx, r->task(), r->done());
  }
}

// submit --wait: the first wait is the submit itself (one call, and forqd
// stores a task that finishes within it once); later ones are Waits.
int SubmitAndReport(CliContext& ctx, Client& client, const v1::TaskSpec& spec,
                    double timeout_s) {
  std::string id;
  return WaitAndReport(
      ctx,
      [&](absl::Duration d) -> absl::StatusOr<v1::WaitTaskResponse> {
        if (!id.empty()) return client.Wait(id, d);
        absl::StatusOr<v1::SubmitResponse> r = client.SubmitAndWait(spec, d);
        if (!r.ok()) return r.status();
        id = r->task().id();
        v1::WaitTaskResponse w;
        *w.mutable_task() = std::move(*r->mutable_task());
        w.set_done(r->done());
        return w;
      },
      timeout_s);
}

void PrintTaskLine(const v1::Task& t) {
  std::cout << absl::StrFormat("%s  %-9s  %-12s  %-12s  attempt %d", t.id(),
                               std::string(StateName(t.state())), t.queue(),
                               t.kind(), t.attempt());
  if (!t.error().message().empty() && t.state() != v1::SUCCEEDED) {
    std::cout << "  error: " << t.error().message();
  }
  std::cout << "\n";
}

void PrintTask(const CliContext& ctx, const v1::Task& t) {
  if (ctx.json) {
    PrintJson(t);
    return;
  }
  PrintTaskLine(t);
}

}  // namespace

void AddTaskCommands(CLI::App& app, CliContext& ctx) {
  // submit
  {
    auto* cmd = app.add_subcommand("submit", "Submit a task; print its id");
    struct Opts {
      std::string kind, payload, queue, key;
      int priority = 0, max_attempts = 0;
      double timeout = 0, delay = 0, wait_timeout = 0;
      std::vector<std::string> labels;
      bool wait = false;
    };
    auto o = std::make_shared<Opts>();
    cmd->add_option("KIND", o->kind, "Handler kind (echo, sleep, primes, ...)")
        ->required();
    cmd->add_option("PAYLOAD", o->payload, "Payload text, or - for stdin");
    cmd->add_option("--queue,-q", o->queue, "Queue (default: default)");
    cmd->add_option("--priority,-p", o->priority,
                    "Higher runs first, [-1000, 1000]");
    cmd->add_option("--max-attempts", o->max_attempts,
                    "Attempts for retryable failures (default: server's)");
    cmd->add_option("--timeout", o->timeout,
                    "Hard timeout per attempt, seconds");
    cmd->add_option("--delay", o->delay, "Run no earlier than in N seconds");
    cmd->add_option("--idempotency-key", o->key,
                    "A second submit with this key returns the first task");
    cmd->add_option("--label", o->labels, "key=value label (repeatable)");
    cmd->add_flag("--wait,-w", o->wait,
                  "Wait and print the result; exit 0 only if SUCCEEDED");
    cmd->add_option("--wait-timeout", o->wait_timeout,
                    "With --wait: give up after N seconds (exit 2)");
    AddJsonFlag(cmd, ctx);
    cmd->callback([&ctx, o] {
      WithClient(ctx, [&](Client& client) {
        SubmitOptions so;
        so.queue = o->queue;
        so.priority = o->priority;
        so.max_attempts = o->max_attempts;
        so.timeout = absl::Seconds(o->timeout);
        so.delay = absl::Seconds(o->delay);
        so.idempotency_key = o->key;
        for (const std::string& l : o->labels) {
          std::pair<std::string, std::string> kv =
              absl::StrSplit(l, absl::MaxSplits('=', 1));
          so.labels[kv.first] = kv.second;
        }
        if (o->wait) {
          ctx.exit_code = SubmitAndReport(
              ctx, client, MakeTaskSpec(o->kind, ReadPayload(o->payload), so),
              o->wait_timeout);
          return;
        }
        absl::StatusOr<TaskFuture> f =
            client.Submit(o->kind, ReadPayload(o->payload), so);
        if (!f.ok()) {
          ctx.exit_code = Fail(f.status());
          return;
        }
        if (ctx.json) {
          PrintJson(f->submitted());
        } else {
          std::cout << f->id() << "\n";
        }
      });
    });
  }
  // wait
  {
    auto* cmd = app.add_subcommand(
        "wait",
        "Wait for a task; print its result (exit 0 SUCCEEDED, 1 "
        "FAILED/DEAD/CANCELLED, 2 timeout/error)");
    auto id = std::make_shared<std::string>();
    auto timeout = std::make_shared<double>(0);
    cmd->add_option("ID", *id, "Task id")->required();
    cmd->add_option("--timeout,-t", *timeout, "Seconds; 0 = no limit");
    AddJsonFlag(cmd, ctx);
    cmd->callback([&ctx, id, timeout] {
      WithClient(ctx, [&](Client& client) {
        ctx.exit_code = WaitAndReport(
            ctx, [&](absl::Duration d) { return client.Wait(*id, d); },
            *timeout);
      });
    });
  }
  // get / cancel / retry: one id in, one task out.
  struct IdCommand {
    const char* name;
    const char* help;
    absl::StatusOr<v1::Task> (Client::*fn)(absl::string_view);
  };
  for (const IdCommand& c :
       {IdCommand{"get", "Show a task", &Client::Get},
        IdCommand{"cancel", "Cancel a queued or running task", &Client::Cancel},
        IdCommand{"retry", "Re-queue a DEAD, FAILED or CANCELLED task",
                  &Client::Retry}}) {
    auto* cmd = app.add_subcommand(c.name, c.help);
    auto id = std::make_shared<std::string>();
    cmd->add_option("ID", *id, "Task id")->required();
    AddJsonFlag(cmd, ctx);
    auto fn = c.fn;
    cmd->callback([&ctx, id, fn] {
      WithClient(ctx, [&](Client& client) {
        absl::StatusOr<v1::Task> t = ((client).*fn)(*id);
        if (!t.ok()) {
          ctx.exit_code = Fail(t.status());
          return;
        }
        PrintTask(ctx, *t);
      });
    });
  }
  // list
  {
    auto* cmd = app.add_subcommand("list", "List tasks (newest last)");
    struct Opts {
      std::string state, queue, kind, page_token;
      int limit = 100;
      bool all = false;
    };
    auto o = std::make_shared<Opts>();
    cmd->add_option("--state,-s", o->state,
                    "queued, running, succeeded, failed, dead, cancelled");
    cmd->add_option("--queue,-q", o->queue, "Only this queue");
    cmd->add_option("--kind,-k", o->kind, "Only this kind");
    cmd->add_option("--limit,-n", o->limit, "Page size (max 1000)");
    cmd->add_option("--page-token", o->page_token, "Continue a listing");
    cmd->add_flag("--all", o->all, "Follow page tokens to the end");
    AddJsonFlag(cmd, ctx);
    cmd->callback([&ctx, o] {
      WithClient(ctx, [&](Client& client) {
        v1::ListTasksRequest req;
        if (!o->state.empty()) {
          absl::StatusOr<v1::TaskState> s = ParseState(o->state);
          if (!s.ok()) {
            ctx.exit_code = Fail(s.status());
            return;
          }
          req.set_state(*s);
        }
        req.set_queue(o->queue);
        req.set_kind(o->kind);
        req.set_page_size(o->limit);
        req.set_page_token(o->page_token);
        while (true) {
          absl::StatusOr<v1::ListTasksResponse> r = client.List(req);
          if (!r.ok()) {
            ctx.exit_code = Fail(r.status());
            return;
          }
          if (ctx.json) {
            PrintJson(*r);
          } else {
            for (const v1::Task& t : r->tasks()) PrintTaskLine(t);
          }
          if (!o->all || r->next_page_token().empty()) {
            if (!ctx.json && !r->next_page_token().empty()) {
              std::cerr << "more: --page-token " << r->next_page_token()
                        << "\n";
            }
            return;
          }
          req.set_page_token(r->next_page_token());
        }
      });
    });
  }
  // watch
  {
    auto* cmd = app.add_subcommand(
        "watch", "Stream a task's state and progress (or a queue's events)");
    auto id = std::make_shared<std::string>();
    auto queue = std::make_shared<std::string>();
    cmd->add_option("ID", *id, "Task id");
    cmd->add_option("--queue,-q", *queue, "Watch a queue instead (* = all)");
    AddJsonFlag(cmd, ctx);
    cmd->callback([&ctx, id, queue] {
      WithClient(ctx, [&](Client& client) {
        auto stub = v1::TaskService::NewStub(client.channel());
        grpc::ClientContext gctx;
        v1::WatchRequest req;
        req.set_task_id(*id);
        req.set_queue(*queue);
        auto reader = stub->Watch(&gctx, req);
        v1::TaskEvent e;
        v1::Task last;
        while (reader->Read(&e)) {
          last = e.task();
          if (ctx.json) {
            PrintJson(e);
            continue;
          }
          const v1::Task& t = e.task();
          std::cout << absl::StrFormat(
              "%s  %s  %-9s",
              absl::FormatTime("%H:%M:%E3S", absl::Now(),
                               absl::LocalTimeZone()),
              t.id(), std::string(StateName(t.state())));
          if (e.type() == v1::TaskEvent::PROGRESS) {
            std::cout << absl::StrFormat("  %3.0f%% %s", t.progress() * 100,
                                         t.progress_message());
          } else if (t.state() == v1::SUCCEEDED) {
            std::cout << "  result: " << t.result().substr(0, 200);
          } else if (!t.error().message().empty()) {
            std::cout << "  error: " << t.error().message();
          }
          std::cout << std::endl;
        }
        grpc::Status s = reader->Finish();
        if (!s.ok()) {
          ctx.exit_code = Fail(FromGrpcStatus(s));
          return;
        }
        if (!id->empty() && last.state() != v1::SUCCEEDED) {
          ctx.exit_code = kExitTaskFailed;
        }
      });
    });
  }
}

}  // namespace forq::cli
