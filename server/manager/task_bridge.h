// Serves Manager calls that tasks make through TaskContext::Call: decodes
// the worker/manager_protocol.h wire format (untrusted), runs the request on
// the core, encodes the reply.
#ifndef FORQ_SERVER_MANAGER_TASK_BRIDGE_H_
#define FORQ_SERVER_MANAGER_TASK_BRIDGE_H_

#include <functional>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

#include "server/manager/object_manager.h"
#include "worker/manager_protocol.h"

namespace forq::server {

class ManagerRouter;

// Decodes `request` and runs it on `core`, tagging a parked call with
// `task_id` (for ObjectManager::CancelTagged). `reply` gets the encoded
// ManagerReply or an error status, exactly once, maybe later. Garbage
// input gets InvalidArgument and never reaches the core.
void HandleManagerTaskCall(
    ObjectManager& core, absl::string_view task_id, absl::string_view request,
    std::function<void(absl::StatusOr<std::string>)> reply);
// The same through a router: on a cluster node that does not own the
// Manager the call is forwarded to the owner (with the node's token).
// Defined in task_bridge_router.cc, so that the object core (library
// forq_manager_core) links without the router.
void HandleManagerTaskCall(
    ManagerRouter& router, absl::string_view task_id, absl::string_view request,
    std::function<void(absl::StatusOr<std::string>)> reply);

namespace task_bridge_internal {

// Both overloads: `Core` has ObjectManager's Execute(request, done, tag).
template <typename Core>
void Handle(Core& core, absl::string_view task_id, absl::string_view request,
            std::function<void(absl::StatusOr<std::string>)> reply) {
  absl::StatusOr<worker::ManagerRequest> req =
      worker::DecodeManagerRequest(request);
  if (!req.ok()) {
    reply(req.status());
    return;
  }
  core.Execute(
      *std::move(req),
      [reply = std::move(reply)](absl::StatusOr<worker::ManagerReply> r) {
        if (!r.ok()) {
          reply(r.status());
        } else {
          reply(worker::EncodeManagerReply(*r));
        }
      },
      task_id);
}

}  // namespace task_bridge_internal
}  // namespace forq::server

#endif  // FORQ_SERVER_MANAGER_TASK_BRIDGE_H_
