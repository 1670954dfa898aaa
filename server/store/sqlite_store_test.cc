// SQLite-specific behaviour: opening bad files and dirs, schema versions,
// and a writer that survives failed transactions. The Store contract itself
// is covered for every implementation in store_test.cc.
#include "server/store/sqlite_store.h"

#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include "server/store/test_latch.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

#include <sqlite3.h>

namespace forq::server {
namespace {

using ::forq::testing::IsOk;
using ::forq::testing::StatusIs;
using ::testing::AnyOf;
using ::testing::HasSubstr;

using ::forq::testing::TempDir;

StoreOptions OptionsFor(const std::string& dir) {
  StoreOptions options;
  options.data_dir = dir;
  return options;
}

v1::Task MakeTask(absl::string_view id, size_t payload_size = 16) {
  v1::Task task;
  task.set_id(std::string(id));
  task.set_queue("default");
  task.set_kind("echo");
  task.set_state(v1::QUEUED);
  task.set_payload(std::string(payload_size, 'x'));
  return task;
}

absl::Status InsertSync(Store& store, std::vector<v1::Task> tasks) {
  TestLatch done;
  absl::Status out;
  store.Insert(std::move(tasks),
               [&](const absl::StatusOr<std::vector<InsertResult>>& result) {
                 out = result.status();
                 done.Notify();
               });
  done.Wait();
  return out;
}

TEST(SqliteStoreTest, CreatesDataDirAndDatabaseFile) {
  TempDir dir;
  const std::string data_dir = absl::StrCat(dir.path(), "/a/b/c");
  FORQ_ASSERT_OK_AND_ASSIGN(auto store,
                            SqliteStore::Open(OptionsFor(data_dir)));
  EXPECT_EQ(store->path(), absl::StrCat(data_dir, "/forq.db"));
  EXPECT_TRUE(std::filesystem::exists(store->path()));
}

TEST(SqliteStoreTest, DataDirUnderARegularFileIsAClearError) {
  TempDir dir;
  const std::string file = absl::StrCat(dir.path(), "/plain");
  std::ofstream(file) << "not a dir";
  const std::string data_dir = absl::StrCat(file, "/data");
  auto store = SqliteStore::Open(OptionsFor(data_dir));
  ASSERT_FALSE(store.ok());
  EXPECT_THAT(std::string(store.status().message()),
              HasSubstr(absl::StrCat("cannot create data_dir ", data_dir)));
}

TEST(SqliteStoreTest, UnwritableDataDirIsAClearError) {
  TempDir dir;
  ASSERT_EQ(chmod(dir.path().c_str(), 0555), 0);
  if (geteuid() != 0) {
    auto store = SqliteStore::Open(OptionsFor(dir.path()));
    EXPECT_THAT(store, StatusIs(absl::StatusCode::kPermissionDenied,
                                HasSubstr(dir.path())));
    return;
  }
  // Root ignores directory permissions: check as user nobody in a child,
  // which reports through its exit code (0 = the expected clear error).
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    if (setgid(65534) != 0 || setuid(65534) != 0) _exit(10);
    auto store = SqliteStore::Open(OptionsFor(dir.path()));
    if (store.ok()) _exit(11);
    if (store.status().code() != absl::StatusCode::kPermissionDenied) _exit(12);
    if (std::string(store.status().message()).find(dir.path()) ==
        std::string::npos) {
      _exit(13);
    }
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0)
      << "10: cannot become nobody, 11: opened, 12: wrong code, "
         "13: message does not name the directory";
}

TEST(SqliteStoreTest, DatabasePathThatIsADirectoryIsUnavailable) {
  TempDir dir;
  ASSERT_TRUE(std::filesystem::create_directory(dir.path() + "/forq.db"));
  EXPECT_THAT(SqliteStore::Open(OptionsFor(dir.path())),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("forq.db")));
}

TEST(SqliteStoreTest, SecondStoreOnSameDataDirIsRefused) {
  TempDir dir;
  FORQ_ASSERT_OK_AND_ASSIGN(auto first,
                            SqliteStore::Open(OptionsFor(dir.path())));
  EXPECT_THAT(
      SqliteStore::Open(OptionsFor(dir.path())),
      StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("is in use")));
  first.reset();
  EXPECT_THAT(SqliteStore::Open(OptionsFor(dir.path())), IsOk());
}

