// Persistence of Manager objects: only what the store accepted stays
// applied, writes are incremental (rows, not whole objects), objects come
// back from their rows, and byte budgets hold.
#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include "common/mutex.h"
#include "common/notification.h"
#include "server/manager/object_manager.h"
#include "server/store/memory_store.h"
#include "tests/testing/status_matchers.h"

namespace forq::server {
namespace {

using ::forq::testing::IsOk;
using ::forq::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::Pair;
using worker::ManagerOp;
using worker::ManagerReply;
using worker::ManagerRequest;
using worker::ManagerType;

// The real MemoryStore behind a seam that can refuse object writes (as a
// full disk does) and counts the bytes written.
class FaultyStore final : public Store {
 public:
  std::atomic<bool> fail_writes{false};
  std::atomic<int64_t> bytes_written{0};

  void Insert(std::vector<v1::Task> t, InsertDone d) override {
    inner_.Insert(std::move(t), std::move(d));
  }
  void Update(std::vector<v1::Task> t, WriteDone d) override {
    inner_.Update(std::move(t), std::move(d));
  }
  absl::StatusOr<v1::Task> Get(absl::string_view id) override {
    return inner_.Get(id);
  }
  absl::StatusOr<ListPage> List(const ListQuery& q) override {
    return inner_.List(q);
  }
  absl::StatusOr<std::vector<v1::Task>> LoadUnfinished() override {
    return inner_.LoadUnfinished();
  }
  absl::StatusOr<int64_t> PurgeExpired(absl::Time now) override {
    return inner_.PurgeExpired(now);
  }
  void PutObject(std::string name, std::string blob, WriteDone done) override {
    if (fail_writes) return done(absl::ResourceExhaustedError("disk full"));
    bytes_written += static_cast<int64_t>(name.size() + blob.size());
    inner_.PutObject(std::move(name), std::move(blob), std::move(done));
  }
  void DeleteObject(std::string name, WriteDone done) override {
    if (fail_writes) return done(absl::ResourceExhaustedError("disk full"));
    inner_.DeleteObject(std::move(name), std::move(done));
  }
  void WriteObjects(std::vector<ObjectWrite> writes, WriteDone done) override {
    if (fail_writes) return done(absl::ResourceExhaustedError("disk full"));
    {
      MutexLock lock(&held_mu_);
      if (hold_writes_) {
        held_.emplace_back(std::move(writes), std::move(done));
        return;
      }
    }
    for (const ObjectWrite& w : writes) {
      bytes_written +=
          static_cast<int64_t>(w.name.size() + (w.blob ? w.blob->size() : 0));
    }
    inner_.WriteObjects(std::move(writes), std::move(done));
  }
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> LoadObjects()
      override {
    return inner_.LoadObjects();
  }
  void Close() override { inner_.Close(); }

  // While held, object writes wait in arrival order for Release.
  void Hold(bool hold) {
    MutexLock lock(&held_mu_);
    hold_writes_ = hold;
  }
  size_t held() {
    MutexLock lock(&held_mu_);
    return held_.size();
  }
  // The oldest held write reaches the store, or fails as a full disk.
  void Release(bool ok) {
    std::pair<std::vector<ObjectWrite>, WriteDone> w;
    {
      MutexLock lock(&held_mu_);
      ASSERT_FALSE(held_.empty());
      w = std::move(held_.front());
      held_.erase(held_.begin());
    }
    if (!ok) return w.second(absl::ResourceExhaustedError("disk full"));
    Notification written;
    inner_.WriteObjects(std::move(w.first), [&](absl::Status s) {
      w.second(std::move(s));
      written.Notify();
    });
    written.WaitForNotification();
  }

