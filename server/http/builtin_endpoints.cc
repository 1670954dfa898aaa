#include "server/http/builtin_endpoints.h"

#include "absl/strings/str_cat.h"

#include "server/http/http_errors.h"

namespace forq::server {
namespace {

HttpAnswer Ok(absl::string_view content_type, std::string body) {
  return HttpAnswer{200, std::string(content_type), std::move(body), {}};
}

HttpAnswer Readiness(const HttpGatewayOptions& options) {
  if (!options.readiness) {
    return Ok(kJsonType, "{\"status\":\"ready\",\"ready\":true}");
  }
  const ReadyState s = options.readiness();
  HttpAnswer answer =
      Ok(kJsonType,
         absl::StrCat("{\"status\":", s.ready ? "\"ready\"" : "\"not_ready\"",
                      ",\"ready\":", s.ready ? "true" : "false",
                      ",\"store_open\":", s.store_open ? "true" : "false",
                      ",\"live_workers\":", s.live_workers,
                      ",\"draining\":", s.draining ? "true" : "false",
                      ",\"message\":", JsonQuote(s.message), "}"));
  if (!s.ready) answer.status = 503;
  return answer;
}

}  // namespace

bool IsBuiltinPath(absl::string_view path) {
  return path == "/metrics" || path == "/healthz" || path == "/readyz" ||
         path == "/openapi.yaml";
}

HttpAnswer AnswerBuiltin(absl::string_view method, absl::string_view path,
                         const HttpGatewayOptions& options,
                         const std::string& openapi) {
  if (method != "GET") {
    return ErrorAnswer(
        405,
        MakeHttpError(absl::StatusCode::kUnimplemented,
                      absl::StrCat(path, " accepts GET, not ", method)),
        {{"Allow", "GET"}});
  }
  if (path == "/healthz") return Ok(kJsonType, "{\"status\":\"ok\"}");
  if (path == "/openapi.yaml") return Ok("application/yaml", openapi);
  if (path == "/metrics") {
    if (options.metrics == nullptr) {
      return ErrorAnswer(503, MakeHttpError(absl::StatusCode::kUnavailable,
                                            "metrics are not configured"));
    }
    return Ok(kMetricsType, options.metrics->Scrape());
  }
  return Readiness(options);
}

}  // namespace forq::server
