// A gRPC server interceptor that counts every handled RPC by method and
// status code and observes its latency (forq_grpc_requests_total,
// forq_grpc_request_duration_seconds).
#ifndef FORQ_SERVER_HTTP_GRPC_METRICS_H_
#define FORQ_SERVER_HTTP_GRPC_METRICS_H_

#include <memory>

#include "grpcpp/support/server_interceptor.h"

#include "server/metrics/metrics.h"

namespace forq::server {

// Returns a factory for ServerBuilder::experimental().
// SetInterceptorCreators(). `metrics` is borrowed and must outlive the
// server. The method label is "Service/Method" (e.g.
// "forq.v1.TaskService/Wait") for RPCs known to this binary and "unknown"
// otherwise, so a client cannot grow the label set; the code label is the
// canonical gRPC code name. Latency runs from the start of the call to the
// status being sent. Thread-safe.
std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
MakeGrpcMetricsInterceptorFactory(Metrics* metrics);

}  // namespace forq::server

#endif  // FORQ_SERVER_HTTP_GRPC_METRICS_H_
