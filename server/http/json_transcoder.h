// Converts between HTTP requests (path variables, query parameters, JSON
// bodies) and protobuf messages using protobuf's JSON mapping, so no field is
// ever converted by hand. Used by the HTTP gateway and its OpenAPI tool.
#ifndef FORQ_SERVER_HTTP_JSON_TRANSCODER_H_
#define FORQ_SERVER_HTTP_JSON_TRANSCODER_H_

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"

#include "server/http/route_table.h"

namespace forq::server {

// Name of the query parameter (and header "X-Forq-Text") that asks for bytes
// fields rendered as text; see RenderOptions. When a request message has a
// field of this name the query parameter binds that field instead, and only
// the header switches text mode.
inline constexpr absl::string_view kTextParam = "text";
inline constexpr absl::string_view kTextHeader = "X-Forq-Text";

// Deepest JSON nesting a request may have; forq's messages need far less.
inline constexpr int kMaxJsonDepth = 32;

// InvalidArgument when `json` nests objects/arrays deeper than
// kMaxJsonDepth. One pass, O(size), no allocation; malformed JSON passes
// (the parser reports it).
absl::Status CheckJsonNesting(absl::string_view json, absl::string_view what);

// InvalidArgument naming the field when an enum field of `m` (recursively)
// holds a number its enum does not define.
absl::Status CheckEnumValues(const google::protobuf::Message& m);

struct QueryParam {
  std::string key;
  std::string value;
};

// Splits and percent-decodes a query string ("a=1&b=x+y"; '+' is a space).
// InvalidArgument on a malformed escape, naming the parameter.
absl::StatusOr<std::vector<QueryParam>> ParseQuery(absl::string_view query);

// Parses a boolean flag value: "", "1", "true", "yes" are true; "0",
// "false", "no" are false; anything else is InvalidArgument.
absl::StatusOr<bool> ParseFlag(absl::string_view name, absl::string_view value);

// A new, empty message of `type` (the generated class when linked, else a
// DynamicMessage). Thread-safe.
std::unique_ptr<google::protobuf::Message> NewMessage(
    const google::protobuf::Descriptor* type);

// Builds the request message(s) of `route` from path `bindings`, `query`
// and `body`. A client-streaming route reads `body` as newline-delimited
// JSON, one request message per non-empty line; every other route yields
// exactly one message. In a JSON body any bytes field `x` may be given as
// `x_text` (or `xText`): UTF-8 text stored as the bytes (for curl users; the
// mapping itself wants base64). Errors are InvalidArgument with a message
// naming the offending parameter, field or line (malformed JSON, wrong types,
// unknown fields, a body on a route that takes none, unknown query parameters).
absl::StatusOr<std::vector<std::unique_ptr<google::protobuf::Message>>>
BuildRequests(const Route& route,
              const std::vector<std::pair<std::string, std::string>>& bindings,
              const std::vector<QueryParam>& query, absl::string_view body);

// True when the client asked for text rendering: the `text` query parameter
// (unless `route` binds it to a field; `route` may be null) or the
// X-Forq-Text header (`header` empty when absent). InvalidArgument on a
// value that is not a flag.
absl::StatusOr<bool> TextModeRequested(const Route* route,
                                       const std::vector<QueryParam>& query,
                                       absl::string_view header);

struct RenderOptions {
  // Replace each bytes field `x` holding valid UTF-8 by a string field
  // `x_text` (e.g. result -> result_text); invalid UTF-8 stays base64.
  bool text = false;
};

// One message as compact JSON: proto field names (snake_case), enums by
// name, default-valued scalars printed, int64 as strings (JSON mapping).
absl::StatusOr<std::string> MessageToJson(const google::protobuf::Message& m,
                                          const RenderOptions& options);

}  // namespace forq::server

#endif  // FORQ_SERVER_HTTP_JSON_TRANSCODER_H_
