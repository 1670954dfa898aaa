// gRPC edge of forq.v1.PoolService: pool status, drain and resume.
#ifndef FORQ_SERVER_RPC_POOL_SERVICE_H_
#define FORQ_SERVER_RPC_POOL_SERVICE_H_

#include "forq/v1/pool.grpc.pb.h"
#include "server/rpc/grpc_metrics.h"
#include "server/rpc/health.h"
#include "server/rpc/parsed_request.h"
#include "server/scheduler/scheduler.h"
#include "worker/pool.h"

namespace forq::server {

// Thread-safe; borrows the scheduler, pool and health reporter, which
// outlive the server. Drain and Resume refresh the health reporter so
// grpc.health.v1.Health and /readyz follow the drain at once. With
// `metrics`, every call is counted by its handler (as TaskServiceImpl's),
// and no interceptor runs for any call (ParsedRequests).
class PoolServiceImpl final
    : public ParsedRequests<v1::PoolService::CallbackService> {
 public:
  PoolServiceImpl(Scheduler& scheduler, worker::WorkerPool& pool,
                  HealthReporter& health, GrpcMetrics* metrics = nullptr);

  grpc::ServerUnaryReactor* GetPool(grpc::CallbackServerContext* ctx,
                                    const v1::GetPoolRequest* req,
                                    v1::PoolStatus* resp) override;
  grpc::ServerUnaryReactor* Drain(grpc::CallbackServerContext* ctx,
                                  const v1::DrainRequest* req,
                                  v1::DrainResponse* resp) override;
  grpc::ServerUnaryReactor* Resume(grpc::CallbackServerContext* ctx,
                                   const v1::ResumeRequest* req,
                                   v1::PoolStatus* resp) override;

 private:
  void FillStatus(v1::PoolStatus* status);

  Scheduler& scheduler_;
  worker::WorkerPool& pool_;
  HealthReporter& health_;
  GrpcMetrics::Method* const get_pool_;
  GrpcMetrics::Method* const drain_;
  GrpcMetrics::Method* const resume_;
};

}  // namespace forq::server

#endif  // FORQ_SERVER_RPC_POOL_SERVICE_H_
