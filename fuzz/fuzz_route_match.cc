// Fuzzes the HTTP gateway's request-line handling: the route matcher over
// every forq route, percent-decoding of path segments, query splitting and
// the text-mode switch.
//
// Input: [method u8][path[?query]]\0[X-Forq-Text header value].
#include <cstdint>
#include <string>

#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

#include "fuzz/fuzz_util.h"
#include "server/http/json_transcoder.h"
#include "server/http/route_table.h"

namespace {

const forq::server::RouteTable& Routes() {
  static const auto* table =
      forq::server::RouteTable::Build(forq::server::RouteTable::ForqServices())
          ->release();
  return *table;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace forq::server;
  if (size < 1) return 0;
  static const char* const kMethods[] = {"GET",    "POST",  "PUT",
                                         "DELETE", "PATCH", "HEAD"};
  const char* method = kMethods[data[0] % 6];
  absl::string_view in(reinterpret_cast<const char*>(data + 1), size - 1);
  absl::string_view target = forq::fuzz::TakeUntil(&in, '\0');
  const absl::string_view header = in;
  const absl::string_view path = forq::fuzz::TakeUntil(&target, '?');
  const absl::string_view query_string = target;

  const RouteMatch match = Routes().Match(method, path);
  switch (match.kind) {
    case RouteMatch::Kind::kFound:
      FUZZ_CHECK(match.route != nullptr);
      FUZZ_CHECK(match.route->http_method == method);
      for (const auto& [var, value] : match.bindings) FUZZ_CHECK(!var.empty());
      break;
    case RouteMatch::Kind::kWrongMethod:
      FUZZ_CHECK(match.route == nullptr);
      FUZZ_CHECK(!match.allow.empty());
      for (absl::string_view m : absl::StrSplit(match.allow, ", ")) {
        FUZZ_CHECK(m != method);
      }
      break;
    case RouteMatch::Kind::kNoRoute:
      FUZZ_CHECK(match.route == nullptr);
      break;
  }
  std::string decoded;
  (void)PercentDecode(path, &decoded);
  auto query = ParseQuery(query_string);
  if (query.ok()) (void)TextModeRequested(match.route, *query, header);
  return 0;
}
