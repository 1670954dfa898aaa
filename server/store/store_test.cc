// Contract tests run against every Store implementation.
#include "server/store/store.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include "common/mutex.h"
#include "server/store/test_latch.h"
#include "tests/testing/postgres_server.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace forq::server {
namespace {

using ::forq::testing::IsOk;
using ::forq::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::SizeIs;

using ::forq::testing::TempDir;

v1::Task MakeTask(absl::string_view id, absl::string_view queue = "default",
                  absl::string_view kind = "echo") {
  v1::Task task;
  task.set_id(std::string(id));
  task.set_queue(std::string(queue));
  task.set_kind(std::string(kind));
  task.set_payload(absl::StrCat("payload of ", id));
  task.set_state(v1::QUEUED);
  task.set_max_attempts(5);
  task.mutable_created_at()->set_seconds(1700000000);
  return task;
}

std::string Id(int n) { return absl::StrFormat("t%06d", n); }

// Blocking wrappers around the asynchronous writes. They wait on a
// latch that the done callback fires, never on a sleep.
absl::StatusOr<std::vector<InsertResult>> InsertSync(
    Store& store, std::vector<v1::Task> tasks) {
  TestLatch done;
  absl::StatusOr<std::vector<InsertResult>> out;
  store.Insert(std::move(tasks),
               [&](absl::StatusOr<std::vector<InsertResult>> result) {
                 out = std::move(result);
                 done.Notify();
               });
  done.Wait();
  return out;
}

absl::Status WriteSync(const std::function<void(Store::WriteDone)>& write) {
  TestLatch done;
  absl::Status out;
  write([&](absl::Status status) {
    out = std::move(status);
    done.Notify();
  });
  done.Wait();
  return out;
}

absl::Status UpdateSync(Store& store, std::vector<v1::Task> tasks) {
  return WriteSync([&](Store::WriteDone done) {
    store.Update(std::move(tasks), std::move(done));
  });
}

struct StoreParam {
  std::string kind;
  Durability durability;
};

std::string ParamName(const ::testing::TestParamInfo<StoreParam>& info) {
  switch (info.param.durability) {
    case Durability::kSync:
      return info.param.kind + "Sync";
    case Durability::kBatch:
      return info.param.kind + "Batch";
    case Durability::kNone:
      return info.param.kind + "None";
  }
  return info.param.kind;
}

class StoreContractTest : public ::testing::TestWithParam<StoreParam> {
 protected:
  void SetUp() override {
    options_.kind = GetParam().kind;
    options_.durability = GetParam().durability;
    options_.batch_interval = absl::Milliseconds(2);
    options_.data_dir = absl::StrCat(dir_.path(), "/data");
    if (options_.kind == "postgres") {
      // A schema of its own on the binary's PostgreSQL server.
      auto server = forq::testing::PostgresServer::Shared();
      ASSERT_THAT(server, IsOk());
      auto uri = (*server)->NewSchemaUri("store");
      ASSERT_THAT(uri, IsOk());
      options_.postgres_uri = *uri;
    }
    auto store = OpenStore(options_);
    ASSERT_THAT(store, IsOk());
    store_ = std::move(store).value();
  }
  bool Persistent() const { return GetParam().kind != "memory"; }
  // Closes and opens the store on the same data_dir.
  void Reopen() {
    store_->Close();
    store_.reset();
    auto store = OpenStore(options_);
    ASSERT_THAT(store, IsOk());
    store_ = std::move(store).value();
  }

