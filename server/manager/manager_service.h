// forqd's Manager: the forq.v1.ManagerService gRPC service (callback API, no
// thread per parked call) and the entry point for Manager calls made by
// tasks through TaskContext::Call. Both run on one ObjectManager core.
#ifndef FORQ_SERVER_MANAGER_MANAGER_SERVICE_H_
#define FORQ_SERVER_MANAGER_MANAGER_SERVICE_H_

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "grpcpp/support/status.h"

#include "server/manager/manager_router.h"
#include "server/manager/object_manager.h"
#include "server/metrics/metrics.h"
#include "server/store/store.h"

namespace grpc {
class Service;
}  // namespace grpc

namespace forq::server {

class ManagerGrpcService;

// Thread-safe. Wiring in forqd:
//   ManagerService manager(store, &metrics);
//   FORQ_RETURN_IF_ERROR(manager.Recover());        // before serving
//   builder.RegisterService(manager.grpc_service());
//   callbacks.on_call = [&](auto task_id, auto req, auto reply) {
//     manager.HandleTaskCall(task_id, req, std::move(reply)); };
//   on_outcome: manager.CancelTaskCalls(outcome.task_id);
//   shutdown: manager.Shutdown(); server->Shutdown(); ... then destroy.
class ManagerService {
 public:
  // `store` (may be null: nothing persists) and `metrics` (may be null) are
  // borrowed and must outlive this object.
  ManagerService(Store* store, Metrics* metrics,
                 ObjectManagerOptions options = {});
  // A cluster node: serves nothing until router().BecomeOwner() or
  // router().Follow() (docs/cluster.md, "Manager objects").
  ManagerService(Store* store, Metrics* metrics, ManagerForwarding forwarding,
                 ObjectManagerOptions options = {});
  // Shuts down. The gRPC server must be shut down before destruction.
  ~ManagerService();
  ManagerService(const ManagerService&) = delete;
  ManagerService& operator=(const ManagerService&) = delete;

  // Loads persisted objects and advances the fencing-token epoch. Locks and
  // sessions do not survive a restart: every lock starts free. (A cluster
  // node does this when it becomes the Manager owner.)
  absl::Status Recover();
  // The ManagerService callback service, for ServerBuilder::RegisterService.
  // Owned by this object.
  grpc::Service* grpc_service();

  // The unary Call RPC (what the C++ client sends when not pipelined)
  // parses its own request and counts itself, so a server can leave it
  // out of every interceptor: gRPC then skips its interceptor machinery,
  // about 14% of a unary call's instructions in forqd.
  static constexpr char kCallPath[] = "/forq.v1.ManagerService/Call";
  struct CallHooks {
    // Counts a finished call (its code, when it started).
    std::function<void(grpc::StatusCode, std::chrono::steady_clock::time_point)>
        record;
    // The INVALID_ARGUMENT message for a request that does not parse.
    std::string malformed = "request does not parse";
  };
  // Call before the server starts.
  void SetCallHooks(CallHooks hooks);
  // A task's TaskContext::Call request (from PoolCallbacks::on_call). The
  // request is untrusted bytes: malformed input gets InvalidArgument.
  // `reply` is called exactly once, possibly later from another thread
  // (blocking operations park like gRPC calls do).
  void HandleTaskCall(absl::string_view task_id, absl::string_view request,
                      std::function<void(absl::StatusOr<std::string>)> reply);
  // Fails the still-parked calls of `task_id` with Cancelled. Call when a
  // task attempt ends (its worker may have died mid-call), so a parked
  // queue get cannot take an item for a task that is gone.
  void CancelTaskCalls(absl::string_view task_id);
  // Fails parked waiters with Unavailable; later calls fail the same way.
  void Shutdown();

  // The core serving locally; only when there is one (a single node, or
  // the owner).
  ObjectManager& core();
  ManagerRouter& router() { return *router_; }

 private:
  std::unique_ptr<ManagerRouter> router_;
  std::unique_ptr<ManagerGrpcService> grpc_;
};

}  // namespace forq::server

#endif  // FORQ_SERVER_MANAGER_MANAGER_SERVICE_H_
