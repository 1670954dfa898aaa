// How the HTTP gateway maps a REST request onto the RPC it stands for (the
// route, the role it needs, the request messages) and the RPC's answer back
// onto JSON.
#ifndef FORQ_SERVER_HTTP_REST_CALL_H_
#define FORQ_SERVER_HTTP_REST_CALL_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/status.h"

#include "server/auth/token_auth.h"
#include "server/http/http_errors.h"
#include "server/http/http_response.h"
#include "server/http/json_transcoder.h"
#include "server/http/route_table.h"

namespace forq::server {

// A request target split at the first '?'.
struct RequestTarget {
  absl::string_view path;
  absl::string_view query;  // empty when there is none
};
RequestTarget SplitTarget(absl::string_view target);

// The role a request needs and the name an authorization error gives it.
struct RequiredAccess {
  Role role = Role::kNone;
  std::string what;
};

// What `method` on `path` needs: nothing for /healthz, /readyz and
// /openapi.yaml; kRead for /metrics when `metrics_need_token`; the RPC's
// role for a route; kRead for an unknown route, so that learning which
// routes exist needs a token too.
RequiredAccess AccessFor(const RouteTable& routes, bool metrics_need_token,
                         absl::string_view method, absl::string_view path);

// A REST request ready to forward, or the answer that refuses it.
struct RestCall {
  // Metrics label: the route's label, or "unmatched".
  std::string label;
  // Set when the request is forwarded: the route, how to render its
  // answers, and the serialized request messages (at least one).
  const Route* route = nullptr;
  RenderOptions render;
  std::vector<grpc::ByteBuffer> requests;
  // Set instead when the request is not forwarded: 404 for no route, 405
  // (with Allow) for a wrong method, 400 for an oversized path variable or a
  // bad query, header or body.
  std::optional<HttpAnswer> rejection;
};

// Maps `method` on `target` (path and query) with `text_header` (the
// X-Forq-Text value, empty when absent) and `body` onto its RPC.
RestCall PrepareRestCall(const RouteTable& routes, absl::string_view method,
                         RequestTarget target, absl::string_view text_header,
                         absl::string_view body);

// One response message of `route` as JSON; Internal when it does not parse.
absl::StatusOr<std::string> RenderRestResponse(const Route& route,
                                               const RenderOptions& render,
                                               const grpc::ByteBuffer& buffer);

// The HTTP error for a failed call of `route`. gRPC's own errors (e.g.
// UNIMPLEMENTED for an unregistered service) come without a message; the
// RPC is named then so the answer is never blank.
HttpError RestErrorFor(const Route& route, const grpc::Status& status);

}  // namespace forq::server

#endif  // FORQ_SERVER_HTTP_REST_CALL_H_
