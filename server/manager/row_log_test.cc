// RowLog against the real MemoryStore: a batch becomes one record, Replay
// gives back the rows as if written in place, compaction writes each
// changed row once and moves the log's start past the records, whose
// slots the next records reuse; failures leave no trace.
#include "server/manager/row_log.h"

#include <algorithm>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include "common/notification.h"
#include "server/manager/object_util.h"
#include "server/store/memory_store.h"
#include "tests/testing/status_matchers.h"

namespace forq::server {
namespace {

using ::forq::testing::IsOk;
using ::testing::_;
using ::testing::ElementsAre;
using ::testing::Pair;
using ::testing::SizeIs;
using Rows = std::vector<Store::ObjectWrite>;

Store::ObjectWrite Put(std::string name, std::string blob) {
  return {std::move(name), std::move(blob)};
}
Store::ObjectWrite Del(std::string name) { return {std::move(name), {}}; }

class RowLogTest : public ::testing::Test {
 protected:
  absl::Status Write(Rows writes) {
    Notification done;
    absl::Status out;
    store_.WriteObjects(std::move(writes), [&](absl::Status s) {
      out = std::move(s);
      done.Notify();
    });
    done.WaitForNotification();
    return out;
  }
  // Prepare + write + Done, as the ObjectManager does.
  Rows Persist(RowLog& log, Rows rows, bool compact = false) {
    Rows writes = log.Prepare(std::move(rows), compact);
    Rows sent = writes;
    absl::Status s = Write(std::move(writes));
    EXPECT_THAT(s, IsOk());
    log.Done(s.ok());
    return sent;
  }
  std::vector<std::pair<std::string, std::string>> Raw() {
    auto rows = store_.LoadObjects();
    EXPECT_THAT(rows, IsOk());
    if (!rows.ok()) return {};
    return *std::move(rows);
  }
  // The rows as readers see them, sorted.
  std::map<std::string, std::string> Rows_() {
    std::map<std::string, std::string> out;
    for (auto& [k, v] : RowLog::Replay(Raw()).rows) out[k] = v;
    return out;
  }
  // Log rows in the store, live or left behind the start.
  int LogRows() {
    auto raw = Raw();
    return static_cast<int>(
        std::count_if(raw.begin(), raw.end(), [](const auto& kv) {
          return absl::StartsWith(kv.first, "manager/log/");
        }));
  }
  // Records a replay applies.
  int LogRecords() { return static_cast<int>(RowLog::Replay(Raw()).applied); }

