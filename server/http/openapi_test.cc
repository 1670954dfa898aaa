#include "server/http/openapi.h"

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include "tests/testing/status_matchers.h"

namespace forq::server {
namespace {

using ::forq::testing::IsOk;
using ::testing::HasSubstr;

// The repository root, set by server/CMakeLists.txt.
std::string RepoRoot() { return FORQ_SOURCE_DIR; }

TEST(OpenApiTest, CommittedFileMatchesTheProtos) {
  auto table = RouteTable::Build(RouteTable::ForqServices());
  ASSERT_THAT(table, IsOk());
  const std::string generated = GenerateOpenApi(**table);
  const std::string path = RepoRoot() + "/api/openapi.yaml";
  const char* update = std::getenv("FORQ_UPDATE_OPENAPI");
  if (update != nullptr && std::string(update) == "1") {
    std::ofstream(path) << generated;
  }
  std::ifstream in(path);
  std::stringstream committed;
  committed << in.rdbuf();
  EXPECT_EQ(committed.str(), generated)
      << path << " is stale; regenerate with FORQ_UPDATE_OPENAPI=1 "
      << "forq_http_test --gtest_filter='OpenApi*'";
}

TEST(OpenApiTest, EveryRpcHasAnOperation) {
  auto table = RouteTable::Build(RouteTable::ForqServices());
  ASSERT_THAT(table, IsOk());
  const std::string doc = GenerateOpenApi(**table);
  for (const auto* svc : RouteTable::ForqServices()) {
    for (int i = 0; i < svc->method_count(); ++i) {
      EXPECT_THAT(doc,
                  HasSubstr(absl::StrCat("operationId: \"", svc->name(), "_",
                                         svc->method(i)->name(), "\"")));
    }
  }
}

}  // namespace
}  // namespace forq::server
