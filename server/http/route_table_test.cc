#include "server/http/route_table.h"

#include <set>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include "tests/testing/status_matchers.h"

namespace forq::server {
namespace {

using ::forq::testing::IsOk;
using ::testing::ElementsAre;
using ::testing::Pair;

class RouteTableTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto t = RouteTable::Build(RouteTable::ForqServices());
    ASSERT_THAT(t, IsOk());
    table_ = *std::move(t);
  }
  std::unique_ptr<RouteTable> table_;
};

TEST_F(RouteTableTest, EveryRpcOfEveryServiceHasARoute) {
  std::set<std::string> routed;
  for (const Route& r : table_->routes()) routed.insert(r.rpc->full_name());
  const auto services = RouteTable::ForqServices();
  ASSERT_GE(services.size(), 2u);
  for (const auto* svc : services) {
    for (int i = 0; i < svc->method_count(); ++i) {
      EXPECT_TRUE(routed.count(svc->method(i)->full_name()))
          << svc->method(i)->full_name();
    }
  }
}

TEST_F(RouteTableTest, VerbSuffixBeatsPlainVariable) {
  RouteMatch m = table_->Match("GET", "/v1/tasks/abc:wait");
  ASSERT_EQ(m.kind, RouteMatch::Kind::kFound);
  EXPECT_EQ(m.route->grpc_method, "/forq.v1.TaskService/Wait");
  EXPECT_THAT(m.bindings, ElementsAre(Pair("id", "abc")));

  m = table_->Match("GET", "/v1/tasks/abc");
  ASSERT_EQ(m.kind, RouteMatch::Kind::kFound);
  EXPECT_EQ(m.route->grpc_method, "/forq.v1.TaskService/Get");
}

TEST_F(RouteTableTest, LiteralWithColonMatches) {
  RouteMatch m = table_->Match("POST", "/v1/tasks:batch");
  ASSERT_EQ(m.kind, RouteMatch::Kind::kFound);
  EXPECT_EQ(m.route->grpc_method, "/forq.v1.TaskService/SubmitBatch");
}

TEST_F(RouteTableTest, PercentEncodedVariableIsDecoded) {
  RouteMatch m = table_->Match("GET", "/v1/tasks/a%2Fb%3Ac");
  ASSERT_EQ(m.kind, RouteMatch::Kind::kFound);
  EXPECT_EQ(m.route->grpc_method, "/forq.v1.TaskService/Get");
  EXPECT_THAT(m.bindings, ElementsAre(Pair("id", "a/b:c")));
}

TEST_F(RouteTableTest, WrongMethodListsAllowed) {
  RouteMatch m = table_->Match("DELETE", "/v1/tasks");
  ASSERT_EQ(m.kind, RouteMatch::Kind::kWrongMethod);
  EXPECT_EQ(m.allow, "GET, POST");
  m = table_->Match("GET", "/v1/tasks/x:cancel");
  ASSERT_EQ(m.kind, RouteMatch::Kind::kWrongMethod);
  EXPECT_EQ(m.allow, "POST");
}

TEST_F(RouteTableTest, UnknownPathsDoNotMatch) {
  for (const char* p : {"/", "", "/v1", "/v1/tasks/", "/v1/tasks//x",
                        "/v2/tasks", "/v1/tasks/a/b", "/v1/tasks/%zz", "x"}) {
    EXPECT_EQ(table_->Match("GET", p).kind, RouteMatch::Kind::kNoRoute) << p;
  }
}

TEST_F(RouteTableTest, LabelsAreTemplatesNotPaths) {
  RouteMatch m = table_->Match("GET", "/v1/tasks/some-id:wait");
  ASSERT_EQ(m.kind, RouteMatch::Kind::kFound);
  EXPECT_EQ(m.route->label(), "GET /v1/tasks/{id}:wait");
}

TEST(PercentDecodeTest, RejectsTruncatedEscapes) {
  std::string out;
  EXPECT_TRUE(PercentDecode("a%20b", &out));
  EXPECT_EQ(out, "a b");
  EXPECT_FALSE(PercentDecode("a%2", &out));
  EXPECT_FALSE(PercentDecode("%", &out));
  EXPECT_FALSE(PercentDecode("%g0", &out));
}

TEST(ResolveFieldPathTest, AcceptsProtoAndJsonNames) {
  const auto* type =
      RouteTable::ForqServices()[0]->FindMethodByName("List")->input_type();
  EXPECT_THAT(ResolveFieldPath(type, "page_size"), IsOk());
  EXPECT_THAT(ResolveFieldPath(type, "pageSize"), IsOk());
  EXPECT_FALSE(ResolveFieldPath(type, "nope").ok());
}

}  // namespace
}  // namespace forq::server