 private:
  MemoryStore inner_;
  Mutex held_mu_;
  bool hold_writes_ ABSL_GUARDED_BY(held_mu_) = false;
  std::vector<std::pair<std::vector<ObjectWrite>, WriteDone>> held_
      ABSL_GUARDED_BY(held_mu_);
};

// A reply still to come.
struct Later {
  Notification done;
  Mutex mu;
  absl::StatusOr<ManagerReply> reply ABSL_GUARDED_BY(mu) =
      absl::UnknownError("pending");
  absl::StatusOr<ManagerReply> Get() {
    EXPECT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(10)));
    MutexLock lock(&mu);
    return reply;
  }
};

ManagerRequest Req(ManagerType type, ManagerOp op, std::string name) {
  ManagerRequest r;
  r.type = type;
  r.op = op;
  r.name = std::move(name);
  return r;
}

class ManagerPersistTest : public ::testing::Test {
 protected:
  void Open(ObjectManagerOptions options = {}) {
    mgr_.reset();
    mgr_ = std::make_unique<ObjectManager>(&store_, nullptr, options);
    ASSERT_THAT(mgr_->Recover(), IsOk());
  }
  absl::StatusOr<ManagerReply> Run(ManagerRequest r) {
    Notification done;
    Mutex mu;
    absl::StatusOr<ManagerReply> out = absl::UnknownError("pending");
    mgr_->Execute(std::move(r), [&](absl::StatusOr<ManagerReply> rep) {
      {
        MutexLock lock(&mu);
        out = std::move(rep);
      }
      done.Notify();
    });
    EXPECT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(10)));
    MutexLock lock(&mu);
    return out;
  }
  std::shared_ptr<Later> Start(ManagerRequest r) {
    auto later = std::make_shared<Later>();
    mgr_->Execute(std::move(r), [later](absl::StatusOr<ManagerReply> rep) {
      {
        MutexLock lock(&later->mu);
        later->reply = std::move(rep);
      }
      later->done.Notify();
    });
    return later;
  }
  std::shared_ptr<Later> StartSet(const std::string& k, const std::string& v) {
    ManagerRequest r = Req(ManagerType::kDict, ManagerOp::kSet, "d");
    r.key = k;
    r.value = v;
    return Start(std::move(r));
  }
  absl::StatusOr<ManagerReply> DictSet(const std::string& name,
                                       const std::string& k,
                                       const std::string& v) {
    ManagerRequest r = Req(ManagerType::kDict, ManagerOp::kSet, name);
    r.key = k;
    r.value = v;
    return Run(r);
  }
  absl::StatusOr<ManagerReply> DictGet(const std::string& name,
                                       const std::string& k) {
    ManagerRequest r = Req(ManagerType::kDict, ManagerOp::kGet, name);
    r.key = k;
    return Run(r);
  }
  absl::StatusOr<ManagerReply> Append(const std::string& name,
                                      const std::string& v) {
    ManagerRequest r = Req(ManagerType::kList, ManagerOp::kAppend, name);
    r.value = v;
    return Run(r);
  }
  std::vector<std::string> Slice(const std::string& name) {
    absl::StatusOr<ManagerReply> r =
        Run(Req(ManagerType::kList, ManagerOp::kSlice, name));
    EXPECT_THAT(r, IsOk());
    return r.ok() ? r->values : std::vector<std::string>{};
  }

  FaultyStore store_;
  std::unique_ptr<ObjectManager> mgr_;
};

