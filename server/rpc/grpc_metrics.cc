#include "server/rpc/grpc_metrics.h"

#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "prometheus/family.h"

#include "forq/v1/manager.pb.h"
#include "forq/v1/pool.pb.h"
#include "forq/v1/task.pb.h"

namespace forq::server {
namespace {

using grpc::experimental::InterceptionHookPoints;

// Services whose methods get their own label value; anything else (a client
// cannot grow the label set) is "unknown".
constexpr const char* kForqServices[] = {
    "forq.v1.TaskService", "forq.v1.PoolService", "forq.v1.ManagerService"};
constexpr const char* kGrpcMethods[] = {
    "grpc.health.v1.Health/Check", "grpc.health.v1.Health/Watch",
    "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"};

class MetricsInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit MetricsInterceptor(GrpcMetrics::Method* method)
      : method_(method), start_(GrpcMetrics::Clock::now()) {}

  ~MetricsInterceptor() override {
    // A call torn down without sending a status was cancelled by the client.
    if (!recorded_) method_->Record(grpc::StatusCode::CANCELLED, start_);
  }

  void Intercept(grpc::experimental::InterceptorBatchMethods* m) override {
    if (m->QueryInterceptionHookPoint(
            InterceptionHookPoints::PRE_SEND_STATUS)) {
      recorded_ = true;
      method_->Record(m->GetSendStatus().error_code(), start_);
    }
    m->Proceed();
  }

 private:
  GrpcMetrics::Method* const method_;
  const GrpcMetrics::Clock::time_point start_;
  bool recorded_ = false;
};

class Factory final
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  Factory(GrpcMetrics* metrics, std::unique_ptr<GrpcMetrics> owned)
      : metrics_(metrics), owned_(std::move(owned)) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    GrpcMetrics::Method* m = metrics_->FromPath(info->method());
    if (m == nullptr) return nullptr;  // counted by its handler
    // gRPC owns and deletes the interceptor when the call ends.
    return new MetricsInterceptor(m);
  }

 private:
  GrpcMetrics* const metrics_;
  const std::unique_ptr<GrpcMetrics> owned_;
};

}  // namespace

void GrpcMetrics::Method::Record(grpc::StatusCode code,
                                 Clock::time_point start) {
  const int c = static_cast<int>(code);
  const int slot = c >= 0 && c < kCodes ? c : static_cast<int>(grpc::UNKNOWN);
  // A child pointer, once set, never changes; Family::Add returns the same
  // child to racing first users. Acquire pairs with the release below.
  prometheus::Counter* counter = by_code_[slot].load(std::memory_order_acquire);
  if (counter == nullptr) {
    counter = &calls_->Add(
        {{"method", name_},
         // Canonical names: "OK", "NOT_FOUND", ...
         {"code",
          absl::StatusCodeToString(static_cast<absl::StatusCode>(slot))}});
    by_code_[slot].store(counter, std::memory_order_release);
  }
  prometheus::Histogram* latency = latency_.load(std::memory_order_acquire);
  if (latency == nullptr) {
    latency =
        &latency_family_->Add({{"method", name_}}, Metrics::LatencyBuckets());
    latency_.store(latency, std::memory_order_release);
  }
  counter->Increment();
  latency->Observe(std::chrono::duration<double>(Clock::now() - start).count());
}

GrpcMetrics::GrpcMetrics(Metrics* metrics)
    :  // Registry::Add merges by name: these are Metrics' own families.
      calls_(prometheus::BuildCounter()
                 .Name("forq_grpc_requests_total")
                 .Help("gRPC calls handled, by method and code.")
                 .Register(*metrics->registry())),
      latency_(prometheus::BuildHistogram()
                   .Name("forq_grpc_request_duration_seconds")
                   .Help("gRPC call latency by method.")
                   .Register(*metrics->registry())) {
  const auto* pool = google::protobuf::DescriptorPool::generated_pool();
  for (const char* name : kForqServices) {
    const google::protobuf::ServiceDescriptor* svc =
        pool->FindServiceByName(name);
    if (svc == nullptr) continue;
    for (int i = 0; i < svc->method_count(); ++i) {
      Add(absl::StrCat(svc->full_name(), "/", svc->method(i)->name()));
    }
  }
  for (const char* name : kGrpcMethods) Add(name);
  unknown_ = Add("unknown");
}

GrpcMetrics::Method* GrpcMetrics::Add(const std::string& name) {
  auto m = std::make_unique<Method>();
  m->name_ = name;
  m->calls_ = &calls_;
  m->latency_family_ = &latency_;
  Method* raw = m.get();
  by_path_.emplace(absl::StrCat("/", name), std::move(m));
  return raw;
}

GrpcMetrics::Method* GrpcMetrics::Get(absl::string_view service,
                                      absl::string_view method) {
  auto it = by_path_.find(absl::StrCat("/", service, "/", method));
  return it == by_path_.end() ? unknown_ : it->second.get();
}

GrpcMetrics::Method* GrpcMetrics::FromPath(const char* path) {
  if (path == nullptr) return unknown_;
  auto it = by_path_.find(absl::string_view(path));
  if (it == by_path_.end()) return unknown_;
  return it->second->self_counted_ ? nullptr : it->second.get();
}

void GrpcMetrics::CountedByHandlers(absl::string_view service) {
  const std::string prefix = absl::StrCat("/", service, "/");
  for (auto& [path, m] : by_path_) {
    if (absl::StartsWith(path, prefix)) m->self_counted_ = true;
  }
}

bool GrpcMetrics::SelfCounted(const char* path) const {
  if (path == nullptr) return false;
  auto it = by_path_.find(absl::string_view(path));
  return it != by_path_.end() && it->second->self_counted_;
}

void GrpcMetrics::CountedByHandler(absl::string_view path) {
  auto it = by_path_.find(path);
  if (it != by_path_.end()) it->second->self_counted_ = true;
}

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
GrpcMetrics::MakeInterceptorFactory() {
  return std::make_unique<Factory>(this, nullptr);
}

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
MakeGrpcMetricsInterceptorFactory(Metrics* metrics) {
  auto owned = std::make_unique<GrpcMetrics>(metrics);
  GrpcMetrics* raw = owned.get();
  return std::make_unique<Factory>(raw, std::move(owned));
}

}  // namespace forq::server
