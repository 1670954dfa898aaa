// The REST route table of the HTTP gateway, derived at start-up from the
// (forq.v1.http) option on every RPC of forq's gRPC services, so the .proto
// files are the only place a route is declared.
#ifndef FORQ_SERVER_HTTP_ROUTE_TABLE_H_
#define FORQ_SERVER_HTTP_ROUTE_TABLE_H_

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/descriptor.h"

namespace forq::server {

// One route: an RPC plus its HTTP verb, path template and body rule.
// Immutable after RouteTable::Build.
struct Route {
  // One '/'-separated piece of the path template. A literal segment has
  // `var` empty. A variable segment is "{var}" followed by an optional
  // literal `suffix` such as ":wait".
  struct Segment {
    std::string literal;
    std::string var;
    std::string suffix;
  };

  std::string http_method;    // "GET", "POST", "PUT", "DELETE"
  std::string path_template;  // "/v1/tasks/{id}:wait"
  std::string body;           // "*", a request field name, or ""
  const google::protobuf::MethodDescriptor* rpc = nullptr;
  std::string grpc_method;  // "/forq.v1.TaskService/Wait"
  std::vector<Segment> segments;
  // Literal characters in the template; the most specific template wins
  // when several match a path ("/v1/tasks/{id}:wait" beats "/v1/tasks/{id}").
  int specificity = 0;
  // Field a body other than "*" maps to (null for "*" and "").
  const google::protobuf::FieldDescriptor* body_field = nullptr;

  bool client_streaming() const { return rpc->client_streaming(); }
  bool server_streaming() const { return rpc->server_streaming(); }
  // Label used for metrics: "<METHOD> <template>", never the raw path.
  std::string label() const { return http_method + " " + path_template; }
};

// Result of RouteTable::Match.
struct RouteMatch {
  enum class Kind { kFound, kNoRoute, kWrongMethod };
  Kind kind = Kind::kNoRoute;
  const Route* route = nullptr;
  // Template variable (field path) -> percent-decoded path segment value.
  std::vector<std::pair<std::string, std::string>> bindings;
  // For kWrongMethod: the methods the path accepts, e.g. "GET, POST".
  std::string allow;
};

// Thread-safe after Build (read-only).
class RouteTable {
 public:
  // Builds routes for every RPC of `services`. Fails with InvalidArgument,
  // naming the RPC, when an RPC lacks the (forq.v1.http) option, a template
  // is malformed or names no field of the request, a body field is not a
  // message field, or two RPCs claim the same method and template.
  static absl::StatusOr<std::unique_ptr<RouteTable>> Build(
      const std::vector<const google::protobuf::ServiceDescriptor*>& services);

  // The forq.v1 services linked into this binary: TaskService, PoolService,
  // and ManagerService.
  static std::vector<const google::protobuf::ServiceDescriptor*> ForqServices();

  // Matches a request path (no query string). Picks the most specific
  // template that matches `path`; then the route with `http_method` among
  // the routes sharing that template, else kWrongMethod with `allow`.
  RouteMatch Match(absl::string_view http_method, absl::string_view path) const;

  const std::vector<Route>& routes() const { return routes_; }

 private:
  RouteTable() = default;
  std::vector<Route> routes_;
};

// Percent-decodes `in` ('+' stays '+'; use for path segments). Returns false
// on a malformed escape.
bool PercentDecode(absl::string_view in, std::string* out);

// Resolves a dotted field path ("task.kind", JSON or proto names) against
// `type`. Every step but the last must be a singular message field. Returns
// the fields along the path, or InvalidArgument naming the bad step.
absl::StatusOr<std::vector<const google::protobuf::FieldDescriptor*>>
ResolveFieldPath(const google::protobuf::Descriptor* type,
                 absl::string_view path);

}  // namespace forq::server

#endif  // FORQ_SERVER_HTTP_ROUTE_TABLE_H_
