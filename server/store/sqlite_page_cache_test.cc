#include "server/store/sqlite_page_cache.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

#include "server/store/sqlite_internal.h"
#include "tests/testing/temp_dir.h"

#include <sqlite3.h>

namespace forq::server::sqlite_internal {
namespace {

void Exec(sqlite3* db, const std::string& sql) {
  char* err = nullptr;
  ASSERT_EQ(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err), SQLITE_OK)
      << sql << ": " << (err != nullptr ? err : "");
  sqlite3_free(err);
}

std::string QueryText(sqlite3* db, const std::string& sql) {
  sqlite3_stmt* stmt = nullptr;
  std::string out;
  if (sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr) == SQLITE_OK &&
      sqlite3_step(stmt) == SQLITE_ROW) {
    const unsigned char* text = sqlite3_column_text(stmt, 0);
    out = text != nullptr ? reinterpret_cast<const char*>(text) : "";
  }
  sqlite3_finalize(stmt);
  return out;
}

// A row whose index key lands anywhere in the index: the index's pages
// split in the middle, which is where a balance swaps pages.
std::string Key(int i) { return absl::StrCat((i * 7919) % 100003, "-", i); }

TEST(SqlitePageCacheTest, ParkingPageIsThePendingBytePage) {
  EXPECT_EQ(SwapParkingPage(4096), 262145u);
  EXPECT_EQ(SwapParkingPage(1024), 1048577u);
}

// Commits after page swaps skip the whole-cache scan, and what they store
// reads back intact; a rolled-back transaction that grew the file still
// drops its pages (that truncate is forwarded), so the rows written next
// in their place are the ones read.
TEST(SqlitePageCacheTest, CommitsSkipTheScanAndRollbacksStillDropPages) {
  ::forq::testing::TempDir dir;
  absl::StatusOr<Db> opened = OpenConnection(
      dir.path() + "/t.db", SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
  ASSERT_TRUE(opened.ok()) << opened.status();
  sqlite3* db = opened->get();
  Exec(db, "PRAGMA journal_mode=WAL");
  Exec(db, "CREATE TABLE t(k TEXT PRIMARY KEY, v BLOB)");
  const PageCacheLayerStats before = PageCacheLayerCounts();
  const std::string pad(300, 'x');
  for (int txn = 0; txn < 40; ++txn) {
    std::string sql = "BEGIN;";
    for (int i = txn * 100; i < (txn + 1) * 100; ++i) {
      absl::StrAppend(&sql, "INSERT INTO t VALUES('", Key(i), "', '", pad,
                      "');");
    }
    Exec(db, sql + "COMMIT;");
  }
  const PageCacheLayerStats after = PageCacheLayerCounts();
  // The layer is the page cache of this connection; balances swapped pages,
  // and the commits after them skipped pcache1's whole-cache scan.
  EXPECT_GT(after.skipped, before.skipped);
  EXPECT_GT(after.scans_avoided, before.scans_avoided);

  const int pages = std::stoi(QueryText(db, "PRAGMA page_count"));
  std::string grow = "BEGIN;";
  for (int i = 0; i < 2000; ++i) {
    absl::StrAppend(&grow, "INSERT INTO t VALUES('rolled-back-", i, "', '", pad,
                    "');");
  }
  Exec(db, grow);
  EXPECT_GT(std::stoi(QueryText(db, "PRAGMA page_count")), pages);
  const long long forwarded = PageCacheLayerCounts().forwarded;
  Exec(db, "ROLLBACK");
  EXPECT_GT(PageCacheLayerCounts().forwarded, forwarded);
  EXPECT_EQ(std::stoi(QueryText(db, "PRAGMA page_count")), pages);

  // The pages the rollback dropped are allocated again for new rows.
  std::string again = "BEGIN;";
  for (int i = 0; i < 2000; ++i) {
    absl::StrAppend(&again, "INSERT INTO t VALUES('kept-", i, "', 'v", i,
                    "');");
  }
  Exec(db, again + "COMMIT;");
  EXPECT_EQ(QueryText(db, "PRAGMA integrity_check"), "ok");
  EXPECT_EQ(QueryText(db, "SELECT count(*) FROM t"), "6000");
  EXPECT_EQ(QueryText(db, "SELECT count(*) FROM t WHERE k LIKE 'rolled-%'"),
            "0");
  EXPECT_EQ(QueryText(db, "SELECT v FROM t WHERE k = 'kept-1234'"), "v1234");
  EXPECT_EQ(QueryText(db, "SELECT count(*) FROM t WHERE v = '" + pad + "'"),
            "4000");
}

}  // namespace
}  // namespace forq::server::sqlite_internal
