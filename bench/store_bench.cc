// Store-level write throughput: how many tasks per second the Store
// acknowledges (done callback with OK) for single-task and 100-task Insert
// calls from 4 and 64 concurrent callers, in each durability mode. Each
// caller waits for its ack before the next call, as a unary Submit does, so
// the figures show what group commit buys. No gRPC involved.
//
//   store_bench [--seconds=S] [--runs=N] [--dir=/path] [--kind=sqlite]
//               [--only=sync/1/64]
#include <stdlib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "spdlog/spdlog.h"

#include "common/notification.h"
#include "server/store/store.h"

ABSL_FLAG(double, seconds, 2, "length of each run");
ABSL_FLAG(int, runs, 3, "runs of each case");
ABSL_FLAG(std::string, kind, "sqlite", "store: sqlite or memory");
ABSL_FLAG(std::string, dir, "/tmp/forq_store_bench", "data directory");
ABSL_FLAG(std::string, only, "",
          "one case, durability/tasks per call/callers (e.g. sync/1/64)");

namespace forq::server {
namespace {

struct Config {
  Durability durability;
  int threads;
  int batch;
};

struct Result {
  double tasks_per_s = 0;
  double p50_us = 0;
  double p99_us = 0;
  int64_t failures = 0;
};

const char* Name(Durability d) {
  switch (d) {
    case Durability::kSync:
      return "sync";
    case Durability::kBatch:
      return "batch";
    case Durability::kNone:
      return "none";
  }
  return "?";
}

std::atomic<uint64_t> next_id{0};

v1::Task MakeTask() {
  v1::Task task;
  // Increasing ids, like the server's time-sortable ones.
  task.set_id(absl::StrFormat("%016x", next_id.fetch_add(1)));
  task.set_queue("default");
  task.set_kind("echo");
  task.set_payload(std::string(64, 'p'));
  task.set_state(v1::QUEUED);
  task.set_max_attempts(5);
  task.mutable_created_at()->set_seconds(1764000000);
  return task;
}

Result RunOnce(const Config& config, const std::string& kind,
               const std::string& dir, double seconds) {
  std::filesystem::remove_all(dir);
  StoreOptions options;
  options.kind = kind;
  options.data_dir = dir;
  options.durability = config.durability;
  auto opened = OpenStore(options);
  if (!opened.ok()) {
    std::fprintf(stderr, "open: %s\n", opened.status().ToString().c_str());
    std::_Exit(1);
  }
  std::unique_ptr<Store> store = std::move(opened).value();

  std::atomic<bool> stop{false};
  std::atomic<int64_t> stored{0};
  std::atomic<int64_t> failures{0};
  std::vector<std::vector<double>> latencies(config.threads);
  std::vector<std::thread> threads;
  threads.reserve(config.threads);
  Notification start;
  for (int t = 0; t < config.threads; ++t) {
    threads.emplace_back([&, t] {
      start.WaitForNotification();
      while (!stop.load(std::memory_order_relaxed)) {
        std::vector<v1::Task> tasks;
        tasks.reserve(config.batch);
        for (int i = 0; i < config.batch; ++i) {
          tasks.push_back(MakeTask());
        }
        Notification acked;
        bool ok = false;
        const auto begin = std::chrono::steady_clock::now();
        store->Insert(
            std::move(tasks),
            [&](const absl::StatusOr<std::vector<InsertResult>>& result) {
              ok = result.ok();
              acked.Notify();
            });
        acked.WaitForNotification();
        const auto end = std::chrono::steady_clock::now();
        latencies[t].push_back(
            std::chrono::duration<double, std::micro>(end - begin).count());
        if (ok) {
          stored.fetch_add(config.batch, std::memory_order_relaxed);
        } else {
          failures.fetch_add(1, std::memory_order_relaxed);
        }
      }
    });
  }
  const auto begin = std::chrono::steady_clock::now();
  start.Notify();
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop.store(true);
  for (auto& thread : threads) {
    thread.join();
  }
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - begin)
          .count();
  store->Close();

  std::vector<double> all;
  for (auto& l : latencies) {
    all.insert(all.end(), l.begin(), l.end());
  }
  std::sort(all.begin(), all.end());
  Result result;
  result.tasks_per_s = stored.load() / elapsed;
  result.failures = failures.load();
  if (!all.empty()) {
    result.p50_us = all[all.size() / 2];
    result.p99_us = all[std::min(all.size() - 1, all.size() * 99 / 100)];
  }
  return result;
}

int Main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "store throughput and ack latency per durability, batch size and "
      "concurrent callers");
  absl::ParseCommandLine(argc, argv);
  const double seconds = absl::GetFlag(FLAGS_seconds);
  const int runs = absl::GetFlag(FLAGS_runs);
  const std::string kind = absl::GetFlag(FLAGS_kind);
  const std::string dir = absl::GetFlag(FLAGS_dir);
  // e.g. "sync/1/64": durability/tasks per call/callers.
  const std::string only = absl::GetFlag(FLAGS_only);
  if (seconds <= 0 || runs < 1) {
    std::fprintf(stderr,
                 "store_bench: --seconds and --runs must be positive\n");
    return 2;
  }
  spdlog::set_level(spdlog::level::warn);
  std::printf(
      "| durability | tasks/call | callers | tasks/s min | median | max | "
      "ack p50 µs | ack p99 µs | failed calls |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|\n");
  for (Durability d :
       {Durability::kSync, Durability::kBatch, Durability::kNone}) {
    for (int batch : {1, 100}) {
      for (int threads : {4, 64}) {
        if (!only.empty() &&
            only != absl::StrCat(Name(d), "/", batch, "/", threads)) {
          continue;
        }
        std::vector<Result> results;
        results.reserve(runs);
        for (int r = 0; r < runs; ++r) {
          results.push_back(RunOnce({d, threads, batch}, kind, dir, seconds));
        }
        std::sort(results.begin(), results.end(),
                  [](const Result& a, const Result& b) {
                    return a.tasks_per_s < b.tasks_per_s;
                  });
        const Result& median = results[results.size() / 2];
        int64_t failed = 0;
        for (const auto& r : results) {
          failed += r.failures;
        }
        std::printf(
            "| %s | %d | %d | %.0f | %.0f | %.0f | %.0f | %.0f | %lld |\n",
            Name(d), batch, threads, results.front().tasks_per_s,
            median.tasks_per_s, results.back().tasks_per_s, median.p50_us,
            median.p99_us, static_cast<long long>(failed));
        std::fflush(stdout);
      }
    }
  }
  std::filesystem::remove_all(dir);
  return 0;
}

}  // namespace
}  // namespace forq::server

int main(int argc, char** argv) { return forq::server::Main(argc, argv); }
