// Counts gRPC calls in forq_grpc_requests_total{method,code} and observes
// forq_grpc_request_duration_seconds{method}. Every label child is resolved
// once (per method at start, per code on its first use), so a call costs two
// atomic adds and no label lookup. Services count their own calls where the
// status is known (GrpcMetrics::Method::Record); an interceptor covers the
// services that do not, and skips (returns no interceptor for) the rest, so
// their calls pay nothing for it.
#ifndef FORQ_SERVER_RPC_GRPC_METRICS_H_
#define FORQ_SERVER_RPC_GRPC_METRICS_H_

#include <array>
#include <atomic>
#include <chrono>
#include <memory>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "grpcpp/support/server_interceptor.h"
#include "grpcpp/support/status.h"

#include "server/metrics/metrics.h"

namespace forq::server {

// Thread-safe after construction; `metrics` is borrowed and must outlive it.
class GrpcMetrics {
 public:
  using Clock = std::chrono::steady_clock;

  // The counters of one method ("forq.v1.TaskService/Submit").
  class Method {
   public:
    // Counts one call that ended with `code`, started at `start`.
    void Record(grpc::StatusCode code, Clock::time_point start);
    const std::string& name() const { return name_; }

   private:
    friend class GrpcMetrics;
    static constexpr int kCodes = 17;
    std::string name_;
    prometheus::Family<prometheus::Counter>* calls_ = nullptr;
    prometheus::Family<prometheus::Histogram>* latency_family_ = nullptr;
    // Set before the server starts: the handlers count these calls.
    bool self_counted_ = false;
    // Children resolved on first use, so methods and codes never called
    // export no series (as before).
    std::atomic<prometheus::Histogram*> latency_{nullptr};
    std::array<std::atomic<prometheus::Counter*>, kCodes> by_code_{};
  };

  explicit GrpcMetrics(Metrics* metrics);
  GrpcMetrics(const GrpcMetrics&) = delete;
  GrpcMetrics& operator=(const GrpcMetrics&) = delete;

  // The method of `service` named `method`; its label "Service/Method".
  // Never null (methods are created for every service in the generated
  // descriptor pool that forqd links, and "unknown" for the rest).
  Method* Get(absl::string_view service, absl::string_view method);
  // From gRPC's ":path" form ("/forq.v1.TaskService/Submit").
  Method* FromPath(const char* path);
  // Calls of `service` are counted by its handlers from now on: the
  // interceptor leaves them alone. Call before the server starts.
  // `service` is a full name ("forq.v1.TaskService").
  void CountedByHandlers(absl::string_view service);
  // The same for one method, by its ":path" ("/forq.v1.ManagerService/Call").
  void CountedByHandler(absl::string_view path);
  // Whether the method at `path` (":path" form) is counted by its handler.
  bool SelfCounted(const char* path) const;

  // Interceptor factory for ServerBuilder::experimental().
  // SetInterceptorCreators(); this object must outlive the server.
  std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
  MakeInterceptorFactory();

 private:
  Method* Add(const std::string& name);

  prometheus::Family<prometheus::Counter>& calls_;
  prometheus::Family<prometheus::Histogram>& latency_;
  // Keyed by ":path"; filled in the constructor, read-only afterwards
  // (CountedByHandlers only flips flags before the server starts). Looked
  // up by gRPC's ":path" for every call, without copying it.
  absl::flat_hash_map<std::string, std::unique_ptr<Method>> by_path_;
  Method* unknown_ = nullptr;
};

// Counts every call through an interceptor (no handler counts its own).
// Used by tests that run bare gRPC services; `metrics` must outlive the
// server.
std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
MakeGrpcMetricsInterceptorFactory(Metrics* metrics);

}  // namespace forq::server

#endif  // FORQ_SERVER_RPC_GRPC_METRICS_H_
