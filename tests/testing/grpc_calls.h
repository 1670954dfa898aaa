// Counts of gRPC calls forqd handled, read from its /metrics page.
#ifndef FORQ_TESTS_TESTING_GRPC_CALLS_H_
#define FORQ_TESTS_TESTING_GRPC_CALLS_H_

#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "gtest/gtest.h"

#include "server/http/http_test_client.h"

namespace forq::testing {

// forq_grpc_requests_total of `method` ("forq.v1.TaskService/Wait") with
// code OK, from the forqd serving HTTP on `http_address`; with `any_code`,
// every code's count of the method summed. -1 (and a test failure) when
// the page cannot be read.
inline double GrpcCalls(const std::string& http_address,
                        const std::string& method, bool any_code = false) {
  auto r = server::testing::HttpCall(http_address, "GET", "/metrics");
  EXPECT_TRUE(r.ok()) << r.status();
  if (!r.ok()) return -1;
  double total = 0;
  const std::string ok_key = absl::StrCat(
      "forq_grpc_requests_total{code=\"OK\",method=\"", method, "\"}");
  const std::string method_label = absl::StrCat("method=\"", method, "\"}");
  for (absl::string_view line : absl::StrSplit(r->body, '\n')) {
    if (any_code) {
      const size_t at = line.find(method_label);
      if (!absl::StartsWith(line, "forq_grpc_requests_total{") ||
          at == absl::string_view::npos) {
        continue;
      }
      line.remove_prefix(at + method_label.size());
    } else if (!absl::ConsumePrefix(&line, ok_key)) {
      continue;
    }
    double v = 0;
    if (absl::SimpleAtod(absl::StripAsciiWhitespace(line), &v)) total += v;
  }
  return total;
}

}  // namespace forq::testing

#endif  // FORQ_TESTS_TESTING_GRPC_CALLS_H_
