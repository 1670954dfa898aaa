#include "server/rpc/pool_service.h"

#include <unistd.h>

#include "server/scheduler/task_proto.h"

namespace forq::server {
namespace {

v1::WorkerState StateToProto(worker::WorkerState s) {
  switch (s) {
    case worker::WorkerState::kStarting:
      return v1::STARTING;
    case worker::WorkerState::kIdle:
      return v1::IDLE;
    case worker::WorkerState::kBusy:
      return v1::BUSY;
    case worker::WorkerState::kRespawning:
      return v1::RESPAWNING;
  }
  return v1::WORKER_STATE_UNSPECIFIED;
}

GrpcMetrics::Method* Counted(GrpcMetrics* metrics, const char* method) {
  return metrics == nullptr
             ? nullptr
             : metrics->Get(v1::PoolService::service_full_name(), method);
}

}  // namespace

PoolServiceImpl::PoolServiceImpl(Scheduler& scheduler, worker::WorkerPool& pool,
                                 HealthReporter& health, GrpcMetrics* metrics)
    : scheduler_(scheduler),
      pool_(pool),
      health_(health),
      get_pool_(Counted(metrics, "GetPool")),
      drain_(Counted(metrics, "Drain")),
      resume_(Counted(metrics, "Resume")) {
  const char* service = v1::PoolService::service_full_name();
  ParseUnary(service, "GetPool", get_pool_, &PoolServiceImpl::GetPool);
  ParseUnary(service, "Drain", drain_, &PoolServiceImpl::Drain);
  ParseUnary(service, "Resume", resume_, &PoolServiceImpl::Resume);
}

void PoolServiceImpl::FillStatus(v1::PoolStatus* status) {
  status->set_size(pool_.size());
  status->set_draining(scheduler_.draining());
  status->set_supervisor_pid(pool_.supervisor_pid());
  status->set_server_pid(getpid());
  for (const worker::WorkerInfo& w : pool_.Workers()) {
    v1::Worker* out = status->add_workers();
    out->set_slot(w.slot);
    out->set_pid(w.pid);
    out->set_parent_pid(w.parent_pid);
    out->set_state(StateToProto(w.state));
    out->set_current_task_id(w.current_task_id);
    out->set_tasks_done(w.tasks_done);
    out->set_rss_bytes(w.rss_bytes);
    out->set_restarts(w.restarts);
    if (w.started_at != absl::Time()) {
      *out->mutable_started_at() = ToProto(w.started_at);
    }
  }
}

grpc::ServerUnaryReactor* PoolServiceImpl::GetPool(
    grpc::CallbackServerContext* ctx, const v1::GetPoolRequest*,
    v1::PoolStatus* resp) {
  auto* reactor = ctx->DefaultReactor();
  const Meter meter(get_pool_);
  FillStatus(resp);
  meter.Finish(reactor, grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* PoolServiceImpl::Drain(
    grpc::CallbackServerContext* ctx, const v1::DrainRequest* req,
    v1::DrainResponse* resp) {
  auto* reactor = ctx->DefaultReactor();
  Meter meter(drain_);
  scheduler_.SetDraining(true);
  health_.Refresh();
  absl::Duration timeout = FromProto(req->timeout());
  absl::Duration left = absl::FromChrono(ctx->deadline()) - absl::Now();
  timeout = std::min(timeout, left - absl::Milliseconds(50));
  scheduler_.WhenIdle(timeout, [this, reactor, resp, meter](bool drained) {
    resp->set_drained(drained);
    resp->set_running(scheduler_.running());
    meter.Finish(reactor, grpc::Status::OK);
  });
  return reactor;
}

grpc::ServerUnaryReactor* PoolServiceImpl::Resume(
    grpc::CallbackServerContext* ctx, const v1::ResumeRequest*,
    v1::PoolStatus* resp) {
  auto* reactor = ctx->DefaultReactor();
  Meter meter(resume_);
  scheduler_.SetDraining(false);
  health_.Refresh();
  FillStatus(resp);
  meter.Finish(reactor, grpc::Status::OK);
  return reactor;
}

}  // namespace forq::server
