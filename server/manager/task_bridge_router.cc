#include <utility>

#include "server/manager/manager_router.h"
#include "server/manager/task_bridge.h"

namespace forq::server {

void HandleManagerTaskCall(
    ManagerRouter& router, absl::string_view task_id, absl::string_view request,
    std::function<void(absl::StatusOr<std::string>)> reply) {
  task_bridge_internal::Handle(router, task_id, request, std::move(reply));
}

}  // namespace forq::server