TEST(SqliteStoreTest, CorruptFileIsDataLoss) {
  TempDir dir;
  std::ofstream(dir.path() + "/forq.db")
      << std::string(8192, 'g') << "this is not an SQLite database";
  EXPECT_THAT(SqliteStore::Open(OptionsFor(dir.path())),
              StatusIs(absl::StatusCode::kDataLoss,
                       HasSubstr("file is not a database")));
}

TEST(SqliteStoreTest, NewerSchemaIsRefused) {
  TempDir dir;
  {
    FORQ_ASSERT_OK_AND_ASSIGN(auto store,
                              SqliteStore::Open(OptionsFor(dir.path())));
  }
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open((dir.path() + "/forq.db").c_str(), &db), SQLITE_OK);
  ASSERT_EQ(
      sqlite3_exec(db, "PRAGMA user_version=99", nullptr, nullptr, nullptr),
      SQLITE_OK);
  sqlite3_close(db);
  EXPECT_THAT(SqliteStore::Open(OptionsFor(dir.path())),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("schema version 99 is newer")));
}

// The first column of the first row of `sql` on the database at `path`
// (-1 if it fails).
int64_t QueryInt(const std::string& path, const char* sql) {
  sqlite3* db = nullptr;
  int64_t value = -1;
  if (sqlite3_open(path.c_str(), &db) == SQLITE_OK) {
    sqlite3_stmt* stmt = nullptr;
    if (sqlite3_prepare_v2(db, sql, -1, &stmt, nullptr) == SQLITE_OK &&
        sqlite3_step(stmt) == SQLITE_ROW) {
      value = sqlite3_column_int64(stmt, 0);
    }
    sqlite3_finalize(stmt);
  }
  sqlite3_close(db);
  return value;
}

TEST(SqliteStoreTest, SchemaVersionIsRecorded) {
  TempDir dir;
  {
    FORQ_ASSERT_OK_AND_ASSIGN(auto store,
                              SqliteStore::Open(OptionsFor(dir.path())));
  }
  EXPECT_EQ(QueryInt(dir.path() + "/forq.db", "PRAGMA user_version"),
            SqliteStore::kSchemaVersion);
}

// A version 1 file (queue, kind and state indexes) opens as the current
// version: the three are dropped for the partial tasks_unfinished, its tasks
// stay, and List by queue, kind and state still finds them.
TEST(SqliteStoreTest, VersionOneFileIsMigrated) {
  TempDir dir;
  {
    FORQ_ASSERT_OK_AND_ASSIGN(auto store,
                              SqliteStore::Open(OptionsFor(dir.path())));
    v1::Task other = MakeTask("b");
    other.set_queue("other");
    other.set_kind("sleep");
    ASSERT_THAT(InsertSync(*store, {MakeTask("a"), other}), IsOk());
  }
  const std::string path = dir.path() + "/forq.db";
  auto exec = [&](const char* sql) {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
    EXPECT_EQ(sqlite3_exec(db, sql, nullptr, nullptr, nullptr), SQLITE_OK)
        << sqlite3_errmsg(db);
    sqlite3_close(db);
  };
  exec(
      "DROP INDEX tasks_unfinished;"
      "CREATE INDEX tasks_by_state ON tasks(state, id);"
      "CREATE INDEX tasks_by_queue ON tasks(queue, id);"
      "CREATE INDEX tasks_by_kind ON tasks(kind, id);"
      "PRAGMA user_version=1");
  FORQ_ASSERT_OK_AND_ASSIGN(auto store,
                            SqliteStore::Open(OptionsFor(dir.path())));
  ListQuery by_queue;
  by_queue.queue = "other";
  FORQ_ASSERT_OK_AND_ASSIGN(ListPage page, store->List(by_queue));
  ASSERT_EQ(page.tasks.size(), 1u);
  EXPECT_EQ(page.tasks[0].id(), "b");
  ListQuery by_kind;
  by_kind.kind = "echo";
  FORQ_ASSERT_OK_AND_ASSIGN(page, store->List(by_kind));
  ASSERT_EQ(page.tasks.size(), 1u);
  EXPECT_EQ(page.tasks[0].id(), "a");
  ListQuery queued;
  queued.state = v1::QUEUED;
  FORQ_ASSERT_OK_AND_ASSIGN(page, store->List(queued));
  EXPECT_EQ(page.tasks.size(), 2u);
  store.reset();

  EXPECT_EQ(QueryInt(path,
                     "SELECT count(*) FROM sqlite_master WHERE name IN "
                     "('tasks_by_queue', 'tasks_by_kind', 'tasks_by_state')"),
            0);
  EXPECT_EQ(QueryInt(path,
                     "SELECT count(*) FROM sqlite_master "
                     "WHERE name = 'tasks_unfinished'"),
            1);
  EXPECT_EQ(QueryInt(path, "PRAGMA user_version"), SqliteStore::kSchemaVersion);
}

