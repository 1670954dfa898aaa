#include "server/rpc/health.h"

#include <utility>

#include "grpcpp/health_check_service_interface.h"

#include "forq/v1/manager.grpc.pb.h"
#include "forq/v1/pool.grpc.pb.h"
#include "forq/v1/task.grpc.pb.h"

namespace forq::server {

absl::string_view ServingPhaseName(ServingPhase phase) {
  switch (phase) {
    case ServingPhase::kServing:
      return "serving";
    case ServingPhase::kDraining:
      return "draining";
    case ServingPhase::kStopping:
      return "stopping";
  }
  return "unknown";
}

const std::vector<HealthService>& HealthServices() {
  // Leaked on purpose: read by gRPC threads until the process exits.
  static const auto* const services = new std::vector<HealthService>{
      {"", false},
      {v1::TaskService::service_full_name(), false},
      {v1::PoolService::service_full_name(), true},
      {v1::ManagerService::service_full_name(), true},
  };
  return *services;
}

bool ServingIn(const HealthService& service, ServingPhase phase) {
  switch (phase) {
    case ServingPhase::kServing:
      return true;
    case ServingPhase::kDraining:
      return service.serving_while_draining;
    case ServingPhase::kStopping:
      return false;
  }
  return false;
}

HealthReporter::HealthReporter(std::function<bool()> draining)
    : draining_(std::move(draining)) {}

void HealthReporter::Attach(grpc::HealthCheckServiceInterface* health) {
  MutexLock lock(&mu_);
  health_ = health;
  PublishLocked();
}

void HealthReporter::Refresh() {
  MutexLock lock(&mu_);
  PublishLocked();
}

void HealthReporter::SetStopping() {
  MutexLock lock(&mu_);
  stopping_ = true;
  PublishLocked();
}

ServingPhase HealthReporter::phase() {
  MutexLock lock(&mu_);
  return PhaseLocked();
}

ServingPhase HealthReporter::PhaseLocked() {
  if (stopping_) return ServingPhase::kStopping;
  return draining_() ? ServingPhase::kDraining : ServingPhase::kServing;
}

// Publishing under mu_ keeps concurrent Drain/Resume calls from leaving an
// older phase published last. SetServingStatus only updates gRPC's map and
// wakes watchers asynchronously; it never calls back into forq. The whole
// server's name ("", first in the list) is published last, so a client that
// sees it change finds every service name already changed.
void HealthReporter::PublishLocked() {
  if (health_ == nullptr) return;
  const ServingPhase phase = PhaseLocked();
  const std::vector<HealthService>& services = HealthServices();
  for (auto it = services.rbegin(); it != services.rend(); ++it) {
    health_->SetServingStatus(it->name, ServingIn(*it, phase));
  }
}

}  // namespace forq::server
