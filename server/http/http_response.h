// HTTP/1.1 responses as forqd's HTTP gateway writes them: the status line
// and headers, chunked framing, and a whole answer as one string.
#ifndef FORQ_SERVER_HTTP_HTTP_RESPONSE_H_
#define FORQ_SERVER_HTTP_HTTP_RESPONSE_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

#include "server/http/http_errors.h"

namespace forq::server {

inline constexpr absl::string_view kJsonType = "application/json";
inline constexpr absl::string_view kNdjsonType = "application/x-ndjson";
inline constexpr absl::string_view kMetricsType =
    "text/plain; version=0.0.4; charset=utf-8";

// Extra response headers, in the order they are written.
using HttpHeaders = std::vector<std::pair<std::string, std::string>>;

// A complete answer with a body of known length.
struct HttpAnswer {
  int status = 200;
  std::string content_type;
  std::string body;
  HttpHeaders extra;
};

// An answer carrying the JSON error body of `error`.
HttpAnswer ErrorAnswer(int status, const HttpError& error,
                       HttpHeaders extra = {});

// The error answer for `status`, with the HTTP status its code maps to.
HttpAnswer StatusAnswer(const absl::Status& status);

// The status line and headers up to, not including, the blank line that
// ends them: Server, Content-Type, `extra`, then Connection.
std::string ResponseHead(int status, absl::string_view content_type,
                         const HttpHeaders& extra, bool keep_alive);

// `answer` as bytes to send, with Content-Length.
std::string SerializeAnswer(HttpAnswer answer, bool keep_alive);

// One chunk of a chunked body (Transfer-Encoding: chunked).
std::string Chunk(absl::string_view data);

}  // namespace forq::server

#endif  // FORQ_SERVER_HTTP_HTTP_RESPONSE_H_
