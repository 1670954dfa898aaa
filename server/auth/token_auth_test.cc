#include "server/auth/token_auth.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace forq::server {
namespace {

constexpr char kAdmin[] = "admin-token-0123456789";
constexpr char kRead[] = "read-token-0123456789";

TEST(TokenTableTest, ParsesClearAndHashedTokens) {
  const std::string text = std::string("# comment\n\n") + kAdmin +
                           " admin\nsha256:" + Sha256Hex(kRead) + "  READ\n";
  auto t = TokenTable::Parse(text);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->size(), 2u);
  EXPECT_EQ((*t)->Lookup(kAdmin), Role::kAdmin);
  EXPECT_EQ((*t)->Lookup(kRead), Role::kRead);
  EXPECT_EQ((*t)->Lookup("read-token-012345678"), Role::kNone);
  EXPECT_EQ((*t)->Lookup(""), Role::kNone);
}

TEST(TokenTableTest, RejectsBadLinesNamingTheLine) {
  auto bad = [](const std::string& text) {
    auto t = TokenTable::Parse(text, "f");
    EXPECT_FALSE(t.ok()) << text;
    return t.ok() ? std::string() : std::string(t.status().message());
  };
  EXPECT_THAT(bad("short admin\n"), ::testing::HasSubstr("f:1: tokens must"));
  EXPECT_THAT(bad(std::string(kAdmin) + " root\n"),
              ::testing::HasSubstr("unknown role 'root'"));
  EXPECT_THAT(bad("\nsha256:abcd read\n"),
              ::testing::HasSubstr("f:2: sha256: needs 64"));
  EXPECT_THAT(bad(std::string(kAdmin) + "\n"),
              ::testing::HasSubstr("expected 'TOKEN ROLE'"));
  EXPECT_THAT(bad(std::string(kAdmin) + " admin\n" + kAdmin + " read\n"),
              ::testing::HasSubstr("duplicate"));
  EXPECT_THAT(bad("# nothing\n"), ::testing::HasSubstr("no tokens"));
}

TEST(TokenTableTest, AuthorizeDistinguishesUnauthenticatedFromDenied) {
  auto t =
      TokenTable::Parse(std::string(kAdmin) + " admin\n" + kRead + " read\n");
  ASSERT_TRUE(t.ok());
  const std::string submit = "/forq.v1.TaskService/Submit";
  const Role need = RequiredRole(submit);
  EXPECT_EQ((*t)->Authorize("", need, submit).code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ((*t)->Authorize("Basic abc", need, submit).code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ((*t)->Authorize("Bearer nope-nope-nope-nope", need, submit).code(),
            absl::StatusCode::kUnauthenticated);
  absl::Status denied =
      (*t)->Authorize(std::string("Bearer ") + kRead, need, submit);
  EXPECT_EQ(denied.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(denied.message()),
              ::testing::HasSubstr("needs the submit role"));
  EXPECT_TRUE(
      (*t)->Authorize(std::string("bearer ") + kAdmin, need, submit).ok());
  EXPECT_TRUE(
      (*t)->Authorize("", Role::kNone, "/grpc.health.v1.Health/Check").ok());
}

TEST(RequiredRoleTest, ClassifiesEveryFamily) {
  EXPECT_EQ(RequiredRole("/grpc.health.v1.Health/Check"), Role::kNone);
  EXPECT_EQ(RequiredRole("/forq.v1.TaskService/Get"), Role::kRead);
  EXPECT_EQ(RequiredRole("/forq.v1.TaskService/Watch"), Role::kRead);
  EXPECT_EQ(RequiredRole("/forq.v1.TaskService/Submit"), Role::kSubmit);
  EXPECT_EQ(RequiredRole("/forq.v1.TaskService/Map"), Role::kSubmit);
  EXPECT_EQ(RequiredRole("/forq.v1.TaskService/MapBatched"), Role::kSubmit);
  EXPECT_EQ(RequiredRole("/forq.v1.TaskService/WaitStream"), Role::kRead);
  EXPECT_EQ(RequiredRole("/forq.v1.PoolService/GetPool"), Role::kRead);
  EXPECT_EQ(RequiredRole("/forq.v1.PoolService/Drain"), Role::kAdmin);
  EXPECT_EQ(RequiredRole("/forq.v1.ManagerService/DictGet"), Role::kRead);
  EXPECT_EQ(RequiredRole("/forq.v1.ManagerService/QueueGet"), Role::kSubmit);
  EXPECT_EQ(RequiredRole("/forq.v1.ManagerService/DictSet"), Role::kSubmit);
  EXPECT_EQ(RequiredRole("/forq.v1.ManagerService/DeleteObject"), Role::kAdmin);
  EXPECT_EQ(RequiredRole("/forq.v1.TaskService/NotYetInvented"), Role::kAdmin);
  EXPECT_EQ(RequiredRole(""), Role::kAdmin);
}

}  // namespace
}  // namespace forq::server
