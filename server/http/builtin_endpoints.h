// The HTTP gateway's own endpoints, answered without a gRPC call: /healthz,
// /readyz, /metrics and /openapi.yaml.
#ifndef FORQ_SERVER_HTTP_BUILTIN_ENDPOINTS_H_
#define FORQ_SERVER_HTTP_BUILTIN_ENDPOINTS_H_

#include <string>

#include "absl/strings/string_view.h"

#include "server/http/http_gateway.h"
#include "server/http/http_response.h"

namespace forq::server {

// True for the paths AnswerBuiltin serves (`path` without the query).
bool IsBuiltinPath(absl::string_view path);

// The answer to `method` on the builtin `path`: 405 for anything but GET;
// /metrics scrapes options.metrics (503 when null); /readyz asks
// options.readiness (200 or 503); /openapi.yaml is `openapi`.
HttpAnswer AnswerBuiltin(absl::string_view method, absl::string_view path,
                         const HttpGatewayOptions& options,
                         const std::string& openapi);

}  // namespace forq::server

#endif  // FORQ_SERVER_HTTP_BUILTIN_ENDPOINTS_H_
