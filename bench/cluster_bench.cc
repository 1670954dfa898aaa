// cluster_bench: forq in cluster mode on PostgreSQL, end to end, with 1, 2
// and 3 forqd nodes of 2 workers each on this machine and one private
// PostgreSQL (tests/testing/postgres_server.h).
//
//   cluster_bench [--nodes=1,2,3] [--noop=20000] [--map=20000] [--sleep=240]
//                 [--latency=200] [--fsync] [--pg_options='-c ...']
//                 [--pg_stats] [--paused]
//
// noop     echo tasks, batches of 100 spread over the nodes (8 batches in
//          flight, SubmitBatchAsync), all waited for on node 1 (WaitAll):
//          tasks/s from first submit to last result.
// map      echo tasks through one Map stream (window 256) on node 1.
// sleep    sleep(50 ms) tasks the same way as noop: execution capacity,
//          which should grow with the number of nodes (2 workers each).
// latency  (2+ nodes) sleep(20 ms) tasks run on node 2 (node 1 drained),
//          each waited for at once on node 2 (same node) and node 1 (other
//          node): p50 of the time from the task's finish to each Wait's
//          return, and of the difference (the added cross-node latency).
// fsync    the server runs with fsync=on (the tests' server has it off);
//          synchronous_commit is on either way.
// pg_stats prints PostgreSQL's busiest statements (pg_stat_statements)
//          after each node count.
// paused   also runs the no-op tasks with the nodes drained while they are
//          submitted (ingest alone), then resumed (claims and runs alone).
// connect  runs the no-op tasks through one node already running at that
//          address (started by hand, e.g. under valgrind) instead of
//          starting PostgreSQL and nodes.
// soak     instead of the above: one node with --result_ttl=5s
//          --purge_interval=1s takes --soak_rate no-op tasks/s (default
//          2000, batches of 100) for that many seconds; every 10 s, and
//          once more after the last tasks' TTL, it prints the live and dead
//          rows of `tasks` (pg_stat_user_tables.n_live_tup / n_dead_tup),
//          its size with indexes and the autovacuum count: whether the TTL
//          purge keeps the table from bloating.
// wait_queued=N (with --connect) drains the node, submits N no-op tasks
//          (they stay queued in the shared store), waits for all of them
//          for --wait_seconds (default 10; the wait times out), then
//          resumes the node and waits for them to finish: the cost of
//          many remote waits on queued tasks (run forqd under callgrind).
// keep_logs=DIR copies each node's log there (at --log_level, default
//          warn) after each node count.
#include <algorithm>
#include <deque>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

#include "forq/client.h"
#include "forq/map.h"
#include "tests/testing/forqd_process.h"
#include "tests/testing/postgres_server.h"

#include <libpq-fe.h>

ABSL_FLAG(std::vector<std::string>, nodes,
          std::vector<std::string>({"1", "2", "3"}),
          "cluster sizes to measure, comma-separated");
ABSL_FLAG(int, noop, 20000, "no-op tasks per size (SubmitBatchAsync)");
ABSL_FLAG(int, map, 20000, "no-op Map inputs per size (node 1)");
ABSL_FLAG(int, sleep, 240, "sleep(50 ms) tasks per size");
ABSL_FLAG(int, latency, 200, "cross-node Wait samples (2+ nodes)");
ABSL_FLAG(bool, fsync, false, "run PostgreSQL with fsync=on");
ABSL_FLAG(std::string, pg_options, "", "extra postgres -o options");
ABSL_FLAG(bool, pg_stats, false, "print pg_stat_statements per size");
ABSL_FLAG(bool, paused, false,
          "also submit while the nodes are drained, then resume them");
ABSL_FLAG(std::string, connect, "",
          "measure through a running forqd at HOST:PORT instead");
ABSL_FLAG(std::string, keep_logs, "", "copy each node's log into this dir");
ABSL_FLAG(std::string, log_level, "warn", "forqd --log_level of the nodes");
ABSL_FLAG(int, soak, 0, "run the TTL-purge soak for this many seconds");
ABSL_FLAG(int, soak_rate, 2000, "soak: tasks per second");
ABSL_FLAG(int, wait_queued, 0,
          "with --connect: wait until this many tasks are queued");
ABSL_FLAG(int, wait_seconds, 10, "with --wait_queued: how long at most");

