// RowLog against the real MemoryStore: a batch becomes one record, Replay
// gives back the rows as if written in place, compaction writes each
// changed row once and removes the records, failures leave no trace.
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
#include "server/store/memory_store.h"
#include "tests/testing/status_matchers.h"

namespace forq::server {
namespace {

using ::forq::testing::IsOk;
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
  int LogRecords() {
    auto raw = Raw();
    return static_cast<int>(
        std::count_if(raw.begin(), raw.end(), [](const auto& kv) {
          return absl::StartsWith(kv.first, "manager/log/");
        }));
  }

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

TEST_F(RowLogTest, CompactionWritesEachRowOnceAndDropsTheRecords) {
  RowLogOptions o;
  o.max_records = 3;
  RowLog log(o);
  for (int i = 0; i < 3; ++i) {
    Persist(log,
            {Put("hot", std::to_string(i)), Put("k" + std::to_string(i), "v")});
  }
  EXPECT_EQ(LogRecords(), 3);
  // The fourth batch does not fit: rows in place, records deleted.
  Rows sent = Persist(log, {Put("hot", "last"), Del("k0")});
  int puts = 0, record_deletes = 0;
  for (const auto& w : sent) {
    if (absl::StartsWith(w.name, "manager/log/")) {
      EXPECT_FALSE(w.blob.has_value());
      ++record_deletes;
    } else if (w.blob) {
      ++puts;
    }
  }
  EXPECT_EQ(record_deletes, 3);
  EXPECT_EQ(puts, 3);  // hot, k1, k2: "hot" once with its last value
  EXPECT_EQ(LogRecords(), 0);
  EXPECT_EQ(log.records(), 0u);
  EXPECT_THAT(Rows_(), ElementsAre(Pair("hot", "last"), Pair("k1", "v"),
                                   Pair("k2", "v")));
  // Raw rows are plain rows now.
  EXPECT_THAT(Raw(), SizeIs(3));
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

TEST_F(RowLogTest, ResetContinuesAfterTheStoredRecords) {
  {
    RowLog log;
    Persist(log, {Put("a", "1")});
    Persist(log, {Put("a", "2")});
  }
  RowLog::Replayed r = RowLog::Replay(Raw());
  EXPECT_THAT(r.records, SizeIs(2));
  EXPECT_EQ(r.changed.at("a"), "2");
  RowLog log;
  log.Reset(r);
  // A new record must not overwrite an old one.
  Persist(log, {Put("b", "1")});
  EXPECT_EQ(LogRecords(), 3);
  EXPECT_THAT(Rows_(), ElementsAre(Pair("a", "2"), Pair("b", "1")));
  // Compacting at start (as Recover does) empties the log.
  Persist(log, {}, /*compact=*/true);
  EXPECT_EQ(LogRecords(), 0);
  EXPECT_THAT(Rows_(), ElementsAre(Pair("a", "2"), Pair("b", "1")));
}

TEST_F(RowLogTest, CorruptRecordIsSkipped) {
  RowLog log;
  Persist(log, {Put("a", "1")});
  ASSERT_THAT(Write({Put("manager/log/0000000000000002", "garbage")}), IsOk());
  RowLog::Replayed r = RowLog::Replay(Raw());
  EXPECT_EQ(r.corrupt, 1);
  EXPECT_EQ(r.skipped, 0);
  EXPECT_THAT(r.records, SizeIs(2));
  EXPECT_EQ(Rows_().at("a"), "1");
}

// Two records on their way at once; the first fails, the store keeps the
// second: replay stops at the gap, and the log deletes what lies behind it
// before it writes anything new.
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
  Persist(log, {Put("c", "3")});  // a compaction: the skipped record goes
  EXPECT_EQ(LogRecords(), 0);
  EXPECT_THAT(Rows_(), ElementsAre(Pair("a", "1"), Pair("c", "3")));
  EXPECT_TRUE(log.CanAppend());
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
