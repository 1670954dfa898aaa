#include "server/manager/task_bridge.h"

#include <utility>

#include "worker/manager_protocol.h"

namespace forq::server {
namespace {

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

}  // namespace

void HandleManagerTaskCall(
    ObjectManager& core, absl::string_view task_id, absl::string_view request,
    std::function<void(absl::StatusOr<std::string>)> reply) {
  Handle(core, task_id, request, std::move(reply));
}

void HandleManagerTaskCall(
    ManagerRouter& router, absl::string_view task_id, absl::string_view request,
    std::function<void(absl::StatusOr<std::string>)> reply) {
  Handle(router, task_id, request, std::move(reply));
}

}  // namespace forq::server
