// Maps gRPC status codes to HTTP statuses and renders the JSON error body the
// REST front end answers with: {"code", "status", "message", "details"}.
#ifndef FORQ_SERVER_HTTP_HTTP_ERRORS_H_
#define FORQ_SERVER_HTTP_HTTP_ERRORS_H_

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace forq::server {

// HTTP status for a gRPC/absl code (numbers are identical). FAILED_PRECONDITION
// maps to 409: in forq it always means "the resource is in the wrong state"
// (cancel of a finished task, lost lease), a conflict with current state
// rather than a malformed request. CANCELLED maps to 499 (client closed).
int HttpStatusForCode(absl::StatusCode code);

// Upper-case canonical name, e.g. "NOT_FOUND"; "UNKNOWN" for out-of-range.
std::string CodeName(absl::StatusCode code);

// An error answer ready to send: HTTP status, JSON body, and an optional
// Retry-After value in whole seconds (0 = none).
struct HttpError {
  int http_status = 500;
  std::string body;
  int retry_after_seconds = 0;
};

// Renders `code`/`message` with no details.
HttpError MakeHttpError(absl::StatusCode code, absl::string_view message);

// Renders a gRPC status whose binary `error_details` (a serialized
// google.rpc.Status, possibly empty) supplies "details": each Any is printed
// with the protobuf JSON mapping when its type is linked into the binary,
// else as {"@type", "value" (base64)}. A google.rpc.RetryInfo detail also
// sets retry_after_seconds (rounded up).
HttpError MakeHttpErrorFromGrpc(int code, absl::string_view message,
                                absl::string_view error_details);

// JSON string literal for `s` (quotes included). Invalid UTF-8 bytes are
// replaced by U+FFFD so the output is always valid JSON.
std::string JsonQuote(absl::string_view s);

// True when `s` is well-formed UTF-8 (no overlongs, surrogates or values
// beyond U+10FFFF).
bool IsValidUtf8(absl::string_view s);

}  // namespace forq::server

#endif  // FORQ_SERVER_HTTP_HTTP_ERRORS_H_