  MemoryStore store_;
};

TEST_F(RowLogTest, ABatchIsOneRecordAndReplaysAsItsRows) {
  ASSERT_THAT(Write({Put("a", "0"), Put("b", "0")}), IsOk());  // in place
  RowLog log;
  Rows sent = Persist(log, {Put("a", "1"), Put("c", "1"), Put("a", "2")});
  ASSERT_THAT(sent, SizeIs(1));
  EXPECT_TRUE(absl::StartsWith(sent[0].name, "manager/log/")) << sent[0].name;
  Persist(log, {Del("b"), Put("d", "4")});
  EXPECT_EQ(LogRecords(), 2);
  EXPECT_EQ(log.records(), 2u);
  EXPECT_THAT(Rows_(),
              ElementsAre(Pair("a", "2"), Pair("c", "1"), Pair("d", "4")));
}

TEST_F(RowLogTest, CompactionWritesEachRowOnceAndMovesTheStart) {
  RowLogOptions o;
  o.max_records = 3;
  RowLog log(o);
  for (int i = 0; i < 3; ++i) {
    Persist(log,
            {Put("hot", std::to_string(i)), Put("k" + std::to_string(i), "v")});
  }
  EXPECT_EQ(LogRecords(), 3);
  // The fourth batch does not fit: rows in place, the start moved past the
  // records, none deleted.
  Rows sent = Persist(log, {Put("hot", "last"), Del("k0")});
  int puts = 0, deletes = 0;
  for (const auto& w : sent) {
    if (w.name == "manager/log/start") continue;
    EXPECT_FALSE(absl::StartsWith(w.name, "manager/log/")) << w.name;
    ++(w.blob ? puts : deletes);
  }
  EXPECT_EQ(puts, 3);  // hot, k1, k2: "hot" once with its last value
  EXPECT_EQ(deletes, 1);
  EXPECT_EQ(LogRecords(), 0);
  EXPECT_EQ(LogRows(), 4);  // three slots behind the start, and the start
  EXPECT_EQ(log.records(), 0u);
  EXPECT_THAT(Rows_(), ElementsAre(Pair("hot", "last"), Pair("k1", "v"),
                                   Pair("k2", "v")));
}

TEST_F(RowLogTest, TheNextRecordsReuseTheSlotsAndHideTheOlderOnes) {
  RowLogOptions o;
  o.max_records = 3;
  RowLog log(o);
  for (int i = 0; i < 3; ++i) {
    Persist(log, {Put("k" + std::to_string(i), "old")});
  }
  Persist(log, {}, /*compact=*/true);
  Rows first = Persist(log, {Put("k0", "new")});
  ASSERT_THAT(first, SizeIs(1));
  EXPECT_EQ(first[0].name, "manager/log/0000000000000000");
  // Slots 1 and 2 still hold records of the last generation: ignored.
  EXPECT_EQ(LogRows(), 4);
  EXPECT_EQ(LogRecords(), 1);
  EXPECT_THAT(Rows_(), ElementsAre(Pair("k0", "new"), Pair("k1", "old"),
                                   Pair("k2", "old")));
  // Generations later the log still occupies its slots and the start.
  for (int i = 0; i < 20; ++i) {
    Persist(log, {Put("k1", std::to_string(i))});
  }
  EXPECT_EQ(LogRows(), 4);
  EXPECT_EQ(Rows_().at("k1"), "19");
  EXPECT_EQ(Rows_().at("k0"), "new");
}

TEST_F(RowLogTest, RowOrByteBoundsCompactToo) {
  RowLogOptions o;
  o.max_rows = 4;
  RowLog log(o);
  Persist(log, {Put("a", "1"), Put("b", "1")});
  EXPECT_EQ(LogRecords(), 1);
  Persist(log, {Put("c", "1"), Put("d", "1"), Put("e", "1")});  // 5 rows
  EXPECT_EQ(LogRecords(), 0);
  RowLogOptions small;
  small.max_bytes = 100;
  RowLog bytes_log(small);
  Persist(bytes_log, {Put("x", std::string(200, 'x'))});  // too big to log
  EXPECT_EQ(LogRecords(), 0);
  EXPECT_EQ(Rows_().at("x").size(), 200u);
}

TEST_F(RowLogTest, AFailedRecordIsDroppedByTheNextCompaction) {
  RowLog log;
  Persist(log, {Put("a", "1")});
  Rows writes = log.Prepare({Put("a", "2"), Put("b", "2")});
  ASSERT_THAT(writes, SizeIs(1));
  // The store took the record but its answer was lost (a failure).
  ASSERT_THAT(Write(writes), IsOk());
  log.Done(false);
  // Not knowing, the log compacts: only what succeeded, and every record
  // goes, the failed one too.
  Persist(log, {Put("c", "3")});
  EXPECT_EQ(LogRecords(), 0);
  EXPECT_THAT(Rows_(), ElementsAre(Pair("a", "1"), Pair("c", "3")));
}

TEST_F(RowLogTest, ResetCompactsBeforeTheNextRecord) {
  {
    RowLog log;
    Persist(log, {Put("a", "1")});
    Persist(log, {Put("a", "2")});
  }
  RowLog::Replayed r = RowLog::Replay(Raw());
  EXPECT_EQ(r.applied, 2u);
  EXPECT_EQ(r.last_seq, 2u);
  EXPECT_EQ(r.changed.at("a"), "2");
  RowLog log;
  log.Reset(r);
  EXPECT_FALSE(log.CanAppend());
  // Which slots are live is not known to the log: it compacts first, and
  // only then writes records, from slot 0.
  Rows sent = Persist(log, {Put("b", "1")});
  EXPECT_THAT(sent, SizeIs(3));  // a, b, the start
  EXPECT_EQ(LogRecords(), 0);
  EXPECT_TRUE(log.CanAppend());
  sent = Persist(log, {Put("c", "1")});
  ASSERT_THAT(sent, SizeIs(1));
  EXPECT_EQ(sent[0].name, "manager/log/0000000000000000");
  EXPECT_THAT(Rows_(),
              ElementsAre(Pair("a", "2"), Pair("b", "1"), Pair("c", "1")));
}

TEST_F(RowLogTest, CorruptRecordIsSkippedAndDeletedAtCompaction) {
  RowLog log;
  Persist(log, {Put("a", "1")});
  ASSERT_THAT(Write({Put("manager/log/0000000000000002", "garbage")}), IsOk());
  RowLog::Replayed r = RowLog::Replay(Raw());
  EXPECT_EQ(r.corrupt, 1);
  EXPECT_EQ(r.skipped, 0);
  EXPECT_EQ(r.applied, 1u);
  EXPECT_EQ(Rows_().at("a"), "1");
  log.Reset(r);
  Persist(log, {}, /*compact=*/true);
  EXPECT_EQ(RowLog::Replay(Raw()).corrupt, 0);
  EXPECT_EQ(Rows_().at("a"), "1");
}

// Records of older versions were keyed by their sequence number and had no
// start: they replay, and the next compaction deletes them.
TEST_F(RowLogTest, RecordsOfTheOlderLayoutReplayAndGo) {
  auto legacy = [](const std::string& name, const std::string& value) {
    manager_internal::BlobWriter w;
    w.Str("FQL1");
    w.U64(1);
    w.U64(1);
    w.Str(name);
    w.Str(value);
    return std::move(w.out());
  };
  ASSERT_THAT(Write({Put("manager/log/0000000000000007", legacy("a", "1")),
                     Put("manager/log/0000000000000008", legacy("a", "2")),
                     Put("manager/log/000000000000000a", legacy("b", "3"))}),
              IsOk());
  RowLog::Replayed r = RowLog::Replay(Raw());
  EXPECT_EQ(r.applied, 2u);  // 7 and 8; 10 lies behind a gap
  EXPECT_EQ(r.skipped, 1);
  EXPECT_EQ(r.last_seq, 10u);
  EXPECT_THAT(Rows_(), ElementsAre(Pair("a", "2")));
  RowLog log;
  log.Reset(r);
  Persist(log, {}, /*compact=*/true);
  EXPECT_THAT(Raw(), ElementsAre(Pair("a", "2"), Pair("manager/log/start", _)));
  Persist(log, {Put("c", "4")});
  EXPECT_THAT(Rows_(), ElementsAre(Pair("a", "2"), Pair("c", "4")));
}

// Two records on their way at once; the first fails, the store keeps the
// second: replay stops at the gap, and the log moves its start past what
// lies behind it before it writes anything new.
TEST_F(RowLogTest, ARecordBehindAFailedOneIsSkippedAndRemoved) {
  RowLog log;
  Persist(log, {Put("a", "1")});
  ASSERT_TRUE(log.CanAppend());
  Rows first = log.Prepare({Put("a", "2")});
  Rows second = log.Prepare({Put("b", "2")});
  ASSERT_THAT(first, SizeIs(1));
  ASSERT_THAT(second, SizeIs(1));
  EXPECT_NE(first[0].name, second[0].name);
  ASSERT_THAT(Write(second), IsOk());  // the first never arrives
  log.Done(false);
  log.Done(true);
  EXPECT_FALSE(log.CanAppend());

  RowLog::Replayed r = RowLog::Replay(Raw());
  EXPECT_EQ(r.skipped, 1);
  EXPECT_THAT(Rows_(), ElementsAre(Pair("a", "1")));
  log.Reset(r);
  EXPECT_FALSE(log.CanAppend());
  Persist(log, {Put("c", "3")});  // a compaction: the start passes it
  EXPECT_EQ(LogRecords(), 0);
  EXPECT_THAT(Rows_(), ElementsAre(Pair("a", "1"), Pair("c", "3")));
  EXPECT_TRUE(log.CanAppend());
  // The next record takes slot 0; the skipped one, in its slot, stays
  // hidden.
  Persist(log, {Put("d", "4")});
  EXPECT_THAT(Rows_(),
              ElementsAre(Pair("a", "1"), Pair("c", "3"), Pair("d", "4")));
}

TEST_F(RowLogTest, ZeroRecordsWritesInPlace) {
  RowLogOptions o;
  o.max_records = 0;
  RowLog log(o);
  Rows sent = Persist(log, {Put("a", "1"), Del("b")});
  EXPECT_THAT(sent,
              ElementsAre(::testing::Field(&Store::ObjectWrite::name, "a"),
                          ::testing::Field(&Store::ObjectWrite::name, "b")));
  EXPECT_EQ(LogRecords(), 0);
}

}  // namespace
}  // namespace forq::server