// Defect 4 (docs/security.md): a write the store refused must not stay applied.
TEST_F(ManagerPersistTest, WriteTheStoreRefusedIsRolledBack) {
  Open();
  ASSERT_THAT(DictSet("d", "k", "v1"), IsOk());
  store_.fail_writes = true;
  EXPECT_THAT(DictSet("d", "k", "v2"),
              StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(DictSet("d", "new", "x"),
              StatusIs(absl::StatusCode::kUnavailable));
  store_.fail_writes = false;
  EXPECT_EQ(DictGet("d", "k")->value, "v1");
  EXPECT_THAT(DictGet("d", "new"), StatusIs(absl::StatusCode::kNotFound));
  // And a restart agrees.
  Open();
  EXPECT_EQ(DictGet("d", "k")->value, "v1");
  ASSERT_THAT(DictSet("d", "k", "v3"), IsOk());
  Open();
  EXPECT_EQ(DictGet("d", "k")->value, "v3");
}

// A second batch goes to the store while the first is in flight; replies
// wait for their own batch.
TEST_F(ManagerPersistTest, ASecondBatchIsWrittenWhileTheFirstIsInFlight) {
  Open();
  ASSERT_THAT(DictSet("d", "k", "0"), IsOk());
  store_.Hold(true);
  std::shared_ptr<Later> first = StartSet("a", "1");
  std::shared_ptr<Later> second = StartSet("b", "2");
  std::shared_ptr<Later> third = StartSet("c", "3");
  EXPECT_EQ(store_.held(), 2u);  // the third waits for a free slot
  EXPECT_FALSE(first->done.HasBeenNotified());
  store_.Release(true);
  EXPECT_THAT(first->Get(), IsOk());
  EXPECT_FALSE(second->done.HasBeenNotified());
  EXPECT_EQ(store_.held(), 2u);  // now the third is on its way
  store_.Release(true);
  store_.Release(true);
  EXPECT_THAT(second->Get(), IsOk());
  EXPECT_THAT(third->Get(), IsOk());
  store_.Hold(false);
  Open();
  EXPECT_EQ(DictGet("d", "a")->value, "1");
  EXPECT_EQ(DictGet("d", "c")->value, "3");
}

// Operations run while writes are held (a session message's) reach the
// store as one batch, not the first alone and the rest behind it.
TEST_F(ManagerPersistTest, WritesHeldBackGoToTheStoreAsOneBatch) {
  Open();
  ASSERT_THAT(DictSet("d", "k", "0"), IsOk());
  store_.Hold(true);
  mgr_->HoldWrites();
  std::shared_ptr<Later> first = StartSet("a", "1");
  std::shared_ptr<Later> second = StartSet("b", "2");
  std::shared_ptr<Later> third = StartSet("c", "3");
  EXPECT_EQ(store_.held(), 0u);
  mgr_->ReleaseWrites();
  EXPECT_EQ(store_.held(), 1u);
  EXPECT_FALSE(first->done.HasBeenNotified());
  store_.Release(true);
  for (auto* later : {&first, &second, &third}) {
    EXPECT_THAT((*later)->Get(), IsOk());
  }
  store_.Hold(false);
  Open();
  EXPECT_EQ(DictGet("d", "a")->value, "1");
  EXPECT_EQ(DictGet("d", "c")->value, "3");
}

// The first of two batches in flight fails and the store keeps the second:
// the second was computed on top of the first, so it fails too, and
// neither a read nor a restart sees it.
TEST_F(ManagerPersistTest, ABatchBehindAFailedOneIsNotApplied) {
  Open();
  ASSERT_THAT(DictSet("d", "k", "0"), IsOk());
  store_.Hold(true);
  std::shared_ptr<Later> first = StartSet("k", "1");
  std::shared_ptr<Later> second = StartSet("b", "2");
  std::shared_ptr<Later> third = StartSet("c", "3");
  ASSERT_EQ(store_.held(), 2u);
  store_.Release(false);
  store_.Release(true);  // lands in the store, behind a gap
  for (auto* later : {&first, &second, &third}) {
    EXPECT_THAT((*later)->Get(), StatusIs(absl::StatusCode::kUnavailable));
  }
  store_.Hold(false);
  EXPECT_EQ(DictGet("d", "k")->value, "0");
  EXPECT_THAT(DictGet("d", "b"), StatusIs(absl::StatusCode::kNotFound));
  // The next change removes the skipped record, so it never comes back.
  ASSERT_THAT(DictSet("d", "e", "5"), IsOk());
  Open();
  EXPECT_EQ(DictGet("d", "k")->value, "0");
  EXPECT_THAT(DictGet("d", "b"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(DictGet("d", "c"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(DictGet("d", "e")->value, "5");
}

TEST_F(ManagerPersistTest, ObjectWhoseCreationFailedDoesNotExist) {
  Open();
  store_.fail_writes = true;
  EXPECT_THAT(Append("l", "a"), StatusIs(absl::StatusCode::kUnavailable));
  ManagerRequest put = Req(ManagerType::kQueue, ManagerOp::kPut, "q");
  put.value = "item";
  EXPECT_THAT(Run(put), StatusIs(absl::StatusCode::kUnavailable));
  store_.fail_writes = false;
  EXPECT_TRUE(mgr_->ListObjects("").empty());
  ManagerRequest get = Req(ManagerType::kQueue, ManagerOp::kGet, "q");
  get.timeout_ms = 0;
  EXPECT_THAT(Run(get), StatusIs(absl::StatusCode::kDeadlineExceeded));
}

TEST_F(ManagerPersistTest, QueueGetTheStoreRefusedKeepsTheItem) {
  Open();
  ManagerRequest put = Req(ManagerType::kQueue, ManagerOp::kPut, "q");
  put.value = "item";
  ASSERT_THAT(Run(put), IsOk());
  store_.fail_writes = true;
  ManagerRequest get = Req(ManagerType::kQueue, ManagerOp::kGet, "q");
  get.timeout_ms = 0;
  EXPECT_THAT(Run(get), StatusIs(absl::StatusCode::kUnavailable));
  store_.fail_writes = false;
  absl::StatusOr<ManagerReply> again = Run(get);
  ASSERT_THAT(again, IsOk());
  EXPECT_EQ(again->value, "item");
}

// Defect 6 (docs/security.md): an append to a long list writes a chunk, not the
// list.
TEST_F(ManagerPersistTest, AppendToALongListWritesOneChunk) {
  // Rows in place: what one op writes, without the log's compactions.
  ObjectManagerOptions o;
  o.row_log.max_records = 0;
  Open(o);
  const std::string item(100, 'x');
  for (int batch = 0; batch < 20; ++batch) {
    ManagerRequest ext = Req(ManagerType::kList, ManagerOp::kExtend, "big");
    ext.values.assign(1000, item);
    ASSERT_THAT(Run(ext), IsOk());
  }
  const int64_t before = store_.bytes_written;
  for (int i = 0; i < 10; ++i) ASSERT_THAT(Append("big", item), IsOk());
  const int64_t per_append = (store_.bytes_written - before) / 10;
  // The list holds 2 MB; a chunk of 32 items is ~3.5 KB.
  EXPECT_LT(per_append, 8 * 1024) << per_append << " bytes per append";
  // Queue traffic at the head is also one chunk per op.
  ManagerRequest ext = Req(ManagerType::kQueue, ManagerOp::kPut, "tq");
  ext.value = item;
  for (int i = 0; i < 2000; ++i) ASSERT_THAT(Run(ext), IsOk());
  const int64_t q_before = store_.bytes_written;
  ManagerRequest get = Req(ManagerType::kQueue, ManagerOp::kGet, "tq");
  for (int i = 0; i < 10; ++i) ASSERT_THAT(Run(get), IsOk());
  EXPECT_LT((store_.bytes_written - q_before) / 10, 8 * 1024);
  // A dict set writes its key's row.
  for (int i = 0; i < 2000; ++i) {
    ASSERT_THAT(DictSet("bd", absl::StrCat(i), item), IsOk());
  }
  const int64_t d_before = store_.bytes_written;
  ASSERT_THAT(DictSet("bd", "7", "y"), IsOk());
  EXPECT_LT(store_.bytes_written - d_before, 1024);
}

TEST_F(ManagerPersistTest, ObjectsComeBackFromTheirRows) {
  Open();
  ASSERT_THAT(DictSet("d", "b", "2"), IsOk());
  ASSERT_THAT(DictSet("d", "a", "1"), IsOk());
  ASSERT_THAT(DictSet("d", "b", "22"), IsOk());
  ManagerRequest del = Req(ManagerType::kDict, ManagerOp::kDelete, "d");
  del.key = "a";
  ASSERT_THAT(Run(del), IsOk());
  ASSERT_THAT(DictSet("d", "c", "3"), IsOk());
  for (int i = 0; i < 100; ++i) {
    ASSERT_THAT(Append("l", absl::StrCat(i)), IsOk());
  }
  ManagerRequest pop0 = Req(ManagerType::kList, ManagerOp::kPop, "l");
  pop0.has_index = true;
  pop0.index = 0;
  ASSERT_THAT(Run(pop0), IsOk());
  ManagerRequest ins = Req(ManagerType::kList, ManagerOp::kInsert, "l");
  ins.has_index = true;
  ins.index = 50;
  ins.value = "mid";
  ASSERT_THAT(Run(ins), IsOk());
  ManagerRequest put = Req(ManagerType::kQueue, ManagerOp::kPut, "q");
  for (int i = 0; i < 40; ++i) {
    put.value = absl::StrCat("q", i);
    ASSERT_THAT(Run(put), IsOk());
  }
  ManagerRequest get = Req(ManagerType::kQueue, ManagerOp::kGet, "q");
  for (int i = 0; i < 35; ++i) ASSERT_THAT(Run(get), IsOk());
  ManagerRequest arr = Req(ManagerType::kArray, ManagerOp::kSet, "a");
  arr.length = 100;
  arr.typecode = "d";
  arr.has_index = true;
  arr.index = 70;
  arr.value = "2.5";
  ASSERT_THAT(Run(arr), IsOk());
  const std::vector<std::string> list_before = Slice("l");

  Open();  // a restart: everything from rows
  ManagerRequest items = Req(ManagerType::kDict, ManagerOp::kItems, "d");
  EXPECT_THAT(Run(items)->items, ElementsAre(Pair("b", "22"), Pair("c", "3")));
  EXPECT_EQ(Slice("l"), list_before);
  EXPECT_EQ(Slice("l").size(), 100u);
  get.timeout_ms = 0;
  for (int i = 35; i < 40; ++i) {
    EXPECT_EQ(Run(get)->value, absl::StrCat("q", i));
  }
  EXPECT_THAT(Run(get), StatusIs(absl::StatusCode::kDeadlineExceeded));
  ManagerRequest aget = Req(ManagerType::kArray, ManagerOp::kGet, "a");
  aget.has_index = true;
  aget.index = 70;
  EXPECT_EQ(Run(aget)->value, "2.5");
}

TEST_F(ManagerPersistTest, DeleteObjectRemovesEveryRow) {
  Open();
  for (int i = 0; i < 100; ++i) ASSERT_THAT(Append("l", "x"), IsOk());
  ASSERT_THAT(DictSet("d", "k", "v"), IsOk());
  ASSERT_THAT(mgr_->DeleteObject("l"), IsOk());
  ASSERT_THAT(mgr_->DeleteObject("d"), IsOk());
  // A later op waits for the deletes (they share the write queue).
  ASSERT_THAT(DictSet("other", "k", "v"), IsOk());
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> raw =
      store_.LoadObjects();
  ASSERT_THAT(raw, IsOk());
  for (const auto& [key, blob] : RowLog::Replay(*std::move(raw)).rows) {
    EXPECT_FALSE(absl::StartsWith(key, "manager/obj/l")) << key;
    EXPECT_FALSE(absl::StartsWith(key, "manager/obj/d|")) << key;
    EXPECT_NE(key, "manager/obj/d");
  }
}

// Group commits go to the store as log records; compactions (here every
// 8 records) and restarts write the rows in place, and nothing is lost.
TEST_F(ManagerPersistTest, ChangesSurviveCompactionsAndRestartsOfTheLog) {
  ObjectManagerOptions o;
  o.row_log.max_records = 8;
  Open(o);
  auto raw = [&] {
    absl::StatusOr<std::vector<std::pair<std::string, std::string>>> rows =
        store_.LoadObjects();
    EXPECT_THAT(rows, IsOk());
    return rows.ok() ? *std::move(rows)
                     : std::vector<std::pair<std::string, std::string>>();
  };
  // Records a replay applies.
  auto log_records = [&] { return RowLog::Replay(raw()).applied; };
  for (int i = 0; i < 100; ++i) {
    ASSERT_THAT(DictSet("d", absl::StrCat(i % 10), absl::StrCat(i)), IsOk());
    ASSERT_THAT(Append("l", absl::StrCat(i)), IsOk());
    EXPECT_LE(log_records(), 8u);
    // Records reuse their slots: 8 of them (one more in flight) and the
    // log's start.
    int log_rows = 0;
    for (const auto& kv : raw()) {
      log_rows += absl::StartsWith(kv.first, "manager/log/");
    }
    EXPECT_LE(log_rows, 10);
  }
  ManagerRequest del = Req(ManagerType::kDict, ManagerOp::kDelete, "d");
  del.key = "3";
  ASSERT_THAT(Run(del), IsOk());
  EXPECT_GT(log_records(), 0u);  // the last changes are in records
  Open(o);                       // replays them, then compacts
  EXPECT_EQ(log_records(), 0u);
  EXPECT_EQ(DictGet("d", "9")->value, "99");
  EXPECT_THAT(DictGet("d", "3"), StatusIs(absl::StatusCode::kNotFound));
  const std::vector<std::string> l = Slice("l");
  ASSERT_EQ(l.size(), 100u);
  EXPECT_EQ(l[0], "0");
  EXPECT_EQ(l[99], "99");
  // A restart with records still in the log (no compaction in between).
  ASSERT_THAT(DictSet("d", "0", "new"), IsOk());
  EXPECT_EQ(log_records(), 1u);
  Open(o);
  EXPECT_EQ(DictGet("d", "0")->value, "new");
}

// Defect 6 (docs/security.md): values, objects and the total are bounded.
TEST_F(ManagerPersistTest, ByteBudgetsRefuseWithClearErrors) {
  ObjectManagerOptions o;
  o.max_value_bytes = 1000;
  o.max_object_bytes = 10000;
  o.max_total_bytes = 25000;
  Open(o);
  absl::StatusOr<ManagerReply> big = DictSet("d", "k", std::string(1001, 'v'));
  EXPECT_THAT(big, StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_THAT(big.status().message(), ::testing::HasSubstr("1000 bytes"));
  for (int i = 0; i < 9; ++i) {
    ASSERT_THAT(DictSet("d", absl::StrCat(i), std::string(1000, 'v')), IsOk());
  }
  EXPECT_THAT(DictSet("d", "9", std::string(1000, 'v')),
              StatusIs(absl::StatusCode::kResourceExhausted));
  for (int i = 0; i < 9; ++i) {
    ASSERT_THAT(Append("l", std::string(1000, 'x')), IsOk());
  }
  for (int i = 0; i < 6; ++i) {
    ASSERT_THAT(Append("m", std::string(1000, 'x')), IsOk());
  }
  EXPECT_THAT(Append("m", std::string(1000, 'x')),
              StatusIs(absl::StatusCode::kResourceExhausted));  // total
  // Deleting returns the budget.
  ASSERT_THAT(mgr_->DeleteObject("l"), IsOk());
  EXPECT_THAT(Append("m", std::string(1000, 'x')), IsOk());
  // l *= n cannot get around it.
  ManagerRequest rep = Req(ManagerType::kList, ManagerOp::kRepeat, "m");
  rep.n = 100;
  EXPECT_THAT(Run(rep), StatusIs(absl::StatusCode::kResourceExhausted));
}

}  // namespace
}  // namespace forq::server