namespace {

constexpr const char* kUsage =
    "cluster_bench [--nodes=1,2,3] [--noop=20000] [--map=20000] "
    "[--sleep=240]\n"
    "              [--latency=200] [--fsync] [--pg_options='-c ...'] "
    "[--pg_stats]\n"
    "              [--paused] [--connect=HOST:PORT] [--keep_logs=DIR] "
    "[--log_level=warn]\n"
    "              [--soak=SECONDS] [--soak_rate=2000]\n"
    "              [--connect=HOST:PORT --wait_queued=N "
    "[--wait_seconds=10]]\n"
    "Flags are described at the top of bench/cluster_bench.cc.\n";

using forq::Client;
using forq::testing::ForqdOptions;
using forq::testing::ForqdProcess;
using forq::testing::PostgresServer;

struct Node {
  std::unique_ptr<ForqdProcess> process;
  std::unique_ptr<Client> client;
};

// Runs `n` tasks of `kind`/`payload` through `nodes`; returns tasks/s.
// `paused`: the nodes are drained while the tasks are submitted and
// resumed after, and the submit and run phases are printed apart.
double Run(std::vector<Node>& nodes, const std::string& kind,
           const std::string& payload, int n, bool paused = false) {
  if (n <= 0) return 0;
  std::vector<std::string> ids;
  if (paused) {
    for (Node& node : nodes) (void)node.client->Drain(absl::Seconds(10));
  }
  const absl::Time start = absl::Now();
  // Up to kBatchesInFlight batches travel at once (SubmitBatchAsync), so
  // the producer does not wait for each durable ack before the next batch.
  constexpr size_t kBatchesInFlight = 8;
  std::deque<forq::PendingBatch> pending;
  auto collect = [&]() {
    auto f = pending.front().Wait();
    pending.pop_front();
    if (!f.ok()) {
      std::cerr << "submit: " << f.status() << "\n";
      return false;
    }
    for (const auto& t : *f) ids.push_back(t.id());
    return true;
  };
  for (int i = 0, node = 0; i < n; i += 100, ++node) {
    std::vector<forq::v1::TaskSpec> specs(std::min(100, n - i));
    for (auto& s : specs) {
      s.set_kind(kind);
      s.set_payload(payload);
    }
    pending.push_back(
        nodes[node % nodes.size()].client->SubmitBatchAsync(specs));
    if (pending.size() >= kBatchesInFlight && !collect()) return 0;
  }
  while (!pending.empty()) {
    if (!collect()) return 0;
  }
  if (paused) {
    const absl::Time submitted = absl::Now();
    for (Node& node : nodes) (void)node.client->Resume();
    auto done = nodes[0].client->WaitAll(ids, absl::Minutes(5));
    std::cout << absl::StrFormat(
        "paused: submit %.0f tasks/s (nodes drained), then run %.0f "
        "tasks/s\n",
        n / absl::ToDoubleSeconds(submitted - start),
        n / absl::ToDoubleSeconds(absl::Now() - submitted));
    return done.ok() ? n / absl::ToDoubleSeconds(absl::Now() - start) : 0;
  }
  auto done = nodes[0].client->WaitAll(ids, absl::Minutes(5));
  if (!done.ok()) {
    std::cerr << "wait: " << done.status() << "\n";
    return 0;
  }
  for (const auto& t : *done) {
    if (t.state() != forq::v1::SUCCEEDED) {
      std::cerr << "task " << t.id() << " not SUCCEEDED\n";
      return 0;
    }
  }
  return n / absl::ToDoubleSeconds(absl::Now() - start);
}

// --wait_queued: `n` tasks queued while the node is drained, all waited
// for `wait` (which times out), then run.
int WaitQueued(Client& client, int n, absl::Duration wait) {
  if (auto d = client.Drain(absl::Seconds(10)); !d.ok()) {
    std::cerr << "drain: " << d.status() << "\n";
    return 1;
  }
  std::vector<std::string> ids;
  for (int i = 0; i < n; i += 100) {
    std::vector<forq::v1::TaskSpec> specs(std::min(100, n - i));
    for (auto& s : specs) {
      s.set_kind("echo");
      s.set_payload("x");
    }
    auto r = client.SubmitBatch(specs);
    if (!r.ok()) {
      std::cerr << "submit: " << r.status() << "\n";
      return 1;
    }
    for (const auto& t : *r) ids.push_back(t.id());
  }
  const absl::Time start = absl::Now();
  auto timed_out = client.WaitAll(ids, wait);
  std::cout << absl::StrFormat("waited for %d queued tasks %.1f s: %s\n", n,
                               absl::ToDoubleSeconds(absl::Now() - start),
                               timed_out.status().ToString());
  if (auto r = client.Resume(); !r.ok()) {
    std::cerr << "resume: " << r.status() << "\n";
    return 1;
  }
  auto done = client.WaitAll(ids, absl::Minutes(5));
  std::cout << "then ran them: " << done.status() << "\n";
  return done.ok() ? 0 : 1;
}

// `n` echo tasks through one Map stream on node 1; tasks/s.
double RunMap(Node& node, int n) {
  if (n <= 0) return 0;
  int next = 0;
  forq::MapSource inputs([&]() -> std::optional<forq::MapInput> {
    if (next == n) return std::nullopt;
    return forq::MapInput(absl::StrCat(next++));
  });
  forq::MapOptions o;
  o.window = 256;
  const absl::Time start = absl::Now();
  forq::MapStream stream = node.client->Map("echo", std::move(inputs), o);
  int got = 0;
  for (const forq::MapItem& r : stream) {
    if (!r.ok()) {
      std::cerr << "map item failed\n";
      return 0;
    }
    ++got;
  }
  if (!stream.status().ok() || got != n) {
    std::cerr << "map: " << stream.status() << ", " << got << " of " << n
              << "\n";
    return 0;
  }
  return n / absl::ToDoubleSeconds(absl::Now() - start);
}

absl::Time FinishedAt(const forq::v1::Task& t) {
  return absl::FromUnixSeconds(t.finished_at().seconds()) +
         absl::Nanoseconds(t.finished_at().nanos());
}

absl::Duration Median(std::vector<absl::Duration> v) {
  if (v.empty()) return absl::InfiniteDuration();
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Node 1 drained, node 2 runs every task; each task is waited for on both
// nodes at once. Prints the medians.
void Latency(std::vector<Node>& nodes, int rounds) {
  if (rounds <= 0 || nodes.size() < 2) return;
  Client& other = *nodes[0].client;
  Client& runner = *nodes[1].client;
  if (auto d = other.Drain(absl::Seconds(10)); !d.ok()) {
    std::cerr << "drain: " << d.status() << "\n";
    return;
  }
  std::vector<absl::Duration> same, cross, added;
  for (int i = 0; i < rounds; ++i) {
    auto f = runner.Submit("sleep", "20");
    if (!f.ok()) {
      std::cerr << "submit: " << f.status() << "\n";
      return;
    }
    const std::string id = f->id();
    absl::StatusOr<forq::v1::WaitTaskResponse> on_other;
    absl::Time other_back;
    std::thread t([&] {
      on_other = other.Wait(id, absl::Seconds(30));
      other_back = absl::Now();
    });
    auto on_same = runner.Wait(id, absl::Seconds(30));
    const absl::Time same_back = absl::Now();
    t.join();
    if (!on_same.ok() || !on_other.ok() || !on_same->done() ||
        !on_other->done()) {
      std::cerr << "wait failed in round " << i << "\n";
      return;
    }
    // Only tasks still running when both waits arrived count: the 20 ms
    // sleep makes that the rule.
    const absl::Time fin = FinishedAt(on_same->task());
    same.push_back(same_back - fin);
    cross.push_back(other_back - fin);
    added.push_back(other_back - same_back);
  }
  (void)other.Resume();
  std::cout << absl::StrFormat(
      "Wait return after the task finished, p50 of %d: same node %.2f ms, "
      "other node %.2f ms; added by the other node p50 %.2f ms\n",
      rounds, absl::ToDoubleMilliseconds(Median(same)),
      absl::ToDoubleMilliseconds(Median(cross)),
      absl::ToDoubleMilliseconds(Median(added)));
}

// The busiest statements since the last call (pg_stat_statements).
void PrintStatements(const std::string& uri) {
  PGconn* conn = PQconnectdb(uri.c_str());
  if (PQstatus(conn) != CONNECTION_OK) {
    std::cerr << "pg_stats: " << PQerrorMessage(conn);
    PQfinish(conn);
    return;
  }
  PGresult* res = PQexec(
      conn,
      "SELECT calls, round(total_exec_time::numeric, 1), rows, "
      "round((total_exec_time / greatest(calls, 1))::numeric * 1000, 1), "
      "left(regexp_replace(query, '\\s+', ' ', 'g'), 110) FROM "
      "pg_stat_statements ORDER BY total_exec_time DESC LIMIT 15");
  if (PQresultStatus(res) == PGRES_TUPLES_OK) {
    std::cout << "calls | total ms | rows | us/call | statement\n";
    for (int r = 0; r < PQntuples(res); ++r) {
      std::cout << PQgetvalue(res, r, 0) << " | " << PQgetvalue(res, r, 1)
                << " | " << PQgetvalue(res, r, 2) << " | "
                << PQgetvalue(res, r, 3) << " | " << PQgetvalue(res, r, 4)
                << "\n";
    }
  } else {
    std::cerr << "pg_stats: " << PQresultErrorMessage(res);
  }
  PQclear(res);
  PQclear(PQexec(conn, "SELECT pg_stat_statements_reset()"));
  PQfinish(conn);
}

// pg_stat_user_tables figures of the schema's `tasks` table.
std::string TableStats(const PostgresServer& server, const std::string& uri) {
  const std::string schema = uri.substr(uri.rfind("%3D") + 3);
  absl::StatusOr<std::string> row = server.Query(absl::StrCat(
      "SELECT n_live_tup || ' live, ' || n_dead_tup || ' dead, ' || "
      "round(pg_total_relation_size(relid) / 1048576.0, 1) || ' MiB, "
      "autovacuums ' || autovacuum_count FROM pg_stat_user_tables WHERE "
      "schemaname = '",
      schema, "' AND relname = 'tasks'"));
  return row.ok() ? *row : row.status().ToString();
}

// One node takes `rate` no-op tasks/s for `seconds`, with a 5 s result TTL
// purged every second; prints the table's live and dead rows as it goes.
int Soak(PostgresServer& server, int seconds, int rate) {
  auto uri = server.NewSchemaUri("soak");
  if (!uri.ok()) return 1;
  ForqdOptions o;
  o.workers = 2;
  o.flags = {absl::StrCat("--store=", *uri),
             "--cluster",
             "--node_id=n0",
             "--result_ttl=5s",
             "--purge_interval=1s",
             "--log_level=warn"};
  auto p = ForqdProcess::Start(o);
  if (!p.ok()) {
    std::cerr << "forqd: " << p.status() << "\n";
    return 1;
  }
  auto c = Client::Connect({.address = (*p)->grpc_address()});
  if (!c.ok()) return 1;
  std::cout << "soak: " << rate << " no-op tasks/s for " << seconds
            << " s, result TTL 5 s, purge every 1 s\n";
  const absl::Time start = absl::Now();
  const absl::Duration per_batch = absl::Seconds(100.0 / rate);
  absl::Time next_print = start + absl::Seconds(10);
  int64_t submitted = 0;
  for (absl::Time next = start; absl::Now() < start + absl::Seconds(seconds);
       next += per_batch) {
    absl::SleepFor(next - absl::Now());
    std::vector<forq::v1::TaskSpec> specs(100);
    for (auto& s : specs) {
      s.set_kind("echo");
      s.set_payload("x");
    }
    auto r = (*c)->SubmitBatch(specs);
    if (!r.ok()) {
      std::cerr << "submit: " << r.status() << "\n";
      return 1;
    }
    submitted += 100;
    if (absl::Now() >= next_print) {
      next_print += absl::Seconds(10);
      std::cout << absl::StrFormat("t=%3.0f s submitted %d: %s\n",
                                   absl::ToDoubleSeconds(absl::Now() - start),
                                   submitted, TableStats(server, *uri));
    }
  }
  // The last tasks' TTL, a purge, and the statistics' flush.
  absl::SleepFor(absl::Seconds(10));
  std::cout << absl::StrFormat(
      "t=%3.0f s after the last TTL, submitted %d: %s\n",
      absl::ToDoubleSeconds(absl::Now() - start), submitted,
      TableStats(server, *uri));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(kUsage);
  absl::ParseCommandLine(argc, argv);
  std::vector<int> counts;
  for (const std::string& c : absl::GetFlag(FLAGS_nodes)) {
    int v = 0;
    if (!absl::SimpleAtoi(c, &v) || v < 1) {
      std::cerr << "--nodes: '" << c << "' is not a node count\n";
      return 2;
    }
    counts.push_back(v);
  }
  const int noop = absl::GetFlag(FLAGS_noop);
  const int map = absl::GetFlag(FLAGS_map);
  const int sleep = absl::GetFlag(FLAGS_sleep);
  const int latency = absl::GetFlag(FLAGS_latency);
  const bool fsync = absl::GetFlag(FLAGS_fsync);
  const bool pg_stats = absl::GetFlag(FLAGS_pg_stats);
  const bool paused = absl::GetFlag(FLAGS_paused);
  const std::string keep_logs = absl::GetFlag(FLAGS_keep_logs);
  const std::string log_level = absl::GetFlag(FLAGS_log_level);
  std::string pg_options = absl::GetFlag(FLAGS_pg_options);
  const std::string connect = absl::GetFlag(FLAGS_connect);
  const int soak = absl::GetFlag(FLAGS_soak);
  const int soak_rate = absl::GetFlag(FLAGS_soak_rate);
  const int wait_queued = absl::GetFlag(FLAGS_wait_queued);
  const int wait_seconds = absl::GetFlag(FLAGS_wait_seconds);
  if (!connect.empty()) {
    auto c = Client::Connect({.address = connect});
    if (!c.ok()) {
      std::cerr << "connect: " << c.status() << "\n";
      return 1;
    }
    if (wait_queued > 0) {
      return WaitQueued(**c, wait_queued, absl::Seconds(wait_seconds));
    }
    std::vector<Node> nodes(1);
    nodes[0].client = std::move(*c);
    std::cout << "no-op tasks/s through " << connect << ": "
              << static_cast<int>(Run(nodes, "echo", "x", noop)) << "\n";
    return 0;
  }
  if (fsync) pg_options += " -c fsync=on";
  if (pg_stats) {
    pg_options += " -c shared_preload_libraries=pg_stat_statements";
  }
  auto server = PostgresServer::Start(pg_options);
  if (!server.ok()) {
    std::cerr << "postgres: " << server.status() << "\n";
    return 1;
  }
  if (soak > 0) return Soak(**server, soak, std::max(100, soak_rate));
  if (pg_stats) {
    if (auto s = (*server)->Exec("CREATE EXTENSION pg_stat_statements");
        !s.ok()) {
      std::cerr << "pg_stat_statements: " << s << "\n";
      return 1;
    }
  }
  std::cout << "PostgreSQL: fsync " << (fsync ? "on" : "off")
            << ", synchronous_commit on\n"
            << "| nodes (2 workers each) | no-op tasks/s (SubmitBatchAsync "
               "100, 8 in flight) "
               "| no-op tasks/s (Map, node 1) | sleep(50 ms) tasks/s | sleep "
               "speed-up vs 1 node |\n"
               "|---:|---:|---:|---:|---:|\n";
  double sleep_one = 0;
  for (int count : counts) {
    auto uri = (*server)->NewSchemaUri("bench");
    if (!uri.ok()) return 1;
    std::vector<Node> nodes;
    for (int i = 0; i < count; ++i) {
      ForqdOptions o;
      o.workers = 2;
      o.flags = {absl::StrCat("--store=", *uri), "--cluster",
                 absl::StrCat("--node_id=n", i),
                 absl::StrCat("--log_level=", log_level)};
      auto p = ForqdProcess::Start(o);
      if (!p.ok()) {
        std::cerr << "forqd: " << p.status() << "\n";
        return 1;
      }
      auto c = Client::Connect({.address = (*p)->grpc_address()});
      if (!c.ok()) return 1;
      nodes.push_back(Node{std::move(*p), std::move(*c)});
    }
    if (pg_stats) PrintStatements((*server)->Uri());
    const double noop_rate = Run(nodes, "echo", "x", noop);
    if (paused) (void)Run(nodes, "echo", "x", noop, /*paused=*/true);
    const double map_rate = RunMap(nodes[0], map);
    const double sleep_rate = Run(nodes, "sleep", "50", sleep);
    if (count == 1) sleep_one = sleep_rate;
    std::cout << "| " << count << " | " << static_cast<int>(noop_rate) << " | "
              << static_cast<int>(map_rate) << " | "
              << static_cast<int>(sleep_rate) << " | "
              << absl::StrFormat("%.2f",
                                 sleep_one > 0 ? sleep_rate / sleep_one : 0)
              << "x |\n";
    if (pg_stats) PrintStatements((*server)->Uri());
    if (count >= 2) Latency(nodes, latency);
    if (!keep_logs.empty()) {
      for (size_t i = 0; i < nodes.size(); ++i) {
        std::error_code ec;
        std::filesystem::copy_file(
            nodes[i].process->log_path(),
            absl::StrCat(keep_logs, "/forqd-", count, "-n", i, ".log"),
            std::filesystem::copy_options::overwrite_existing, ec);
      }
    }
  }
  return 0;
}