// Version 3 indexed finished tasks by expiry; version 4 lists them in
// `expiry` rows. Tasks finished under version 3 are still purged on time.
TEST(SqliteStoreTest, VersionThreeExpiryIsMigrated) {
  TempDir dir;
  const absl::Time finished = absl::FromUnixSeconds(1800000000);
  {
    FORQ_ASSERT_OK_AND_ASSIGN(auto store,
                              SqliteStore::Open(OptionsFor(dir.path())));
    std::vector<v1::Task> tasks;
    for (int i = 0; i < 3; ++i) {
      v1::Task task = MakeTask(absl::StrCat("t", i));
      task.set_state(v1::SUCCEEDED);
      task.mutable_finished_at()->set_seconds(absl::ToUnixSeconds(finished));
      task.mutable_result_ttl()->set_seconds(int64_t{60} * (i + 1));
      tasks.push_back(task);
    }
    ASSERT_THAT(InsertSync(*store, tasks), IsOk());
  }
  const std::string path = dir.path() + "/forq.db";
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  EXPECT_EQ(sqlite3_exec(db,
                         "DROP TABLE expiry;"
                         "CREATE INDEX tasks_by_expiry ON tasks(expires_at_us)"
                         " WHERE expires_at_us IS NOT NULL;"
                         "PRAGMA user_version=3",
                         nullptr, nullptr, nullptr),
            SQLITE_OK)
      << sqlite3_errmsg(db);
  sqlite3_close(db);

  FORQ_ASSERT_OK_AND_ASSIGN(auto store,
                            SqliteStore::Open(OptionsFor(dir.path())));
  FORQ_ASSERT_OK_AND_ASSIGN(int64_t purged,
                            store->PurgeExpired(finished + absl::Seconds(59)));
  EXPECT_EQ(purged, 0);
  FORQ_ASSERT_OK_AND_ASSIGN(purged,
                            store->PurgeExpired(finished + absl::Seconds(120)));
  EXPECT_EQ(purged, 2);
  EXPECT_THAT(store->Get("t2"), IsOk());
  FORQ_ASSERT_OK_AND_ASSIGN(purged,
                            store->PurgeExpired(finished + absl::Seconds(180)));
  EXPECT_EQ(purged, 1);
  store.reset();

  EXPECT_EQ(QueryInt(path,
                     "SELECT count(*) FROM sqlite_master "
                     "WHERE name = 'tasks_by_expiry'"),
            0);
  EXPECT_EQ(QueryInt(path, "SELECT count(*) FROM expiry"), 0);
  EXPECT_EQ(QueryInt(path, "PRAGMA user_version"), SqliteStore::kSchemaVersion);
}

