// Cluster mode: which node owns the Manager objects. Every node runs one
// election thread on a dedicated PostgreSQL connection; the node that holds
// the session advisory lock (database/schema, 3) owns the Manager and
// publishes its gRPC address in the row `forq_manager_owner`. The others
// read that row and forward Manager calls there. PostgreSQL drops the lock
// with the owner's session, so when the owner dies (kill -9, host loss:
// TCP keepalives) another node takes the lock, loads the objects from the
// store and publishes itself. docs/cluster.md, "Manager objects".
#ifndef FORQ_SERVER_STORE_CLUSTER_MANAGER_OWNER_H_
#define FORQ_SERVER_STORE_CLUSTER_MANAGER_OWNER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

#include "common/mutex.h"

namespace forq::server {

struct ManagerOwnerOptions {
  // libpq URI of the cluster's store (same database and schema).
  std::string uri;
  std::string node_id;
  // host:port where this node's ManagerService is reachable by the others.
  std::string address;
  // The owner stops serving when it could not confirm its lock for
  // lease/3; PostgreSQL drops the lock of a vanished owner after about
  // lease/2 + 2 s (server-side TCP keepalives of the session).
  absl::Duration lease = absl::Seconds(10);
  // How often a node tries to take the lock and re-reads the owner (and
  // the owner checks its session).
  absl::Duration poll = absl::Milliseconds(200);
};

struct ManagerOwnerCallbacks {
  // This node took the lock: load the objects and serve. An error gives
  // the lock back (tried again at the next poll). Runs on the election
  // thread.
  std::function<absl::Status()> acquired;
  // This node must stop serving at once (its session with the lock is
  // broken, or Stop). Runs on the election thread or in Stop.
  std::function<void()> lost;
  // Another node owns the Manager at `address` ("" = no owner known). Runs
  // on the election thread when the owner changes.
  std::function<void(const std::string& node, const std::string& address)>
      follow;
};

// Thread-safe.
class ManagerOwnerElection {
 public:
  // Creates the table if needed and starts the election thread. Fails if
  // the database cannot be reached.
  static absl::StatusOr<std::unique_ptr<ManagerOwnerElection>> Start(
      ManagerOwnerOptions options, ManagerOwnerCallbacks callbacks);
  // Stop()s.
  ~ManagerOwnerElection();
  ManagerOwnerElection(const ManagerOwnerElection&) = delete;
  ManagerOwnerElection& operator=(const ManagerOwnerElection&) = delete;

  // Steps down (lost(), then the lock is released so another node takes
  // over within its poll) and stops the thread. Idempotent.
  void Stop() ABSL_LOCKS_EXCLUDED(mu_);
  // Re-read the owner (and try the lock) now rather than at the next poll:
  // a forwarded call found the owner unreachable.
  void Refresh() ABSL_LOCKS_EXCLUDED(mu_);
  bool owner() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  class Session;
  ManagerOwnerElection(ManagerOwnerOptions options,
                       ManagerOwnerCallbacks callbacks);
  void Loop() ABSL_LOCKS_EXCLUDED(mu_);
  // One round: keep, take or follow. Returns false if the session broke.
  bool Round(Session& s) ABSL_LOCKS_EXCLUDED(mu_);
  void SetOwner(bool owner) ABSL_LOCKS_EXCLUDED(mu_);

  const ManagerOwnerOptions options_;
  const ManagerOwnerCallbacks callbacks_;

  mutable Mutex mu_;
  CondVar wake_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool refresh_ ABSL_GUARDED_BY(mu_) = false;
  bool owner_ ABSL_GUARDED_BY(mu_) = false;
  // The owner last reported to follow().
  std::string followed_ ABSL_GUARDED_BY(mu_);
  bool followed_once_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time last_confirmed_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace forq::server

#endif  // FORQ_SERVER_STORE_CLUSTER_MANAGER_OWNER_H_
