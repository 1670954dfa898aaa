// Unary and server-streaming methods whose handlers see a request that does
// not parse, so that no interceptor is needed in any of their calls.
//
// gRPC decodes the request of such a method before the handler runs and
// answers one that does not parse with UNIMPLEMENTED and no message;
// MalformedRequestInterceptor corrects that answer, but any interceptor in a
// call routes every operation batch of the call through gRPC's interceptor
// machinery (about 15,000 instructions per unary call here, a fifth of a
// GetPool; bench/RESULTS.md). A method registered with ParsedRequests
// decodes into ParsedRequest<T>, which always "parses": a request that does
// not is flagged, and the handler answers INVALID_ARGUMENT with
// MalformedRequestMessage, counted like any call of the method.
#ifndef FORQ_SERVER_RPC_PARSED_REQUEST_H_
#define FORQ_SERVER_RPC_PARSED_REQUEST_H_

#include <string>
#include <utility>

#include "google/protobuf/descriptor.h"
#include "grpcpp/impl/codegen/server_callback_handlers.h"
#include "grpcpp/support/server_callback.h"

#include "server/rpc/grpc_metrics.h"
#include "server/rpc/malformed_request.h"
#include "server/rpc/reactor_util.h"

namespace forq::server {

template <typename T>
struct ParsedRequest {
  T msg;
  bool malformed = false;
};

}  // namespace forq::server

namespace grpc {

// Decoding never fails the call: the handler learns of a bad request from
// `malformed` (the message then holds whatever parsed before the error).
template <typename T>
class SerializationTraits<forq::server::ParsedRequest<T>, void> {
 public:
  static Status Serialize(const forq::server::ParsedRequest<T>& m,
                          ByteBuffer* bb, bool* own_buffer) {
    return SerializationTraits<T>::Serialize(m.msg, bb, own_buffer);
  }
  static Status Deserialize(ByteBuffer* bb, forq::server::ParsedRequest<T>* m) {
    m->malformed = !SerializationTraits<T>::Deserialize(bb, &m->msg).ok();
    return Status::OK;
  }
};

}  // namespace grpc

namespace forq::server {

// A server-streaming call refused before it started.
template <typename Resp>
class RefusedWriteReactor final : public grpc::ServerWriteReactor<Resp> {
 public:
  explicit RefusedWriteReactor(grpc::Status status) {
    this->Finish(std::move(status));
  }
  void OnDone() override { delete this; }
};

// Mixed into a generated CallbackService (`Base`): Parse* re-register one of
// its methods so that the service's handler gets the parsed request, and a
// request that does not parse is answered here. Call them from the
// service's constructor, before the server starts.
template <typename Base>
class ParsedRequests : public Base {
 protected:
  // Re-registers `fn` of the service (`Svc`, the class deriving from this
  // mixin), method `method` of `service` (full proto name, e.g.
  // "forq.v1.TaskService"). `counted` counts the refused calls (may be
  // null).
  template <typename Svc, typename Req, typename Resp>
  void ParseUnary(const char* service, const char* method,
                  GrpcMetrics::Method* counted,
                  grpc::ServerUnaryReactor* (Svc::*fn)(
                      grpc::CallbackServerContext*, const Req*, Resp*)) {
    const auto [index, path] = Find(service, method);
    Svc* self = static_cast<Svc*>(this);
    this->MarkMethodCallback(
        index,
        new grpc::internal::CallbackUnaryHandler<ParsedRequest<Req>, Resp>(
            [self, fn, counted, path = path](grpc::CallbackServerContext* ctx,
                                             const ParsedRequest<Req>* req,
                                             Resp* resp) {
              if (!req->malformed) return (self->*fn)(ctx, &req->msg, resp);
              grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
              Meter(counted).Finish(reactor, Refusal(path));
              return reactor;
            }));
  }

  template <typename Svc, typename Req, typename Resp>
  void ParseServerStreaming(const char* service, const char* method,
                            GrpcMetrics::Method* counted,
                            grpc::ServerWriteReactor<Resp>* (Svc::*fn)(
                                grpc::CallbackServerContext*, const Req*)) {
    const auto [index, path] = Find(service, method);
    Svc* self = static_cast<Svc*>(this);
    this->MarkMethodCallback(
        index,
        new grpc::internal::CallbackServerStreamingHandler<ParsedRequest<Req>,
                                                           Resp>(
            [self, fn, counted, path = path](grpc::CallbackServerContext* ctx,
                                             const ParsedRequest<Req>* req)
                -> grpc::ServerWriteReactor<Resp>* {
              if (!req->malformed) return (self->*fn)(ctx, &req->msg);
              grpc::Status refused = Refusal(path);
              Meter(counted).Done(refused.error_code());
              return new RefusedWriteReactor<Resp>(std::move(refused));
            }));
  }

 private:
  // The method's index in the generated service (its order in the proto)
  // and its ":path".
  static std::pair<int, std::string> Find(const char* service,
                                          const char* method) {
    const google::protobuf::MethodDescriptor* m =
        google::protobuf::DescriptorPool::generated_pool()
            ->FindServiceByName(service)
            ->FindMethodByName(method);
    return {m->index(), std::string("/") + service + "/" + method};
  }

  static grpc::Status Refusal(const std::string& path) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        MalformedRequestMessage(path.c_str()));
  }
};

}  // namespace forq::server

#endif  // FORQ_SERVER_RPC_PARSED_REQUEST_H_
