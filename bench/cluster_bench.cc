// cluster_bench: forq in cluster mode on PostgreSQL, end to end, with 1, 2
// and 3 forqd nodes of 2 workers each on this machine and one private
// PostgreSQL (tests/testing/postgres_server.h).
//
//   cluster_bench [--nodes=1,2,3] [--noop=2000] [--sleep=240]
//
// noop   echo tasks, SubmitBatch of 100 spread over the nodes, all waited
//        for on node 1 (WaitAll): tasks/s from first submit to last result.
// sleep  sleep(50 ms) tasks the same way: execution capacity, which should
//        grow with the number of nodes (2 workers each).
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

#include "forq/client.h"
#include "tests/testing/forqd_process.h"
#include "tests/testing/postgres_server.h"

namespace {

using forq::Client;
using forq::testing::ForqdOptions;
using forq::testing::ForqdProcess;
using forq::testing::PostgresServer;

struct Node {
  std::unique_ptr<ForqdProcess> process;
  std::unique_ptr<Client> client;
};

// Runs `n` tasks of `kind`/`payload` through `nodes`; returns tasks/s.
double Run(std::vector<Node>& nodes, const std::string& kind,
           const std::string& payload, int n) {
  std::vector<std::string> ids;
  const absl::Time start = absl::Now();
  for (int i = 0, node = 0; i < n; i += 100, ++node) {
    std::vector<forq::v1::TaskSpec> specs(std::min(100, n - i));
    for (auto& s : specs) {
      s.set_kind(kind);
      s.set_payload(payload);
    }
    auto f = nodes[node % nodes.size()].client->SubmitBatch(specs);
    if (!f.ok()) {
      std::cerr << "submit: " << f.status() << "\n";
      return 0;
    }
    for (const auto& t : *f) ids.push_back(t.id());
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

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> counts = {1, 2, 3};
  int noop = 2000, sleep = 240;
  for (int i = 1; i < argc; ++i) {
    absl::string_view a = argv[i];
    if (absl::ConsumePrefix(&a, "--nodes=")) {
      counts.clear();
      for (absl::string_view c : absl::StrSplit(a, ',')) {
        int v = 0;
        if (absl::SimpleAtoi(c, &v)) counts.push_back(v);
      }
    } else if (absl::ConsumePrefix(&a, "--noop=")) {
      (void)absl::SimpleAtoi(a, &noop);
    } else if (absl::ConsumePrefix(&a, "--sleep=")) {
      (void)absl::SimpleAtoi(a, &sleep);
    }
  }
  auto server = PostgresServer::Start();
  if (!server.ok()) {
    std::cerr << "postgres: " << server.status() << "\n";
    return 1;
  }
  std::cout << "| nodes (2 workers each) | no-op tasks/s (SubmitBatch 100) "
               "| sleep(50 ms) tasks/s | sleep speed-up vs 1 node |\n"
               "|---:|---:|---:|---:|\n";
  double sleep_one = 0;
  for (int count : counts) {
    auto uri = (*server)->NewSchemaUri("bench");
    if (!uri.ok()) return 1;
    std::vector<Node> nodes;
    for (int i = 0; i < count; ++i) {
      ForqdOptions o;
      o.workers = 2;
      o.flags = {absl::StrCat("--store=", *uri), "--cluster",
                 absl::StrCat("--node_id=n", i), "--log_level=warn"};
      auto p = ForqdProcess::Start(o);
      if (!p.ok()) {
        std::cerr << "forqd: " << p.status() << "\n";
        return 1;
      }
      auto c = Client::Connect({.address = (*p)->grpc_address()});
      if (!c.ok()) return 1;
      nodes.push_back(Node{std::move(*p), std::move(*c)});
    }
    const double noop_rate = Run(nodes, "echo", "x", noop);
    const double sleep_rate = Run(nodes, "sleep", "50", sleep);
    if (count == 1) sleep_one = sleep_rate;
    std::cout << "| " << count << " | " << static_cast<int>(noop_rate)
              << " | " << static_cast<int>(sleep_rate) << " | "
              << (sleep_one > 0 ? sleep_rate / sleep_one : 0) << "x |\n";
  }
  return 0;
}
