// Where a Manager call runs. A single forqd has one ObjectManager core and
// the router only passes calls to it. In a cluster (docs/cluster.md,
// "Manager objects") exactly one node, the Manager owner, has a core; every
// other node forwards its clients' and tasks' calls to the owner over gRPC
// (ManagerService.Call), and answers Unavailable (retryable) while no owner
// is known, so a client never gets an answer from a second copy of the
// objects.
#ifndef FORQ_SERVER_MANAGER_MANAGER_ROUTER_H_
#define FORQ_SERVER_MANAGER_MANAGER_ROUTER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

#include "common/mutex.h"
#include "server/manager/object_manager.h"
#include "server/metrics/metrics.h"
#include "server/store/store.h"

namespace grpc {
class ChannelCredentials;
class ClientContext;
template <class Response>
class ClientReadReactor;
}  // namespace grpc

namespace forq::v1 {
class ManagerEvent;
class ManagerWatchRequest;
}  // namespace forq::v1

namespace forq::server {

// Metadata key a forwarding node adds to the calls it forwards (value: its
// node id). A node that receives such a call and is not the owner any more
// answers Unavailable instead of forwarding again, so calls never loop.
inline constexpr char kManagerForwardedHeader[] = "forq-manager-forwarded-by";

// Who made a call (its credentials are forwarded when the node has no
// token of its own).
struct ManagerCallOrigin {
  // The caller's `authorization` metadata ("" for tasks and open servers).
  std::string authorization;
  // The call was forwarded to this node by another node.
  bool forwarded = false;
};

// How a cluster node reaches the owner.
struct ManagerForwarding {
  std::string node_id;
  // Insecure when null.
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  // Sent as "Bearer TOKEN" with every forwarded call: this node checked
  // the caller's role already. "" = forward the caller's own
  // `authorization` (tasks' calls then carry none).
  std::string token;
  // Called (without locks held) when the owner could not be reached, so
  // the election re-reads who owns the Manager now.
  std::function<void()> on_unreachable;
};

// Thread-safe.
class ManagerRouter {
 public:
  using Done = ObjectManager::Done;
  using ListDone =
      std::function<void(absl::StatusOr<std::vector<ManagerObjectInfo>>)>;
  using DeleteDone = std::function<void(absl::StatusOr<bool>)>;

  // A single node: one core, created now, served locally for good.
  ManagerRouter(Store* store, Metrics* metrics, ObjectManagerOptions options);
  // A cluster node: no core until BecomeOwner; calls fail with Unavailable
  // until BecomeOwner or Follow.
  ManagerRouter(Store* store, Metrics* metrics, ObjectManagerOptions options,
                ManagerForwarding forwarding);
  ~ManagerRouter();
  ManagerRouter(const ManagerRouter&) = delete;
  ManagerRouter& operator=(const ManagerRouter&) = delete;

  bool cluster() const { return fixed_ == nullptr; }

  // Single node: recovers the core. Cluster: nothing (BecomeOwner does).
  absl::Status Recover();

  // Cluster: this node now owns the Manager. Builds a fresh core from the
  // store (objects, token epoch) and serves every call locally from then
  // on. On error nothing changes.
  absl::Status BecomeOwner() ABSL_LOCKS_EXCLUDED(mu_);
  // Cluster: this node must stop serving (it lost ownership, or is
  // shutting down): its core's parked calls fail with Unavailable, its
  // sessions and locks end, and calls fail with Unavailable until Follow.
  void StepDown() ABSL_LOCKS_EXCLUDED(mu_);
  // Cluster: forward to the owner at `address` ("" = none known).
  void Follow(const std::string& owner_node, const std::string& address)
      ABSL_LOCKS_EXCLUDED(mu_);

