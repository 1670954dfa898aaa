#include "server/metrics/metrics.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "prometheus/text_serializer.h"

namespace forq::server {
namespace {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;

std::string S(absl::string_view v) { return std::string(v); }

// Label values joined into a cache key; \x1f cannot occur in a queue, kind,
// state, method or route name.
std::string Key(absl::string_view a, absl::string_view b = {},
                absl::string_view c = {}) {
  return absl::StrCat(a, "\x1f", b, "\x1f", c);
}

}  // namespace

std::vector<double> Metrics::DurationBuckets() {
  return {0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5,  1,    2.5, 5,
          10,    30,    60,   120,  300, 600,  1800, 3600, 7200};
}

std::vector<double> Metrics::LatencyBuckets() {
  return {0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
          0.05,    0.1,    0.25,    0.5,    1,     5,      30,    60};
}

Metrics::Metrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      submitted_(BuildCounter()
                     .Name("forq_tasks_submitted_total")
                     .Help("Tasks accepted by Submit/SubmitBatch/Map.")
                     .Register(*registry_)),
      finished_(BuildCounter()
                    .Name("forq_tasks_finished_total")
                    .Help("Tasks that reached a terminal state.")
                    .Register(*registry_)),
      retries_(BuildCounter()
                   .Name("forq_task_retries_total")
                   .Help("Failed attempts that were queued for another try.")
                   .Register(*registry_)),
      stale_(BuildCounter()
                 .Name("forq_stale_completions_total")
                 .Help("Completions refused because their attempt was no "
                       "longer current.")
                 .Register(*registry_)),
      fenced_(BuildCounter()
                  .Name("forq_store_fenced_completions_total")
                  .Help("Cluster mode: completions refused because the "
                        "attempt's lease had been reclaimed.")
                  .Register(*registry_)),
      duration_(BuildHistogram()
                    .Name("forq_task_duration_seconds")
                    .Help("Run time of task attempts in a worker.")
                    .Register(*registry_)),
      queue_wait_(BuildHistogram()
                      .Name("forq_task_queue_wait_seconds")
                      .Help("Time from ready to dispatch.")
                      .Register(*registry_)),
      queue_depth_(BuildGauge()
                       .Name("forq_queue_depth")
                       .Help("Unfinished tasks by queue and state.")
                       .Register(*registry_)),
      oldest_age_(BuildGauge()
                      .Name("forq_queue_oldest_age_seconds")
                      .Help("Age of the oldest queued task by queue.")
                      .Register(*registry_)),
      worker_restarts_(BuildCounter()
                           .Name("forq_worker_restarts_total")
                           .Help("Worker processes replaced, by reason.")
                           .Register(*registry_)),
      workers_(BuildGauge()
                   .Name("forq_workers")
                   .Help("Worker processes by state.")
                   .Register(*registry_)),
      worker_rss_(BuildGauge()
                      .Name("forq_worker_rss_bytes")
                      .Help("Resident memory of all worker processes.")
                      .Register(*registry_)),
      manager_ops_(BuildCounter()
                       .Name("forq_manager_ops_total")
                       .Help("Manager operations by object type and op.")
                       .Register(*registry_)),
      task_waits_(BuildGauge()
                      .Name("forq_task_waits")
                      .Help("Waits parked for a task's terminal state.")
                      .Register(*registry_)),
      manager_waiters_(BuildGauge()
                           .Name("forq_manager_waiters")
                           .Help("Blocked Manager calls (locks, queues, ...).")
                           .Register(*registry_)),
      manager_sessions_(BuildGauge()
                            .Name("forq_manager_sessions")
                            .Help("Open Manager sessions.")
                            .Register(*registry_)),
      manager_local_connections_(
          BuildGauge()
              .Name("forq_manager_local_connections")
              .Help("Connections open on the local Manager socket.")
              .Register(*registry_)),
      manager_objects_(BuildGauge()
                           .Name("forq_manager_objects")
                           .Help("Named Manager objects.")
                           .Register(*registry_)),
      grpc_handled_(BuildCounter()
                        .Name("forq_grpc_requests_total")
                        .Help("gRPC calls handled, by method and code.")
                        .Register(*registry_)),
      grpc_latency_(BuildHistogram()
                        .Name("forq_grpc_request_duration_seconds")
                        .Help("gRPC call latency by method.")
                        .Register(*registry_)),
      http_handled_(BuildCounter()
                        .Name("forq_http_requests_total")
                        .Help("HTTP requests handled, by route and status.")
                        .Register(*registry_)),
      http_latency_(BuildHistogram()
                        .Name("forq_http_request_duration_seconds")
                        .Help("HTTP request latency by route.")
                        .Register(*registry_)) {}

std::string Metrics::Scrape() {
  std::vector<std::function<void()>> hooks;
  {
    MutexLock lock(&hooks_mu_);
    hooks = hooks_;
  }
  for (auto& hook : hooks) hook();
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

void Metrics::AddRefreshHook(std::function<void()> hook) {
  MutexLock lock(&hooks_mu_);
  hooks_.push_back(std::move(hook));
}

void Metrics::TaskSubmitted(absl::string_view queue, int n) {
  submitted_by_
      .Get(Key(queue),
           [&]() -> prometheus::Counter& {
             return submitted_.Add({{"queue", S(queue)}});
           })
      .Increment(n);
}

void Metrics::TaskFinished(absl::string_view queue, absl::string_view state) {
  FinishedChild(queue, state).Increment();
}

void Metrics::TaskRetried(absl::string_view queue) {
  RetriedChild(queue).Increment();
}

void Metrics::TaskAttempt(absl::string_view queue, absl::string_view kind,
                          absl::string_view outcome, double seconds) {
  AttemptChild(queue, kind, outcome).Observe(seconds);
}

void Metrics::TaskQueueWait(absl::string_view queue, double seconds) {
  QueueWaitChild(queue).Observe(seconds);
}

prometheus::Counter& Metrics::FinishedChild(absl::string_view queue,
                                            absl::string_view state) {
  return finished_by_.Get(Key(queue, state), [&]() -> prometheus::Counter& {
    return finished_.Add({{"queue", S(queue)}, {"state", S(state)}});
  });
}

prometheus::Counter& Metrics::RetriedChild(absl::string_view queue) {
  return retries_by_.Get(Key(queue), [&]() -> prometheus::Counter& {
    return retries_.Add({{"queue", S(queue)}});
  });
}

prometheus::Histogram& Metrics::AttemptChild(absl::string_view queue,
                                             absl::string_view kind,
                                             absl::string_view outcome) {
  return duration_by_.Get(
      Key(queue, kind, outcome), [&]() -> prometheus::Histogram& {
        return duration_.Add(
            {{"queue", S(queue)}, {"kind", S(kind)}, {"outcome", S(outcome)}},
            DurationBuckets());
      });
}

prometheus::Histogram& Metrics::QueueWaitChild(absl::string_view queue) {
  return queue_wait_by_.Get(Key(queue), [&]() -> prometheus::Histogram& {
    return queue_wait_.Add({{"queue", S(queue)}}, DurationBuckets());
  });
}

void TaskMetrics::Finished(int slot, absl::string_view state) {
  prometheus::Counter*& c = finished_.at(slot);
  if (c == nullptr) c = &metrics_.FinishedChild(queue_, state);
  c->Increment();
}

void TaskMetrics::Attempt(int slot, absl::string_view outcome, double seconds) {
  prometheus::Histogram*& h = attempt_.at(slot);
  if (h == nullptr) h = &metrics_.AttemptChild(queue_, kind_, outcome);
  h->Observe(seconds);
}

void TaskMetrics::QueueWait(double seconds) {
  if (queue_wait_ == nullptr) queue_wait_ = &metrics_.QueueWaitChild(queue_);
  queue_wait_->Observe(seconds);
}

void TaskMetrics::Retried() {
  if (retried_ == nullptr) retried_ = &metrics_.RetriedChild(queue_);
  retried_->Increment();
}

void Metrics::StaleCompletion() { stale_.Add({}).Increment(); }
void Metrics::FencedCompletion(int n) { fenced_.Add({}).Increment(n); }

void Metrics::SetQueueDepth(absl::string_view queue, absl::string_view state,
                            double value) {
  queue_depth_.Add({{"queue", S(queue)}, {"state", S(state)}}).Set(value);
}

void Metrics::SetQueueOldestAge(absl::string_view queue, double seconds) {
  oldest_age_.Add({{"queue", S(queue)}}).Set(seconds);
}

void Metrics::WorkerRestart(absl::string_view reason) {
  worker_restarts_.Add({{"reason", S(reason)}}).Increment();
}

void Metrics::SetWorkers(absl::string_view state, double value) {
  workers_.Add({{"state", S(state)}}).Set(value);
}

void Metrics::SetWorkerRssBytes(double total) {
  worker_rss_.Add({}).Set(total);
}

void Metrics::ManagerOp(absl::string_view type, absl::string_view op,
                        double n) {
  manager_ops_.Add({{"type", S(type)}, {"op", S(op)}}).Increment(n);
}

void Metrics::SetTaskWaits(double value) { task_waits_.Add({}).Set(value); }

void Metrics::SetManagerWaiters(double value) {
  manager_waiters_.Add({}).Set(value);
}

void Metrics::SetManagerSessions(double value) {
  manager_sessions_.Add({}).Set(value);
}

void Metrics::SetManagerLocalConnections(double value) {
  manager_local_connections_.Add({}).Set(value);
}

void Metrics::SetManagerObjects(double value) {
  manager_objects_.Add({}).Set(value);
}

void Metrics::GrpcHandled(absl::string_view method, absl::string_view code,
                          double seconds) {
  grpc_handled_by_
      .Get(Key(method, code),
           [&]() -> prometheus::Counter& {
             return grpc_handled_.Add(
                 {{"method", S(method)}, {"code", S(code)}});
           })
      .Increment();
  grpc_latency_by_
      .Get(
          Key(method),
          [&]() -> prometheus::Histogram& {
            return grpc_latency_.Add({{"method", S(method)}}, LatencyBuckets());
          })
      .Observe(seconds);
}

void Metrics::HttpHandled(absl::string_view route, absl::string_view code,
                          double seconds) {
  http_handled_by_
      .Get(Key(route, code),
           [&]() -> prometheus::Counter& {
             return http_handled_.Add({{"route", S(route)}, {"code", S(code)}});
           })
      .Increment();
  http_latency_by_
      .Get(Key(route),
           [&]() -> prometheus::Histogram& {
             return http_latency_.Add({{"route", S(route)}}, LatencyBuckets());
           })
      .Observe(seconds);
}

}  // namespace forq::server
