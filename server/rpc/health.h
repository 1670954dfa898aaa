// forqd's serving phase as both health front ends report it: the gRPC
// grpc.health.v1.Health service, per service name, and HTTP /readyz. One
// object decides the phase so the two never disagree about a drain or a stop.
#ifndef FORQ_SERVER_RPC_HEALTH_H_
#define FORQ_SERVER_RPC_HEALTH_H_

#include <functional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"

#include "common/mutex.h"

namespace grpc {
class HealthCheckServiceInterface;
}

namespace forq::server {

enum class ServingPhase {
  kServing,   // taking and running work
  kDraining,  // PoolService.Drain: dispatch paused until Resume
  kStopping,  // SIGTERM or Shutdown: intake stopped for good
};

absl::string_view ServingPhaseName(ServingPhase phase);

// A name grpc.health.v1.Health answers, and whether it stays SERVING while
// forqd drains (the pool and Manager services keep working then, so Resume
// and Manager calls still reach a draining forqd).
struct HealthService {
  std::string name;
  bool serving_while_draining = false;
};

// "" (the whole server), forq.v1.TaskService, forq.v1.PoolService and
// forq.v1.ManagerService. Any other name answers NOT_FOUND.
const std::vector<HealthService>& HealthServices();

// Whether `service` is SERVING in `phase`.
bool ServingIn(const HealthService& service, ServingPhase phase);

// Thread-safe. Publishes the phase to the gRPC health service each time it
// may have changed; the drain state itself stays in the scheduler.
class HealthReporter {
 public:
  // `draining` reports whether dispatch is paused (Scheduler::draining); it
  // is called with this object's lock held and must not call back into it.
  explicit HealthReporter(std::function<bool()> draining);
  HealthReporter(const HealthReporter&) = delete;
  HealthReporter& operator=(const HealthReporter&) = delete;

  // Starts publishing to `health` (borrowed: the gRPC server owns it and
  // must outlive this object or shut it down first) and publishes the
  // current phase for every name of HealthServices().
  void Attach(grpc::HealthCheckServiceInterface* health)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Re-reads the drain state and publishes it; call after every change.
  void Refresh() ABSL_LOCKS_EXCLUDED(mu_);
  // From now on the phase is kStopping, whatever the drain state.
  void SetStopping() ABSL_LOCKS_EXCLUDED(mu_);
  ServingPhase phase() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  ServingPhase PhaseLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PublishLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::function<bool()> draining_;
  Mutex mu_;
  grpc::HealthCheckServiceInterface* health_ ABSL_GUARDED_BY(mu_) = nullptr;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace forq::server

#endif  // FORQ_SERVER_RPC_HEALTH_H_
