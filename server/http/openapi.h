// Generates the OpenAPI 3 description of the REST API from the same route
// table the gateway serves, so api/openapi.yaml can never drift from the
// protos (a test compares the committed file with this output).
#ifndef FORQ_SERVER_HTTP_OPENAPI_H_
#define FORQ_SERVER_HTTP_OPENAPI_H_

#include <string>

#include "server/http/route_table.h"

namespace forq::server {

// OpenAPI 3.0.3 document (YAML) for every route of `routes` plus /metrics,
// /healthz and /readyz. Schemas follow protobuf's JSON mapping with proto
// field names, as the gateway prints them. Deterministic output.
std::string GenerateOpenApi(const RouteTable& routes);

}  // namespace forq::server

#endif  // FORQ_SERVER_HTTP_OPENAPI_H_
