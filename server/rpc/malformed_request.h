// gRPC answers a request message that does not parse (bad wire format,
// invalid UTF-8 in a string field) on a unary or server-streaming method
// with UNIMPLEMENTED and no message, before any forq handler runs. This
// interceptor turns that answer into INVALID_ARGUMENT naming the method and
// the request type. Client-streaming methods (Map, Session, ...) see their
// bad messages in the handler and answer for themselves.
#ifndef FORQ_SERVER_RPC_MALFORMED_REQUEST_H_
#define FORQ_SERVER_RPC_MALFORMED_REQUEST_H_

#include <functional>
#include <memory>
#include <string>

#include "grpcpp/support/server_interceptor.h"

namespace forq::server {

// The status a request message that does not parse gets: INVALID_ARGUMENT,
// "request to /forq.v1.TaskService/Submit is not a valid
// forq.v1.SubmitRequest message ...". `method` is gRPC's ":path".
std::string MalformedRequestMessage(const char* method);

// Interceptor factory for ServerBuilder::experimental().
// SetInterceptorCreators(). Put it first so interceptors after it (metrics)
// see the corrected status. Stateless and thread-safe.
// Methods for which `parsed_by_handler` is true (given gRPC's ":path", which
// may be null) answer a malformed request themselves (raw bytes or
// ParsedRequest): they get no interceptor.
std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
MakeMalformedRequestInterceptorFactory(
    std::function<bool(const char* method)> parsed_by_handler = nullptr);

}  // namespace forq::server

#endif  // FORQ_SERVER_RPC_MALFORMED_REQUEST_H_
