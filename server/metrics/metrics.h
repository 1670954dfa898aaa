// forqd's Prometheus metrics: one registry, the metric families of
// docs/metrics.md, and typed helpers so label sets stay bounded (never a
// task id as a label).
#ifndef FORQ_SERVER_METRICS_METRICS_H_
#define FORQ_SERVER_METRICS_METRICS_H_

#include <array>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

#include "common/mutex.h"

namespace forq::server {

// Children of one metric family by label values, resolved once:
// prometheus-cpp's Family::Add builds and hashes a label map (and, for
// histograms, a bucket vector) on every call, which the task path cannot
// afford per task. Thread-safe.
template <typename T>
class MetricChildren {
 public:
  // The child for `key` (the label values joined), made by `make` the
  // first time.
  template <typename Make>
  T& Get(const std::string& key, Make make) ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(&mu_);
    auto it = children_.find(key);
    if (it != children_.end()) return *it->second;
    T& child = make();
    children_.emplace(key, &child);
    return child;
  }

 private:
  Mutex mu_;
  absl::flat_hash_map<std::string, T*> children_ ABSL_GUARDED_BY(mu_);
};

// Thread-safe.
class Metrics {
 public:
  Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // Runs the refresh hooks (gauges computed on demand), then serializes the
  // registry in the Prometheus text format.
  std::string Scrape();
  // Registers `hook` to run at every Scrape() before serialization.
  void AddRefreshHook(std::function<void()> hook);
  std::shared_ptr<prometheus::Registry> registry() { return registry_; }

  // Tasks.
  void TaskSubmitted(absl::string_view queue, int n = 1);
  // `state` is the lower-case terminal state: succeeded, failed, dead,
  // cancelled.
  void TaskFinished(absl::string_view queue, absl::string_view state);
  void TaskRetried(absl::string_view queue);
  // `outcome`: succeeded, error, timeout, signaled, oom, lost, cancelled.
  void TaskAttempt(absl::string_view queue, absl::string_view kind,
                   absl::string_view outcome, double seconds);
  void TaskQueueWait(absl::string_view queue, double seconds);
  void StaleCompletion();
  // Cluster mode: a completion refused because another node's newer
  // attempt owns the task (forq_store_fenced_completions_total).
  void FencedCompletion(int n = 1);
  void SetQueueDepth(absl::string_view queue, absl::string_view state,
                     double value);
  void SetQueueOldestAge(absl::string_view queue, double seconds);

  // Workers.
  void WorkerRestart(absl::string_view reason);
  void SetWorkers(absl::string_view state, double value);
  void SetWorkerRssBytes(double total);

  // Waits parked for a task's terminal state (Wait, WaitStream, Submit
  // with wait, Map results).
  void SetTaskWaits(double value);

  // Manager.
  void ManagerOp(absl::string_view type, absl::string_view op, double n = 1);
  void SetManagerWaiters(double value);
  void SetManagerSessions(double value);
  // Connections open on the local Manager socket (--manager_socket).
  void SetManagerLocalConnections(double value);
  void SetManagerObjects(double value);

  // Front ends. `method` is the RPC or route name, `code` the gRPC code name
  // or HTTP status.
  void GrpcHandled(absl::string_view method, absl::string_view code,
                   double seconds);
  void HttpHandled(absl::string_view route, absl::string_view code,
                   double seconds);

  // Buckets for durations from 1 ms to 2 h.
  static std::vector<double> DurationBuckets();
  // Buckets for request latency from 50 us to 60 s.
  static std::vector<double> LatencyBuckets();

 private:
  friend class TaskMetrics;
  prometheus::Counter& FinishedChild(absl::string_view queue,
                                     absl::string_view state);
  prometheus::Counter& RetriedChild(absl::string_view queue);
  prometheus::Histogram& AttemptChild(absl::string_view queue,
                                      absl::string_view kind,
                                      absl::string_view outcome);
  prometheus::Histogram& QueueWaitChild(absl::string_view queue);

  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& submitted_;
  prometheus::Family<prometheus::Counter>& finished_;
  prometheus::Family<prometheus::Counter>& retries_;
  prometheus::Family<prometheus::Counter>& stale_;
  prometheus::Family<prometheus::Counter>& fenced_;
  prometheus::Family<prometheus::Histogram>& duration_;
  prometheus::Family<prometheus::Histogram>& queue_wait_;
  prometheus::Family<prometheus::Gauge>& queue_depth_;
  prometheus::Family<prometheus::Gauge>& oldest_age_;
  prometheus::Family<prometheus::Counter>& worker_restarts_;
  prometheus::Family<prometheus::Gauge>& workers_;
  prometheus::Family<prometheus::Gauge>& worker_rss_;
  prometheus::Family<prometheus::Counter>& manager_ops_;
  prometheus::Family<prometheus::Gauge>& task_waits_;
  prometheus::Family<prometheus::Gauge>& manager_waiters_;
  prometheus::Family<prometheus::Gauge>& manager_sessions_;
  prometheus::Family<prometheus::Gauge>& manager_local_connections_;
  prometheus::Family<prometheus::Gauge>& manager_objects_;
  prometheus::Family<prometheus::Counter>& grpc_handled_;
  prometheus::Family<prometheus::Histogram>& grpc_latency_;
  prometheus::Family<prometheus::Counter>& http_handled_;
  prometheus::Family<prometheus::Histogram>& http_latency_;

  MetricChildren<prometheus::Counter> submitted_by_, finished_by_, retries_by_,
      grpc_handled_by_, http_handled_by_;
  MetricChildren<prometheus::Histogram> duration_by_, queue_wait_by_,
      grpc_latency_by_, http_latency_by_;

  Mutex hooks_mu_;
  std::vector<std::function<void()>> hooks_ ABSL_GUARDED_BY(hooks_mu_);
};

// The task-path metrics of one queue and kind, for a caller that keeps it
// per task (the scheduler): each child is resolved on first use, then
// reached with no key to build, no lookup and no lock. `slot` (< kSlots)
// stands for the label given with it (an enum value), so each label's
// child is resolved once. Not thread-safe: its owner serialises the calls.
class TaskMetrics {
 public:
  static constexpr int kSlots = 16;
  TaskMetrics(Metrics& metrics, std::string queue, std::string kind)
      : metrics_(metrics), queue_(std::move(queue)), kind_(std::move(kind)) {}
  const std::string& queue() const { return queue_; }
  const std::string& kind() const { return kind_; }

  // As Metrics::TaskFinished, TaskAttempt, TaskQueueWait and TaskRetried.
  void Finished(int slot, absl::string_view state);
  void Attempt(int slot, absl::string_view outcome, double seconds);
  void QueueWait(double seconds);
  void Retried();

 private:
  Metrics& metrics_;
  const std::string queue_;
  const std::string kind_;
  std::array<prometheus::Counter*, kSlots> finished_{};
  std::array<prometheus::Histogram*, kSlots> attempt_{};
  prometheus::Histogram* queue_wait_ = nullptr;
  prometheus::Counter* retried_ = nullptr;
};

}  // namespace forq::server

#endif  // FORQ_SERVER_METRICS_METRICS_H_