  // As ObjectManager::Execute. Returns an id for Cancel when the call did
  // not complete at once (parked here, or forwarded), else 0.
  uint64_t Execute(worker::ManagerRequest request, Done done,
                   absl::string_view tag = "",
                   const ManagerCallOrigin& origin = {})
      ABSL_LOCKS_EXCLUDED(mu_);
  void Cancel(uint64_t id) ABSL_LOCKS_EXCLUDED(mu_);
  int CancelTagged(absl::string_view tag) ABSL_LOCKS_EXCLUDED(mu_);
  void ListObjects(const std::string& prefix, const ManagerCallOrigin& origin,
                   ListDone done) ABSL_LOCKS_EXCLUDED(mu_);
  void DeleteObject(const std::string& name, const ManagerCallOrigin& origin,
                    DeleteDone done) ABSL_LOCKS_EXCLUDED(mu_);

  // Cluster, not the owner: binds `reactor` to the owner's Watch of
  // `request` (which must outlive the call); the caller then starts it
  // (StartRead, StartCall). Unavailable when there is no owner to ask.
  absl::Status ForwardWatch(const v1::ManagerWatchRequest& request,
                            const ManagerCallOrigin& origin,
                            grpc::ClientContext* ctx,
                            grpc::ClientReadReactor<v1::ManagerEvent>* reactor)
      ABSL_LOCKS_EXCLUDED(mu_);

  // While it lives, holds back the local core's group commits (see
  // ObjectManager::HoldWrites) when `hold` is set; nothing on a node that
  // forwards its calls.
  class WriteHold {
   public:
    WriteHold(ManagerRouter& router, bool hold);
    ~WriteHold();
    WriteHold(const WriteHold&) = delete;
    WriteHold& operator=(const WriteHold&) = delete;

   private:
    std::shared_ptr<ObjectManager> core_;
  };

  // The core serving locally (a single node's, or the owner's); null on a
  // cluster node that does not own the Manager.
  std::shared_ptr<ObjectManager> local() ABSL_LOCKS_EXCLUDED(mu_);
  // Where calls go when not local: the owner's address ("" = unknown).
  std::string owner_address() ABSL_LOCKS_EXCLUDED(mu_);

  // Fails parked and forwarded calls with Unavailable; later calls fail
  // the same way.
  void Shutdown() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct RemoteCall;
  class Remote;
  // Where a call goes: exactly one of core/remote, or neither (Unavailable
  // with `why`).
  struct Route {
    std::shared_ptr<ObjectManager> core;
    std::shared_ptr<Remote> remote;
    std::string why;
  };
  Route RouteFor(const ManagerCallOrigin& origin) ABSL_LOCKS_EXCLUDED(mu_);
  // Counts an asynchronous forwarded call (false: shutting down).
  bool Begin() ABSL_LOCKS_EXCLUDED(mu_);
  // Its callback ran; `id` (if any) leaves calls_.
  void End(uint64_t id) ABSL_LOCKS_EXCLUDED(mu_);
  // Forwards one non-blocking call (ListObjects, DeleteObject) to the
  // owner with a bounded deadline: `issue` starts it on the owner's async
  // stub, `on_reply` gets the response, `fail` the error (a shutdown, or
  // the owner's answer). Defined and used in the .cc only.
  template <typename Resp, typename Req, typename Issue, typename OnReply,
            typename Fail>
  void ForwardToOwner(const std::shared_ptr<Remote>& remote,
                      const ManagerCallOrigin& origin, Req request, Issue issue,
                      OnReply on_reply, Fail fail) ABSL_LOCKS_EXCLUDED(mu_);

  Store* const store_;
  Metrics* const metrics_;
  const ObjectManagerOptions options_;
  const ManagerForwarding forwarding_;
  // Single node: the core, never replaced.
  const std::shared_ptr<ObjectManager> fixed_;

  Mutex mu_;
  std::shared_ptr<ObjectManager> owned_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<Remote> remote_ ABSL_GUARDED_BY(mu_);
  std::string owner_node_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, std::shared_ptr<RemoteCall>> calls_
      ABSL_GUARDED_BY(mu_);
  // Forwarded calls whose callbacks have not run yet; the destructor
  // waits for 0 (their callbacks use this object).
  int pending_ ABSL_GUARDED_BY(mu_) = 0;
  CondVar pending_done_;
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace forq::server

#endif  // FORQ_SERVER_MANAGER_MANAGER_ROUTER_H_
