#include "server/http/grpc_metrics.h"

#include <chrono>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_replace.h"
#include "google/protobuf/descriptor.h"

#include "server/http/http_errors.h"

namespace forq::server {
namespace {

using grpc::experimental::InterceptionHookPoints;

// Bounded label: only methods whose service is linked into forqd (or gRPC's
// own health and reflection services) get their own value.
std::string MethodLabel(const char* raw) {
  if (raw == nullptr || raw[0] != '/') return "unknown";
  const std::string method(raw + 1);
  if (absl::StartsWith(method, "grpc.health.v1.Health/") ||
      absl::StartsWith(method, "grpc.reflection.v1alpha.ServerReflection/")) {
    return method;
  }
  const std::string dotted = absl::StrReplaceAll(method, {{"/", "."}});
  if (google::protobuf::DescriptorPool::generated_pool()->FindMethodByName(
          dotted) != nullptr) {
    return method;
  }
  return "unknown";
}

class MetricsInterceptor final : public grpc::experimental::Interceptor {
 public:
  MetricsInterceptor(Metrics* metrics, std::string method)
      : metrics_(metrics),
        method_(std::move(method)),
        start_(std::chrono::steady_clock::now()) {}

  ~MetricsInterceptor() override {
    // A call torn down without sending a status was cancelled by the client.
    if (!recorded_) Record(absl::StatusCode::kCancelled);
  }

  void Intercept(grpc::experimental::InterceptorBatchMethods* m) override {
    if (m->QueryInterceptionHookPoint(
            InterceptionHookPoints::PRE_SEND_STATUS)) {
      Record(static_cast<absl::StatusCode>(m->GetSendStatus().error_code()));
    }
    m->Proceed();
  }

 private:
  void Record(absl::StatusCode code) {
    recorded_ = true;
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_)
            .count();
    metrics_->GrpcHandled(method_, CodeName(code), secs);
  }

  Metrics* const metrics_;
  const std::string method_;
  const std::chrono::steady_clock::time_point start_;
  bool recorded_ = false;
};

class Factory final
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit Factory(Metrics* metrics) : metrics_(metrics) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    // gRPC owns and deletes the interceptor when the call ends.
    return new MetricsInterceptor(metrics_, MethodLabel(info->method()));
  }

 private:
  Metrics* const metrics_;
};

}  // namespace

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
MakeGrpcMetricsInterceptorFactory(Metrics* metrics) {
  return std::make_unique<Factory>(metrics);
}

}  // namespace forq::server
