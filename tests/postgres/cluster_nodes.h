// Test helper: forqd nodes in cluster mode on one fresh schema of the
// shared test PostgreSQL, each with its own client.
#ifndef FORQ_TESTS_POSTGRES_CLUSTER_NODES_H_
#define FORQ_TESTS_POSTGRES_CLUSTER_NODES_H_

#include <array>
#include <cstddef>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

#include "forq/client.h"
#include "tests/testing/forqd_process.h"
#include "tests/testing/postgres_server.h"

namespace forq::testing {

struct ClusterNode {
  std::string name;
  std::unique_ptr<ForqdProcess> process;
  std::unique_ptr<Client> client;
  // Worker pids when the node started.
  std::set<int> worker_pids;
};

class ClusterNodes {
 public:
  // A fresh schema named after `prefix`.
  static absl::StatusOr<ClusterNodes> Create(const std::string& prefix) {
    absl::StatusOr<PostgresServer*> server = PostgresServer::Shared();
    if (!server.ok()) return server.status();
    absl::StatusOr<std::string> uri = (*server)->NewSchemaUri(prefix);
    if (!uri.ok()) return uri.status();
    ClusterNodes nodes;
    nodes.server_ = *server;
    nodes.uri_ = *uri;
    nodes.schema_ = uri->substr(uri->rfind("%3D") + 3);
    return nodes;
  }

  // Starts node `name` (2 workers) with `lease` and extra flags. Tests
  // without faults keep the default lease: a loaded machine can stall a
  // node past a short one, and a reclaimed attempt runs twice.
  absl::StatusOr<ClusterNode*> Start(const std::string& name,
                                     const std::string& lease = "10s",
                                     std::vector<std::string> flags = {}) {
    ForqdOptions o;
    o.workers = 2;
    o.flags = {absl::StrCat("--store=", uri_),
               "--cluster",
               absl::StrCat("--node_id=", name),
               absl::StrCat("--cluster_lease=", lease),
               "--retry_backoff=50ms",
               "--cancel_grace=200ms"};
    o.flags.insert(o.flags.end(), flags.begin(), flags.end());
    absl::StatusOr<std::unique_ptr<ForqdProcess>> p = ForqdProcess::Start(o);
    if (!p.ok()) return p.status();
    auto node = std::make_unique<ClusterNode>();
    node->name = name;
    node->process = std::move(*p);
    absl::StatusOr<std::unique_ptr<Client>> c =
        Client::Connect({.address = node->process->grpc_address()});
    if (!c.ok()) return c.status();
    node->client = std::move(*c);
    absl::StatusOr<v1::PoolStatus> pool = node->client->GetPool();
    if (!pool.ok()) return pool.status();
    for (const v1::Worker& w : pool->workers()) {
      node->worker_pids.insert(w.pid());
    }
    nodes_.push_back(std::move(node));
    return nodes_.back().get();
  }

  // Starts nodes `names` in that order, each as Start(name, lease, flags);
  // the first failure is returned. Bind the result with
  // `auto [a, b] = *started;`.
  template <size_t N>
  absl::StatusOr<std::array<ClusterNode*, N>> StartNodes(
      const char* const (&names)[N], const std::string& lease = "10s",
      const std::vector<std::string>& flags = {}) {
    std::array<ClusterNode*, N> started{};
    for (size_t i = 0; i < N; ++i) {
      absl::StatusOr<ClusterNode*> node = Start(names[i], lease, flags);
      if (!node.ok()) return node.status();
      started[i] = *node;
    }
    return started;
  }

  // Which started node owns worker `pid` ("" if none).
  std::string NodeOfPid(int pid) const {
    for (const auto& n : nodes_) {
      if (n->worker_pids.count(pid) > 0) return n->name;
    }
    return "";
  }

  // Runs a query on the cluster's schema; first column of the first row.
  absl::StatusOr<std::string> Query(const std::string& sql_with_schema) const {
    return server_->Query(sql_with_schema);
  }
  const std::string& schema() const { return schema_; }
  // The store URI of this cluster with another port (a proxy's).
  std::string UriViaPort(int port) const {
    return absl::StrCat("postgresql://forq@127.0.0.1:", port,
                        "/forq?options=-csearch_path%3D", schema_);
  }
  PostgresServer& server() const { return *server_; }

 private:
  ClusterNodes() = default;
  PostgresServer* server_ = nullptr;
  std::string uri_;
  std::string schema_;
  std::vector<std::unique_ptr<ClusterNode>> nodes_;

 public:
  ClusterNodes(ClusterNodes&&) = default;
  ClusterNodes& operator=(ClusterNodes&&) = default;
};

// `n` specs of the builtin "sleep" kind, `ms` milliseconds each.
inline std::vector<v1::TaskSpec> SleepSpecs(int n, int ms) {
  std::vector<v1::TaskSpec> specs(n);
  for (v1::TaskSpec& s : specs) {
    s.set_kind("sleep");
    s.set_payload(absl::StrCat(ms));
  }
  return specs;
}

// The node that owns the Manager, per the database ("" if none yet).
inline std::string OwnerNode(const ClusterNodes& nodes) {
  absl::StatusOr<std::string> owner =
      nodes.Query(absl::StrCat("SELECT node_id FROM ", nodes.schema(),
                               ".forq_manager_owner WHERE address <> ''"));
  return owner.ok() ? *owner : "";
}

// Awaits the owner row naming `node` (a state in the database, polled).
inline bool AwaitOwner(const ClusterNodes& nodes, const std::string& node,
                       absl::Duration timeout = absl::Seconds(20)) {
  const absl::Time give_up = absl::Now() + timeout;
  while (absl::Now() < give_up) {
    if (OwnerNode(nodes) == node) return true;
    absl::SleepFor(absl::Milliseconds(20));  // poll interval
  }
  return false;
}

}  // namespace forq::testing

#endif  // FORQ_TESTS_POSTGRES_CLUSTER_NODES_H_
