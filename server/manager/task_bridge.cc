#include "server/manager/task_bridge.h"

#include <utility>

namespace forq::server {

void HandleManagerTaskCall(
    ObjectManager& core, absl::string_view task_id, absl::string_view request,
    std::function<void(absl::StatusOr<std::string>)> reply) {
  task_bridge_internal::Handle(core, task_id, request, std::move(reply));
}

}  // namespace forq::server
