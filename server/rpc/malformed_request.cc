#include "server/rpc/malformed_request.h"

#include <functional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "google/protobuf/descriptor.h"
#include "grpcpp/support/status.h"

namespace forq::server {
namespace {

using grpc::experimental::InterceptionHookPoints;

// One per call of a method whose request gRPC decodes before the handler
// (unary, server streaming). gRPC owns it and deletes it when the call ends;
// its hooks run one at a time for the call.
class MalformedRequestInterceptor final
    : public grpc::experimental::Interceptor {
 public:
  explicit MalformedRequestInterceptor(const char* method) : method_(method) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* m) override {
    // gRPC hands interceptors a null message when decoding failed; the
    // handler then never runs and gRPC finishes the call UNIMPLEMENTED.
    if (m->QueryInterceptionHookPoint(
            InterceptionHookPoints::POST_RECV_MESSAGE) &&
        m->GetRecvMessage() == nullptr) {
      malformed_ = true;
    }
    if (malformed_ && m->QueryInterceptionHookPoint(
                          InterceptionHookPoints::PRE_SEND_STATUS)) {
      m->ModifySendStatus(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                       MalformedRequestMessage(method_)));
    }
    m->Proceed();
  }

 private:
  const char* const method_;  // gRPC's, valid for the call
  bool malformed_ = false;
};

class Factory final
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit Factory(std::function<bool(const char*)> parsed_by_handler)
      : parsed_by_handler_(std::move(parsed_by_handler)) {}

  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    using Type = grpc::experimental::ServerRpcInfo::Type;
    // Streamed requests are read (and refused) by their handlers.
    if (info->type() == Type::CLIENT_STREAMING ||
        info->type() == Type::BIDI_STREAMING) {
      return nullptr;
    }
    if (parsed_by_handler_ && parsed_by_handler_(info->method())) {
      return nullptr;
    }
    // gRPC owns and deletes the interceptor when the call ends.
    return new MalformedRequestInterceptor(info->method());
  }

 private:
  const std::function<bool(const char*)> parsed_by_handler_;
};

}  // namespace

std::string MalformedRequestMessage(const char* method) {
  absl::string_view path = method != nullptr ? method : "";
  std::string type = "request";
  // ":path" is "/package.Service/Method".
  absl::string_view full = absl::StripPrefix(path, "/");
  const size_t slash = full.rfind('/');
  if (slash != absl::string_view::npos) {
    const google::protobuf::ServiceDescriptor* service =
        google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(
            std::string(full.substr(0, slash)));
    const google::protobuf::MethodDescriptor* rpc =
        service == nullptr
            ? nullptr
            : service->FindMethodByName(std::string(full.substr(slash + 1)));
    if (rpc != nullptr) type = rpc->input_type()->full_name();
  }
  return absl::StrCat("request to ", path, " is not a valid ", type,
                      " message (bad protobuf wire format, or a string "
                      "field that is not valid UTF-8)");
}

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
MakeMalformedRequestInterceptorFactory(
    std::function<bool(const char* method)> parsed_by_handler) {
  return std::make_unique<Factory>(std::move(parsed_by_handler));
}

}  // namespace forq::server