// A write error (here EFBIG from RLIMIT_FSIZE, standing in for ENOSPC/EIO)
// fails the calls in that transaction with an error naming the store; the
// writer keeps running and later writes succeed without a restart.
TEST(SqliteStoreTest, WriterSurvivesFailedTransaction) {
  TempDir dir;
  FORQ_ASSERT_OK_AND_ASSIGN(auto store,
                            SqliteStore::Open(OptionsFor(dir.path())));
  ASSERT_THAT(InsertSync(*store, {MakeTask("before")}), IsOk());

  struct sigaction ignore = {};
  ignore.sa_handler = SIG_IGN;
  struct sigaction old_action = {};
  ASSERT_EQ(sigaction(SIGXFSZ, &ignore, &old_action), 0);
  struct rlimit old_limit = {};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old_limit), 0);
  struct rlimit limit = old_limit;
  limit.rlim_cur = 1 << 20;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &limit), 0);
  const absl::Status failed = InsertSync(*store, {MakeTask("huge", 8 << 20)});
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &old_limit), 0);
  ASSERT_EQ(sigaction(SIGXFSZ, &old_action, nullptr), 0);

  EXPECT_THAT(failed.code(), AnyOf(absl::StatusCode::kUnavailable,
                                   absl::StatusCode::kResourceExhausted))
      << failed;
  EXPECT_THAT(std::string(failed.message()),
              HasSubstr(absl::StrCat("sqlite store ", store->path())));
  EXPECT_THAT(store->Get("huge"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(InsertSync(*store, {MakeTask("after")}), IsOk());
  EXPECT_THAT(store->Get("before"), IsOk());
  EXPECT_THAT(store->Get("after"), IsOk());
}

TEST(SqliteStoreTest, ReadsDoNotWaitForQueuedWrites) {
  TempDir dir;
  StoreOptions options = OptionsFor(dir.path());
  options.durability = Durability::kBatch;
  options.batch_interval = absl::Seconds(30);
  FORQ_ASSERT_OK_AND_ASSIGN(auto store, SqliteStore::Open(options));
  ASSERT_THAT(InsertSync(*store, {MakeTask("first")}), IsOk());
  // The first sync after idle is immediate; this one is held for ~30 s
  // while reads go on from their own connections.
  TestLatch acked;
  store->Insert({MakeTask("second")},
                [&](const absl::StatusOr<std::vector<InsertResult>>&) {
                  acked.Notify();
                });
  EXPECT_THAT(store->Get("first"), IsOk());
  EXPECT_THAT(store->LoadUnfinished(), IsOk());
  EXPECT_FALSE(acked.HasBeenNotified());
  store->Close();  // Flushes: syncs and acks at once.
  EXPECT_TRUE(acked.HasBeenNotified());
}

// How many of `n` lone InsertHere calls ran their callback on the calling
// thread, before returning (each awaited before the next).
int InsertsCommittedHere(Store& store, int n) {
  int here = 0;
  for (int i = 0; i < n; ++i) {
    TestLatch done;
    std::atomic<bool> returned{false};
    std::atomic<bool> before_return{false};
    store.InsertHere({MakeTask(absl::StrCat("here-", i))},
                     [&](const absl::StatusOr<std::vector<InsertResult>>& r) {
                       EXPECT_THAT(r, IsOk());
                       before_return = !returned;
                       done.Notify();
                     });
    returned = true;
    done.Wait();
    if (before_return) ++here;
  }
  return here;
}

// Without fsync a write from a caller holding no lock commits on its own
// thread when the writer has nothing else to do (no hand-off); with fsync
// it never does (the caller would wait for the disk).
TEST(SqliteStoreTest, LoneWriteWithoutFsyncCommitsOnTheCallersThread) {
  TempDir none_dir, sync_dir;
  StoreOptions none = OptionsFor(none_dir.path());
  none.durability = Durability::kNone;
  FORQ_ASSERT_OK_AND_ASSIGN(auto fast, SqliteStore::Open(none));
  EXPECT_GT(InsertsCommittedHere(*fast, 50), 0);
  EXPECT_THAT(fast->Get("here-49"), IsOk());
  StoreOptions sync = OptionsFor(sync_dir.path());
  sync.durability = Durability::kSync;
  FORQ_ASSERT_OK_AND_ASSIGN(auto safe, SqliteStore::Open(sync));
  EXPECT_EQ(InsertsCommittedHere(*safe, 20), 0);
  EXPECT_THAT(safe->Get("here-19"), IsOk());
}

// A write committed on the caller's thread never overtakes one queued
// before it: the later state of a task is the one stored.
TEST(SqliteStoreTest, WriteCommittedHereFollowsQueuedWrites) {
  TempDir dir;
  StoreOptions options = OptionsFor(dir.path());
  options.durability = Durability::kNone;
  FORQ_ASSERT_OK_AND_ASSIGN(auto store, SqliteStore::Open(options));
  for (int i = 0; i < 50; ++i) {
    const std::string id = absl::StrCat("t", i);
    ASSERT_THAT(InsertSync(*store, {MakeTask(id)}), IsOk());
    v1::Task running = MakeTask(id);
    running.set_state(v1::RUNNING);
    v1::Task finished = MakeTask(id);
    finished.set_state(v1::SUCCEEDED);
    TestLatch both;
    std::atomic<int> done{0};
    store->Update({running}, [&](absl::Status s) {
      EXPECT_THAT(s, IsOk());
      if (++done == 2) both.Notify();
    });
    store->UpdateHere({finished}, [&](absl::Status s) {
      EXPECT_THAT(s, IsOk());
      if (++done == 2) both.Notify();
    });
    both.Wait();
    absl::StatusOr<v1::Task> stored = store->Get(id);
    ASSERT_THAT(stored, IsOk());
    EXPECT_EQ(stored->state(), v1::SUCCEEDED) << id;
  }
}

}  // namespace
}  // namespace forq::server
