#include "server/http/rest_call.h"

#include <utility>

#include "absl/strings/str_cat.h"

#include "common/status_macros.h"
#include "server/http/builtin_endpoints.h"

namespace forq::server {
namespace {

// Task ids, object names and keys are short; a longer one is a mistake, and
// its echo in an error message would not fit gRPC's metadata limit.
constexpr size_t kMaxPathVariableBytes = 1024;

bool ParseBuffer(const grpc::ByteBuffer& buf, google::protobuf::Message* m) {
  std::vector<grpc::Slice> slices;
  if (!buf.Dump(&slices).ok()) return false;
  std::string bytes;
  for (const grpc::Slice& s : slices) {
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return m->ParseFromString(bytes);
}

// The answer for a path that matched no route with `method`, if it did not.
std::optional<HttpAnswer> Unmatched(const RouteMatch& match,
                                    absl::string_view method,
                                    absl::string_view path) {
  if (match.kind == RouteMatch::Kind::kNoRoute) {
    return ErrorAnswer(
        404, MakeHttpError(
                 absl::StatusCode::kNotFound,
                 absl::StrCat("no route for ", method, " ", path.substr(0, 200),
                              "; routes are listed in docs/api.md")));
  }
  if (match.kind == RouteMatch::Kind::kWrongMethod) {
    return ErrorAnswer(
        405,
        MakeHttpError(absl::StatusCode::kUnimplemented,
                      absl::StrCat(path.substr(0, 200), " accepts ",
                                   match.allow, ", not ", method)),
        {{"Allow", match.allow}});
  }
  return std::nullopt;
}

absl::Status CheckPathVariables(const RouteMatch& match) {
  for (const auto& [var, value] : match.bindings) {
    if (value.size() > kMaxPathVariableBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("path variable '", var, "' is ", value.size(),
                       " bytes; the limit is ", kMaxPathVariableBytes));
    }
  }
  return absl::OkStatus();
}

// The call for a matched route, or why its request is malformed.
absl::StatusOr<RestCall> BuildCall(const RouteMatch& match,
                                   absl::string_view query,
                                   absl::string_view text_header,
                                   absl::string_view body) {
  FORQ_RETURN_IF_ERROR(CheckPathVariables(match));
  FORQ_ASSIGN_OR_RETURN(std::vector<QueryParam> params, ParseQuery(query));
  RestCall call;
  call.route = match.route;
  FORQ_ASSIGN_OR_RETURN(call.render.text,
                        TextModeRequested(match.route, params, text_header));
  FORQ_ASSIGN_OR_RETURN(
      auto requests, BuildRequests(*match.route, match.bindings, params, body));
  for (const auto& m : requests) {
    grpc::Slice slice(m->SerializeAsString());
    call.requests.emplace_back(&slice, 1);
  }
  return call;
}

RestCall Rejected(std::string label, HttpAnswer answer) {
  RestCall call;
  call.label = std::move(label);
  call.rejection = std::move(answer);
  return call;
}

}  // namespace

RequestTarget SplitTarget(absl::string_view target) {
  const size_t q = target.find('?');
  return RequestTarget{target.substr(0, q), q == absl::string_view::npos
                                                ? ""
                                                : target.substr(q + 1)};
}

RequiredAccess AccessFor(const RouteTable& routes, bool metrics_need_token,
                         absl::string_view method, absl::string_view path) {
  if (path == "/metrics") {
    return {metrics_need_token ? Role::kRead : Role::kNone, "/metrics"};
  }
  if (IsBuiltinPath(path)) return {};
  const RouteMatch match = routes.Match(method, path);
  if (match.kind != RouteMatch::Kind::kFound) {
    return {Role::kRead, std::string(path.substr(0, 200))};
  }
  return {RequiredRole(match.route->grpc_method),
          match.route->grpc_method.substr(1)};
}

RestCall PrepareRestCall(const RouteTable& routes, absl::string_view method,
                         RequestTarget target, absl::string_view text_header,
                         absl::string_view body) {
  const RouteMatch match = routes.Match(method, target.path);
  if (std::optional<HttpAnswer> no = Unmatched(match, method, target.path)) {
    return Rejected("unmatched", *std::move(no));
  }
  absl::StatusOr<RestCall> call =
      BuildCall(match, target.query, text_header, body);
  if (!call.ok()) {
    return Rejected(match.route->label(), StatusAnswer(call.status()));
  }
  call->label = match.route->label();
  return *std::move(call);
}

absl::StatusOr<std::string> RenderRestResponse(const Route& route,
                                               const RenderOptions& render,
                                               const grpc::ByteBuffer& buffer) {
  auto msg = NewMessage(route.rpc->output_type());
  if (!ParseBuffer(buffer, msg.get())) {
    return absl::InternalError(
        absl::StrCat("cannot parse the ", msg->GetDescriptor()->full_name(),
                     " answered by ", route.grpc_method));
  }
  return MessageToJson(*msg, render);
}

HttpError RestErrorFor(const Route& route, const grpc::Status& status) {
  std::string message = status.error_message();
  if (message.empty()) {
    message = absl::StrCat(
        route.grpc_method.substr(1), " failed with ",
        CodeName(static_cast<absl::StatusCode>(status.error_code())));
  }
  return MakeHttpErrorFromGrpc(status.error_code(), message,
                               status.error_details());
}

}  // namespace forq::server