  TempDir dir_;
  StoreOptions options_;
  std::unique_ptr<Store> store_;
};

TEST_P(StoreContractTest, InsertThenGetReturnsTask) {
  FORQ_ASSERT_OK_AND_ASSIGN(auto results,
                            InsertSync(*store_, {MakeTask("a1")}));
  ASSERT_THAT(results, SizeIs(1));
  EXPECT_FALSE(results[0].existing);
  EXPECT_EQ(results[0].task.id(), "a1");
  FORQ_ASSERT_OK_AND_ASSIGN(v1::Task got, store_->Get("a1"));
  EXPECT_EQ(got.SerializeAsString(), MakeTask("a1").SerializeAsString());
}

TEST_P(StoreContractTest, GetUnknownIsNotFound) {
  EXPECT_THAT(store_->Get("nope"), StatusIs(absl::StatusCode::kNotFound));
}

TEST_P(StoreContractTest, UpdateReplacesTask) {
  ASSERT_THAT(InsertSync(*store_, {MakeTask("a1")}), IsOk());
  v1::Task task = MakeTask("a1");
  task.set_state(v1::SUCCEEDED);
  task.set_result("done");
  task.set_attempt(1);
  ASSERT_THAT(UpdateSync(*store_, {task}), IsOk());
  FORQ_ASSERT_OK_AND_ASSIGN(v1::Task got, store_->Get("a1"));
  EXPECT_EQ(got.state(), v1::SUCCEEDED);
  EXPECT_EQ(got.result(), "done");
}

// Writes queued back to back usually share a group commit, where the store
// may fold them into one row: whatever it does, the last write wins and
// every call hears of its own success.
TEST_P(StoreContractTest, InsertFollowedAtOnceByUpdatesKeepsTheLastVersion) {
  constexpr int kTasks = 200;
  TestLatch done;
  std::atomic<int> pending{3 * kTasks};
  std::atomic<int> failures{0};
  auto count = [&](bool ok) {
    if (!ok) ++failures;
    if (--pending == 0) done.Notify();
  };
  for (int i = 0; i < kTasks; ++i) {
    v1::Task t = MakeTask(Id(i));
    store_->Insert({t},
                   [&](const absl::StatusOr<std::vector<InsertResult>>& r) {
                     count(r.ok());
                   });
    t.set_state(v1::RUNNING);
    t.set_attempt(1);
    store_->Update({t}, [&](absl::Status s) { count(s.ok()); });
    t.set_state(v1::SUCCEEDED);
    t.set_result(absl::StrCat("result ", i));
    t.mutable_finished_at()->set_seconds(1700000100);
    store_->Update({t}, [&](absl::Status s) { count(s.ok()); });
  }
  done.Wait();
  EXPECT_EQ(failures.load(), 0);
  for (int i = 0; i < kTasks; ++i) {
    absl::StatusOr<v1::Task> got = store_->Get(Id(i));
    ASSERT_THAT(got, IsOk());
    EXPECT_EQ(got->state(), v1::SUCCEEDED);
    EXPECT_EQ(got->result(), absl::StrCat("result ", i));
    EXPECT_EQ(got->attempt(), 1);
  }
  ListQuery q;
  q.state = v1::SUCCEEDED;
  q.page_size = 1000;
  absl::StatusOr<ListPage> page = store_->List(q);
  ASSERT_THAT(page, IsOk());
  EXPECT_EQ(page->tasks.size(), static_cast<size_t>(kTasks));
}

TEST_P(StoreContractTest, UpdateOfUnknownIdFailsWholeCall) {
  ASSERT_THAT(InsertSync(*store_, {MakeTask("a1")}), IsOk());
  v1::Task known = MakeTask("a1");
  known.set_state(v1::RUNNING);
  EXPECT_THAT(UpdateSync(*store_, {known, MakeTask("ghost")}),
              StatusIs(absl::StatusCode::kNotFound));
  FORQ_ASSERT_OK_AND_ASSIGN(v1::Task got, store_->Get("a1"));
  EXPECT_EQ(got.state(), v1::QUEUED);
}

TEST_P(StoreContractTest, BatchWithDuplicateIdStoresNothing) {
  ASSERT_THAT(InsertSync(*store_, {MakeTask("a1")}), IsOk());
  EXPECT_THAT(InsertSync(*store_, {MakeTask("b1"), MakeTask("b2"),
                                   MakeTask("a1"), MakeTask("b3")}),
              StatusIs(absl::StatusCode::kAlreadyExists));
  EXPECT_THAT(store_->Get("b1"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(store_->Get("b2"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(store_->Get("b3"), StatusIs(absl::StatusCode::kNotFound));
}

// Batches longer than a multi-row insert, with keyed tasks between the
// rows: everything stored, or (one id taken, deep in the batch) nothing,
// and the error names the id.
TEST_P(StoreContractTest, LongBatchIsStoredWholeOrNotAtAll) {
  ASSERT_THAT(InsertSync(*store_, {MakeTask("taken")}), IsOk());
  auto batch = [](absl::string_view prefix) {
    std::vector<v1::Task> tasks;
    for (int i = 0; i < 45; ++i) {
      tasks.push_back(MakeTask(absl::StrCat(prefix, i)));
      if (i % 20 == 7) {
        tasks.back().set_idempotency_key(absl::StrCat(prefix, "key", i));
      }
    }
    return tasks;
  };
  // The taken id in a chunk of 4 rows, of 16, and alone.
  for (int at : {2, 12, 25}) {
    std::vector<v1::Task> bad = batch(absl::StrCat("bad", at, "-"));
    bad[at] = MakeTask("taken");
    absl::Status refused = InsertSync(*store_, bad).status();
    EXPECT_THAT(refused, StatusIs(absl::StatusCode::kAlreadyExists));
    EXPECT_THAT(std::string(refused.message()), ::testing::HasSubstr("taken"));
    for (const v1::Task& t : bad) {
      if (t.id() != "taken") {
        EXPECT_THAT(store_->Get(t.id()), StatusIs(absl::StatusCode::kNotFound))
            << t.id();
      }
    }
  }
  std::vector<v1::Task> good = batch("good");
  ASSERT_THAT(InsertSync(*store_, good), IsOk());
  for (const v1::Task& t : good) {
    FORQ_ASSERT_OK_AND_ASSIGN(v1::Task got, store_->Get(t.id()));
    EXPECT_EQ(got.idempotency_key(), t.idempotency_key());
  }
}

TEST_P(StoreContractTest, FailedBatchDoesNotFailConcurrentNeighbours) {
  ASSERT_THAT(InsertSync(*store_, {MakeTask("a1")}), IsOk());
  // Queue several calls back to back so they likely share one transaction;
  // only the bad one may fail.
  constexpr int kCalls = 20;
  Mutex mu;
  CondVar cv;
  int remaining = kCalls;
  std::vector<absl::Status> statuses(kCalls);
  for (int i = 0; i < kCalls; ++i) {
    std::vector<v1::Task> batch = {MakeTask(absl::StrCat("n", i, "a")),
                                   MakeTask(absl::StrCat("n", i, "b"))};
    if (i == kCalls / 2) {
      batch.push_back(MakeTask("a1"));
    }
    store_->Insert(std::move(batch),
                   [&, i](const absl::StatusOr<std::vector<InsertResult>>& r) {
                     MutexLock lock(&mu);
                     statuses[i] = r.status();
                     if (--remaining == 0) {
                       cv.SignalAll();
                     }
                   });
  }
  {
    MutexLock lock(&mu);
    while (remaining > 0) {
      cv.Wait(&mu);
    }
  }
  for (int i = 0; i < kCalls; ++i) {
    if (i == kCalls / 2) {
      EXPECT_THAT(statuses[i], StatusIs(absl::StatusCode::kAlreadyExists));
      EXPECT_THAT(store_->Get(absl::StrCat("n", i, "a")),
                  StatusIs(absl::StatusCode::kNotFound));
    } else {
      EXPECT_THAT(statuses[i], IsOk()) << i;
      EXPECT_THAT(store_->Get(absl::StrCat("n", i, "b")), IsOk());
    }
  }
}

TEST_P(StoreContractTest, IdempotencyKeyAcrossCallsReturnsStoredTask) {
  v1::Task first = MakeTask("a1");
  first.set_idempotency_key("k");
  ASSERT_THAT(InsertSync(*store_, {first}), IsOk());
  v1::Task second = MakeTask("a2");
  second.set_idempotency_key("k");
  FORQ_ASSERT_OK_AND_ASSIGN(auto results,
                            InsertSync(*store_, {second, MakeTask("a3")}));
  ASSERT_THAT(results, SizeIs(2));
  EXPECT_TRUE(results[0].existing);
  EXPECT_EQ(results[0].task.id(), "a1");
  EXPECT_FALSE(results[1].existing);
  EXPECT_THAT(store_->Get("a2"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(store_->Get("a3"), IsOk());
}

TEST_P(StoreContractTest, IdempotencyKeyWithinOneCallInsertsOnce) {
  v1::Task first = MakeTask("a1");
  first.set_idempotency_key("k");
  v1::Task second = MakeTask("a2");
  second.set_idempotency_key("k");
  FORQ_ASSERT_OK_AND_ASSIGN(auto results, InsertSync(*store_, {first, second}));
  ASSERT_THAT(results, SizeIs(2));
  EXPECT_FALSE(results[0].existing);
  EXPECT_TRUE(results[1].existing);
  EXPECT_EQ(results[1].task.id(), "a1");
  EXPECT_THAT(store_->Get("a2"), StatusIs(absl::StatusCode::kNotFound));
}

TEST_P(StoreContractTest, EmptyIdempotencyKeysNeverCollide) {
  ASSERT_THAT(InsertSync(*store_, {MakeTask("a1"), MakeTask("a2")}), IsOk());
  EXPECT_THAT(store_->Get("a2"), IsOk());
}

TEST_P(StoreContractTest, ListFiltersAndPagesThrough250Tasks) {
  std::vector<v1::Task> tasks;
  tasks.reserve(250);
  for (int i = 0; i < 250; ++i) {
    v1::Task task = MakeTask(Id(i), i % 2 == 0 ? "even" : "odd",
                             i % 5 == 0 ? "sleep" : "echo");
    if (i % 3 == 0) {
      task.set_state(v1::SUCCEEDED);
    }
    tasks.push_back(std::move(task));
  }
  // Insert in reverse to show order comes from ids, not insertion.
  std::reverse(tasks.begin(), tasks.end());
  ASSERT_THAT(InsertSync(*store_, tasks), IsOk());

  std::vector<std::string> ids;
  ListQuery query;
  query.page_size = 100;
  int pages = 0;
  do {
    FORQ_ASSERT_OK_AND_ASSIGN(ListPage page, store_->List(query));
    for (const auto& t : page.tasks) {
      ids.push_back(t.id());
    }
    query.page_token = page.next_page_token;
    ++pages;
  } while (!query.page_token.empty());
  EXPECT_EQ(pages, 3);
  ASSERT_THAT(ids, SizeIs(250));
  EXPECT_TRUE(std::is_sorted(ids.begin(), ids.end()));
  EXPECT_EQ(std::set<std::string>(ids.begin(), ids.end()).size(), 250u);

  ListQuery filtered;
  filtered.queue = "even";
  filtered.kind = "sleep";
  filtered.state = v1::SUCCEEDED;
  filtered.page_size = 2;
  std::vector<std::string> matched;
  do {
    FORQ_ASSERT_OK_AND_ASSIGN(ListPage page, store_->List(filtered));
    EXPECT_LE(page.tasks.size(), 2u);
    for (const auto& t : page.tasks) {
      matched.push_back(t.id());
    }
    filtered.page_token = page.next_page_token;
  } while (!filtered.page_token.empty());
  std::vector<std::string> want;
  for (int i = 0; i < 250; i += 30) {
    want.push_back(Id(i));  // lcm(2,3,5)
  }
  EXPECT_EQ(matched, want);
}

TEST_P(StoreContractTest, ListPageSizeDefaultsAndCaps) {
  std::vector<v1::Task> tasks;
  tasks.reserve(1100);
  for (int i = 0; i < 1100; ++i) {
    tasks.push_back(MakeTask(Id(i)));
  }
  ASSERT_THAT(InsertSync(*store_, tasks), IsOk());
  ListQuery query;
  query.page_size = 0;
  FORQ_ASSERT_OK_AND_ASSIGN(ListPage page, store_->List(query));
  EXPECT_THAT(page.tasks, SizeIs(100));
  query.page_size = 5000;
  FORQ_ASSERT_OK_AND_ASSIGN(page, store_->List(query));
  EXPECT_THAT(page.tasks, SizeIs(1000));
  EXPECT_FALSE(page.next_page_token.empty());
}

TEST_P(StoreContractTest, ListWithBadTokenIsInvalidArgument) {
  ListQuery query;
  query.page_token = "!!not base64!!";
  EXPECT_THAT(store_->List(query),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_P(StoreContractTest, LoadUnfinishedReturnsQueuedAndRunning) {
  v1::Task running = MakeTask("b");
  running.set_state(v1::RUNNING);
  v1::Task dead = MakeTask("c");
  dead.set_state(v1::DEAD);
  v1::Task cancelled = MakeTask("d");
  cancelled.set_state(v1::CANCELLED);
  ASSERT_THAT(InsertSync(*store_, {MakeTask("a"), running, dead, cancelled}),
              IsOk());
  FORQ_ASSERT_OK_AND_ASSIGN(auto unfinished, store_->LoadUnfinished());
  std::vector<std::string> ids;
  ids.reserve(unfinished.size());
  for (const auto& t : unfinished) {
    ids.push_back(t.id());
  }
  EXPECT_THAT(ids, ElementsAre("a", "b"));
}

TEST_P(StoreContractTest, PurgeExpiredDeletesOnlyExpiredTerminalTasks) {
  const absl::Time finished = absl::FromUnixSeconds(1800000000);
  auto finished_task = [&](absl::string_view id, v1::TaskState state,
                           int ttl_s) {
    v1::Task task = MakeTask(id);
    task.set_state(state);
    task.set_idempotency_key(absl::StrCat("key-", id));
    task.mutable_finished_at()->set_seconds(absl::ToUnixSeconds(finished));
    task.mutable_result_ttl()->set_seconds(ttl_s);
    return task;
  };
  ASSERT_THAT(
      InsertSync(*store_, {finished_task("ok", v1::SUCCEEDED, 60),
                           finished_task("failed", v1::FAILED, 60),
                           finished_task("long", v1::DEAD, 3600),
                           finished_task("forever", v1::CANCELLED, 0),
                           // Not terminal: never purged even with a TTL.
                           finished_task("queued", v1::QUEUED, 60)}),
      IsOk());
  FORQ_ASSERT_OK_AND_ASSIGN(int64_t purged,
                            store_->PurgeExpired(finished + absl::Seconds(59)));
  EXPECT_EQ(purged, 0);
  FORQ_ASSERT_OK_AND_ASSIGN(purged,
                            store_->PurgeExpired(finished + absl::Seconds(60)));
  EXPECT_EQ(purged, 2);
  EXPECT_THAT(store_->Get("ok"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(store_->Get("failed"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(store_->Get("long"), IsOk());
  EXPECT_THAT(store_->Get("forever"), IsOk());
  EXPECT_THAT(store_->Get("queued"), IsOk());
  FORQ_ASSERT_OK_AND_ASSIGN(purged,
                            store_->PurgeExpired(finished + absl::Hours(1e6)));
  EXPECT_EQ(purged, 1);

  // A purged task's idempotency key is free again.
  v1::Task again = MakeTask("ok2");
  again.set_idempotency_key("key-ok");
  FORQ_ASSERT_OK_AND_ASSIGN(auto results, InsertSync(*store_, {again}));
  EXPECT_FALSE(results[0].existing);
}

// A task that finished, was retried and finished again keeps its later
// expiry: the purge due for its first finish leaves it.
TEST_P(StoreContractTest, PurgeKeepsATaskFinishedAgainUntilItsLaterExpiry) {
  const absl::Time first = absl::FromUnixSeconds(1800000000);
  v1::Task task = MakeTask("retried");
  task.set_state(v1::FAILED);
  task.mutable_finished_at()->set_seconds(absl::ToUnixSeconds(first));
  task.mutable_result_ttl()->set_seconds(60);
  ASSERT_THAT(InsertSync(*store_, {task}), IsOk());
  task.set_state(v1::QUEUED);
  task.clear_finished_at();
  ASSERT_THAT(UpdateSync(*store_, {task}), IsOk());
  task.set_state(v1::SUCCEEDED);
  task.mutable_finished_at()->set_seconds(absl::ToUnixSeconds(first) + 600);
  ASSERT_THAT(UpdateSync(*store_, {task}), IsOk());

  FORQ_ASSERT_OK_AND_ASSIGN(int64_t purged,
                            store_->PurgeExpired(first + absl::Seconds(60)));
  EXPECT_EQ(purged, 0);
  EXPECT_THAT(store_->Get("retried"), IsOk());
  FORQ_ASSERT_OK_AND_ASSIGN(purged,
                            store_->PurgeExpired(first + absl::Seconds(660)));
  EXPECT_EQ(purged, 1);
  EXPECT_THAT(store_->Get("retried"), StatusIs(absl::StatusCode::kNotFound));
}

TEST_P(StoreContractTest, ObjectsPutReplaceDeleteLoad) {
  auto put = [&](const std::string& name, const std::string& blob) {
    return WriteSync([&](Store::WriteDone done) {
      store_->PutObject(name, blob, std::move(done));
    });
  };
  ASSERT_THAT(put("dict/a", "1"), IsOk());
  ASSERT_THAT(put("dict/b", std::string("\0\1\2", 3)), IsOk());
  ASSERT_THAT(put("dict/a", "2"), IsOk());
  ASSERT_THAT(put("queue/q", "x"), IsOk());
  ASSERT_THAT(WriteSync([&](Store::WriteDone done) {
                store_->DeleteObject("queue/q", std::move(done));
              }),
              IsOk());
  FORQ_ASSERT_OK_AND_ASSIGN(auto objects, store_->LoadObjects());
  using Obj = std::pair<std::string, std::string>;
  EXPECT_THAT(objects, ElementsAre(Obj("dict/a", "2"),
                                   Obj("dict/b", std::string("\0\1\2", 3))));
}

TEST_P(StoreContractTest, WriteObjectsAppliesPutsAndDeletesTogether) {
  ASSERT_THAT(WriteSync([&](Store::WriteDone done) {
                store_->WriteObjects({{"m/a", "1"}, {"m/b", "2"}, {"m/c", "3"}},
                                     std::move(done));
              }),
              IsOk());
  ASSERT_THAT(WriteSync([&](Store::WriteDone done) {
                store_->WriteObjects(
                    {{"m/a", std::nullopt}, {"m/b", "22"}, {"m/d", "4"}},
                    std::move(done));
              }),
              IsOk());
  FORQ_ASSERT_OK_AND_ASSIGN(auto objects, store_->LoadObjects());
  using Obj = std::pair<std::string, std::string>;
  EXPECT_THAT(objects,
              ElementsAre(Obj("m/b", "22"), Obj("m/c", "3"), Obj("m/d", "4")));
  store_->Close();
  EXPECT_THAT(WriteSync([&](Store::WriteDone done) {
                store_->WriteObjects({{"m/e", "5"}}, std::move(done));
              }),
              StatusIs(absl::StatusCode::kUnavailable));
}

// Only stores that persist: instantiated below for the SQLite modes.
class PersistentStoreContractTest : public StoreContractTest {};

TEST_P(PersistentStoreContractTest, ReopenKeepsEverything) {
  v1::Task keyed = MakeTask("a1");
  keyed.set_idempotency_key("k");
  v1::Task running = MakeTask("a2");
  running.set_state(v1::RUNNING);
  ASSERT_THAT(InsertSync(*store_, {keyed, running, MakeTask("a3")}), IsOk());
  v1::Task done = MakeTask("a3");
  done.set_state(v1::SUCCEEDED);
  ASSERT_THAT(UpdateSync(*store_, {done}), IsOk());
  ASSERT_THAT(WriteSync([&](Store::WriteDone cb) {
                store_->PutObject("obj", "blob", std::move(cb));
              }),
              IsOk());
  Reopen();
  FORQ_ASSERT_OK_AND_ASSIGN(v1::Task got, store_->Get("a3"));
  EXPECT_EQ(got.state(), v1::SUCCEEDED);
  FORQ_ASSERT_OK_AND_ASSIGN(auto unfinished, store_->LoadUnfinished());
  EXPECT_THAT(unfinished, SizeIs(2));
  FORQ_ASSERT_OK_AND_ASSIGN(auto objects, store_->LoadObjects());
  EXPECT_THAT(objects, SizeIs(1));
  v1::Task again = MakeTask("a9");
  again.set_idempotency_key("k");
  FORQ_ASSERT_OK_AND_ASSIGN(auto results, InsertSync(*store_, {again}));
  EXPECT_TRUE(results[0].existing);
  EXPECT_EQ(results[0].task.id(), "a1");
}

TEST_P(StoreContractTest, ConcurrentInsertsFrom16ThreadsAreAllStored) {
  constexpr int kThreads = 16;
  constexpr int kPerThread = 50;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  threads.reserve(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        auto result =
            InsertSync(*store_, {MakeTask(absl::StrCat("c", t, "-", i))});
        if (!result.ok()) {
          failures.fetch_add(1, std::memory_order_relaxed);
        }
      }
    });
  }
  for (auto& thread : threads) {
    thread.join();
  }
  EXPECT_EQ(failures.load(), 0);
  ListQuery query;
  query.page_size = 1000;
  FORQ_ASSERT_OK_AND_ASSIGN(ListPage page, store_->List(query));
  EXPECT_THAT(page.tasks, SizeIs(kThreads * kPerThread));
}

TEST_P(StoreContractTest, ReadsRunConcurrentlyWithWrites) {
  constexpr int kWriters = 4;
  constexpr int kPerWriter = 100;
  std::atomic<int> writers_left{kWriters};
  std::atomic<int> read_errors{0};
  std::vector<std::thread> threads;
  threads.reserve(kWriters + 2);
  for (int w = 0; w < kWriters; ++w) {
    threads.emplace_back([&, w] {
      for (int i = 0; i < kPerWriter; ++i) {
        v1::Task task = MakeTask(absl::StrCat("w", w, "-", Id(i)));
        EXPECT_THAT(InsertSync(*store_, {task}), IsOk());
        task.set_state(v1::SUCCEEDED);
        EXPECT_THAT(UpdateSync(*store_, {task}), IsOk());
      }
      writers_left.fetch_sub(1);
    });
  }
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&] {
      while (writers_left.load() > 0) {
        ListQuery query;
        query.state = v1::SUCCEEDED;
        if (!store_->List(query).ok()) {
          read_errors.fetch_add(1);
        }
        auto got = store_->Get("w0-t000000");
        if (!got.ok() && got.status().code() != absl::StatusCode::kNotFound) {
          read_errors.fetch_add(1);
        }
      }
    });
  }
  for (auto& thread : threads) {
    thread.join();
  }
  EXPECT_EQ(read_errors.load(), 0);
  ListQuery query;
  query.state = v1::SUCCEEDED;
  query.page_size = 1000;
  FORQ_ASSERT_OK_AND_ASSIGN(ListPage page, store_->List(query));
  EXPECT_THAT(page.tasks, SizeIs(kWriters * kPerWriter));
}

TEST_P(StoreContractTest, WritesFromOneThreadApplyInOrder) {
  ASSERT_THAT(InsertSync(*store_, {MakeTask("a1")}), IsOk());
  TestLatch last;
  for (int i = 1; i <= 50; ++i) {
    v1::Task task = MakeTask("a1");
    task.set_attempt(i);
    store_->Update({task}, [&, i](absl::Status status) {
      EXPECT_THAT(status, IsOk());
      if (i == 50) {
        last.Notify();
      }
    });
  }
  last.Wait();
  FORQ_ASSERT_OK_AND_ASSIGN(v1::Task got, store_->Get("a1"));
  EXPECT_EQ(got.attempt(), 50);
}

TEST_P(StoreContractTest, WritesAfterCloseAreUnavailable) {
  store_->Close();
  store_->Close();  // Idempotent.
  EXPECT_THAT(InsertSync(*store_, {MakeTask("late")}),
              StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(UpdateSync(*store_, {MakeTask("late")}),
              StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(WriteSync([&](Store::WriteDone done) {
                store_->PutObject("o", "b", std::move(done));
              }),
              StatusIs(absl::StatusCode::kUnavailable));
}

TEST_P(StoreContractTest, CloseFlushesQueuedWrites) {
  std::atomic<int> acked{0};
  for (int i = 0; i < 200; ++i) {
    store_->Insert(
        {MakeTask(Id(i))},
        [&](const absl::StatusOr<std::vector<InsertResult>>& result) {
          if (result.ok()) {
            acked.fetch_add(1);
          }
        });
  }
  store_->Close();
  EXPECT_EQ(acked.load(), 200);
  if (Persistent()) {
    Reopen();
    ListQuery query;
    query.page_size = 1000;
    FORQ_ASSERT_OK_AND_ASSIGN(ListPage page, store_->List(query));
    EXPECT_THAT(page.tasks, SizeIs(200));
  }
}

#ifdef FORQ_STORE_TEST_POSTGRES
// Built into postgres_store_test, which runs as one process against one
// private PostgreSQL server (tests/testing/postgres_server.h).
INSTANTIATE_TEST_SUITE_P(
    Postgres, StoreContractTest,
    ::testing::Values(StoreParam{"postgres", Durability::kSync},
                      StoreParam{"postgres", Durability::kNone}),
    ParamName);

INSTANTIATE_TEST_SUITE_P(
    Postgres, PersistentStoreContractTest,
    ::testing::Values(StoreParam{"postgres", Durability::kSync},
                      StoreParam{"postgres", Durability::kNone}),
    ParamName);
#else
INSTANTIATE_TEST_SUITE_P(
    AllStores, StoreContractTest,
    ::testing::Values(StoreParam{"memory", Durability::kSync},
                      StoreParam{"sqlite", Durability::kSync},
                      StoreParam{"sqlite", Durability::kBatch},
                      StoreParam{"sqlite", Durability::kNone}),
    ParamName);

INSTANTIATE_TEST_SUITE_P(
    SqliteStores, PersistentStoreContractTest,
    ::testing::Values(StoreParam{"sqlite", Durability::kSync},
                      StoreParam{"sqlite", Durability::kBatch},
                      StoreParam{"sqlite", Durability::kNone}),
    ParamName);
#endif  // FORQ_STORE_TEST_POSTGRES

TEST(ParseDurabilityTest, ParsesKnownNames) {
  EXPECT_EQ(ParseDurability("sync").value(), Durability::kSync);
  EXPECT_EQ(ParseDurability("batch").value(), Durability::kBatch);
  EXPECT_EQ(ParseDurability("none").value(), Durability::kNone);
  EXPECT_THAT(ParseDurability("fast"),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(OpenStoreTest, UnknownKindIsInvalidArgument) {
  StoreOptions options;
  options.kind = "etcd";
  EXPECT_THAT(OpenStore(options),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("etcd")));
}

}  // namespace
}  // namespace forq::server
