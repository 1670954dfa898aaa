// PostgresStore behaviour beyond the shared Store contract
// (server/store/store_test.cc runs that contract on PostgreSQL too).
#include "server/store/postgres_store.h"

#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include "server/store/postgres_internal.h"
#include "server/store/store.h"
#include "tests/testing/postgres_server.h"
#include "tests/testing/status_matchers.h"

#include <libpq-fe.h>

namespace forq::server {
namespace {

using ::forq::server::postgres_internal::Conn;
using ::forq::server::postgres_internal::Result;
using ::forq::server::postgres_internal::TextValue;
using ::forq::testing::IsOk;
using ::forq::testing::PostgresServer;
using ::forq::testing::StatusIs;
using ::testing::HasSubstr;

PostgresServer& Server() {
  auto server = PostgresServer::Shared();
  EXPECT_THAT(server, IsOk());
  return **server;
}

StoreOptions OptionsFor(const std::string& uri) {
  StoreOptions options;
  options.kind = uri;
  return options;
}

TEST(PostgresStoreTest, SecondStoreOnSameSchemaIsRefusedUntilFirstCloses) {
  FORQ_ASSERT_OK_AND_ASSIGN(std::string uri, Server().NewSchemaUri("lock"));
  FORQ_ASSERT_OK_AND_ASSIGN(auto first, OpenStore(OptionsFor(uri)));
  EXPECT_THAT(OpenStore(OptionsFor(uri)),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("in use by another forqd")));
  first->Close();
  EXPECT_THAT(OpenStore(OptionsFor(uri)), IsOk());
}

TEST(PostgresStoreTest, NewerSchemaVersionIsRefused) {
  FORQ_ASSERT_OK_AND_ASSIGN(std::string uri, Server().NewSchemaUri("newer"));
  { FORQ_ASSERT_OK_AND_ASSIGN(auto store, OpenStore(OptionsFor(uri))); }
  const std::string schema = uri.substr(uri.rfind("%3D") + 3);
  ASSERT_THAT(Server().Exec(absl::StrCat("UPDATE ", schema,
                                         ".forq_schema_version SET version = ",
                                         PostgresStore::kSchemaVersion + 1)),
              IsOk());
  EXPECT_THAT(OpenStore(OptionsFor(uri)),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("newer than this forqd")));
}

// A schema of version 3 (no kinds per node) is migrated at open.
TEST(PostgresStoreTest, VersionThreeSchemaIsMigrated) {
  FORQ_ASSERT_OK_AND_ASSIGN(std::string uri, Server().NewSchemaUri("v3"));
  { FORQ_ASSERT_OK_AND_ASSIGN(auto store, OpenStore(OptionsFor(uri))); }
  const std::string schema = uri.substr(uri.rfind("%3D") + 3);
  ASSERT_THAT(Server().Exec(absl::StrCat(
                  "ALTER TABLE ", schema, ".nodes DROP COLUMN kinds; UPDATE ",
                  schema, ".forq_schema_version SET version = 3")),
              IsOk());
  { FORQ_ASSERT_OK_AND_ASSIGN(auto store, OpenStore(OptionsFor(uri))); }
  EXPECT_THAT(Server().Query(absl::StrCat("SELECT version FROM ", schema,
                                          ".forq_schema_version")),
              ::testing::Eq(absl::StatusOr<std::string>(
                  absl::StrCat(PostgresStore::kSchemaVersion))));
  EXPECT_THAT(
      Server().Query(absl::StrCat(
          "SELECT count(*) FROM information_schema.columns WHERE "
          "table_schema = '",
          schema, "' AND table_name = 'nodes' AND column_name = ", "'kinds'")),
      ::testing::Eq(absl::StatusOr<std::string>("1")));
}

TEST(PostgresStoreTest, UnreachableServerIsUnavailable) {
  // Port 1 on loopback: nothing listens there.
  EXPECT_THAT(OpenStore(OptionsFor(
                  "postgresql://forq@127.0.0.1:1/forq?connect_timeout=2")),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("connect")));
}

TEST(PostgresStoreTest, UnknownDatabaseIsAClearError) {
  EXPECT_THAT(OpenStore(OptionsFor(absl::StrCat(
                  "postgresql://forq@127.0.0.1:", Server().port(), "/nope"))),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("nope")));
}

std::string Setting(Conn& conn, const char* name) {
  absl::StatusOr<Result> res =
      conn.Run(name, absl::StrCat("SELECT current_setting('", name, "')"), {},
               "read a setting");
  EXPECT_THAT(res, IsOk());
  if (!res.ok() || PQntuples(res->get()) != 1) return "";
  return TextValue(res->get(), 0, 0);
}

TEST(PostgresStoreTest, ConnectionsPriceOutSequentialScansAndNeverJit) {
  FORQ_ASSERT_OK_AND_ASSIGN(std::string uri, Server().NewSchemaUri("jit"));
  FORQ_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Conn> conn,
                            Conn::Connect(uri, Durability::kSync));
  EXPECT_EQ(Setting(*conn, "enable_seqscan"), "off");
  // A statement priced that high would otherwise be compiled at each run.
  EXPECT_EQ(Setting(*conn, "jit"), "off");
  EXPECT_EQ(Setting(*conn, "plan_cache_mode"), "force_generic_plan");
}

}  // namespace
}  // namespace forq::server
