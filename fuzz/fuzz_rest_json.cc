// Fuzzes the REST JSON -> proto path of the HTTP gateway as it runs for a
// matched route: query parsing, path bindings, the JSON body (one message,
// a sub-field, or newline-delimited messages for streaming routes), the
// nesting and enum checks, and rendering the parsed messages back as JSON.
//
// Input: [route index u8][flags u8][binding value]\0[query string]\0[body].
// flags bit 0 asks for text rendering.
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

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
  if (size < 2) return 0;
  const std::vector<Route>& routes = Routes().routes();
  const Route& route = routes[data[0] % routes.size()];
  const bool text = (data[1] & 1) != 0;
  absl::string_view in(reinterpret_cast<const char*>(data + 2), size - 2);
  const absl::string_view binding = forq::fuzz::TakeUntil(&in, '\0');
  const absl::string_view query_string = forq::fuzz::TakeUntil(&in, '\0');
  const absl::string_view body = in;

  absl::StatusOr<std::vector<QueryParam>> query = ParseQuery(query_string);
  if (!query.ok()) return 0;
  std::vector<std::pair<std::string, std::string>> bindings;
  for (const Route::Segment& s : route.segments) {
    if (!s.var.empty()) bindings.emplace_back(s.var, std::string(binding));
  }
  (void)TextModeRequested(&route, *query, text ? "1" : "");
  auto messages = BuildRequests(route, bindings, *query, body);
  if (!messages.ok()) {
    // Every refusal is a client error with a message saying why.
    FUZZ_CHECK(messages.status().code() == absl::StatusCode::kInvalidArgument);
    FUZZ_CHECK(!messages.status().message().empty());
    return 0;
  }
  FUZZ_CHECK(!messages->empty());
  FUZZ_CHECK(route.client_streaming() || messages->size() == 1);
  for (const auto& m : *messages) {
    FUZZ_CHECK(m->GetDescriptor() == route.rpc->input_type());
    // What the gateway accepted it can also render (errors echo requests).
    FUZZ_CHECK(MessageToJson(*m, RenderOptions{.text = text}).ok());
  }
  return 0;
}
