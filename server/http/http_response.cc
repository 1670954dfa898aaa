#include "server/http/http_response.h"

#include <cstdio>

#include "absl/strings/str_cat.h"
#include "boost/beast/http/status.hpp"

namespace forq::server {
namespace {

namespace http = boost::beast::http;

std::string Reason(int status) {
  if (status == 499) return "Client Closed Request";
  boost::beast::string_view r =
      http::obsolete_reason(http::int_to_status(status));
  return std::string(r.data(), r.size());
}

}  // namespace

HttpAnswer ErrorAnswer(int status, const HttpError& error, HttpHeaders extra) {
  return HttpAnswer{status, std::string(kJsonType), error.body,
                    std::move(extra)};
}

HttpAnswer StatusAnswer(const absl::Status& status) {
  return ErrorAnswer(HttpStatusForCode(status.code()),
                     MakeHttpError(status.code(), status.message()));
}

std::string ResponseHead(int status, absl::string_view content_type,
                         const HttpHeaders& extra, bool keep_alive) {
  std::string h =
      absl::StrCat("HTTP/1.1 ", status, " ", Reason(status),
                   "\r\nServer: forqd\r\nContent-Type: ", content_type, "\r\n");
  for (const auto& [k, v] : extra) absl::StrAppend(&h, k, ": ", v, "\r\n");
  absl::StrAppend(&h, "Connection: ", keep_alive ? "keep-alive" : "close",
                  "\r\n");
  return h;
}

std::string SerializeAnswer(HttpAnswer answer, bool keep_alive) {
  answer.extra.emplace_back("Content-Length",
                            std::to_string(answer.body.size()));
  std::string out = ResponseHead(answer.status, answer.content_type,
                                 answer.extra, keep_alive);
  absl::StrAppend(&out, "\r\n", answer.body);
  return out;
}

std::string Chunk(absl::string_view data) {
  char size[32];
  std::snprintf(size, sizeof(size), "%zx\r\n", data.size());
  return absl::StrCat(size, data, "\r\n");
}

}  // namespace forq::server
