// Map / MapUnordered, Executor and Pool against a real forqd, and the
// `forq map` command.
#include "forq/map.h"

#include <algorithm>
#include <atomic>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include "common/notification.h"
#include "forq/client.h"
#include "forq/executor.h"
#include "forq/pool.h"
#include "tests/testing/forqd_process.h"
#include "tests/testing/shared_forqd.h"
#include "tests/testing/status_matchers.h"

namespace forq {
namespace {

using ::forq::testing::CommandResult;
using ::forq::testing::ForqBinary;
using ::forq::testing::ForqdProcess;
using ::forq::testing::IsOk;
using ::forq::testing::RunCommand;
using ::forq::testing::SharedForqdTest;
using ::forq::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

class MapTest : public SharedForqdTest<MapTest> {
 protected:
  CommandResult Forq(std::vector<std::string> args,
                     const std::string& stdin_data = "") {
    std::vector<std::string> argv = {ForqBinary(),
                                     "--addr=" + forqd_->grpc_address()};
    argv.insert(argv.end(), args.begin(), args.end());
    absl::StatusOr<CommandResult> r = RunCommand(argv, stdin_data);
    EXPECT_THAT(r, IsOk());
    return r.ok() ? *r : CommandResult();
  }
};

std::vector<std::string> Seq(int n) {
  std::vector<std::string> v;
  for (int i = 1; i <= n; ++i) v.push_back(absl::StrCat(i));
  return v;
}

TEST_F(MapTest, OrderedMapYieldsResultsInInputOrder) {
  // The first input is the slowest: an ordered map must still yield it first.
  std::vector<std::string> inputs = {"300", "10", "20", "10", "5"};
  std::vector<uint64_t> indexes;
  std::vector<std::string> results;
  MapStream stream = client_->Map("sleep", inputs);
  for (const MapItem& r : stream) {
    EXPECT_TRUE(r.ok()) << r.status;
    EXPECT_FALSE(r.task_id.empty());
    EXPECT_EQ(r.state, v1::SUCCEEDED);
    indexes.push_back(r.index);
    results.push_back(r.result);
  }
  EXPECT_THAT(stream.status(), IsOk());
  EXPECT_THAT(indexes, ElementsAre(0, 1, 2, 3, 4));
  EXPECT_EQ(results, inputs);
}

TEST_F(MapTest, UnorderedMapYieldsShortTasksFirst) {
  std::vector<uint64_t> indexes;
  MapStream stream =
      client_->MapUnordered("sleep", {"800", "10", "10", "10", "10"});
  for (const MapItem& r : stream) {
    EXPECT_TRUE(r.ok()) << r.status;
    indexes.push_back(r.index);
  }
  EXPECT_THAT(stream.status(), IsOk());
  ASSERT_EQ(indexes.size(), 5u);
  EXPECT_EQ(indexes.back(), 0u) << absl::StrJoin(indexes, ",");
}

TEST_F(MapTest, FailedItemIsReportedWithItsIndexAndStreamContinues) {
  std::vector<MapInput> inputs = {MapInput("a"), MapInput("fail", "boom"),
                                  MapInput("c")};
  std::vector<MapItem> items;
  MapStream stream = client_->Map("echo", inputs);
  for (const MapItem& r : stream) items.push_back(r);
  EXPECT_THAT(stream.status(), IsOk());
  ASSERT_EQ(items.size(), 3u);
  EXPECT_TRUE(items[0].ok());
  EXPECT_EQ(items[0].result, "a");
  EXPECT_EQ(items[1].index, 1u);
  EXPECT_FALSE(items[1].ok());
  EXPECT_EQ(items[1].state, v1::FAILED);
  EXPECT_THAT(items[1].status.message(), HasSubstr("boom"));
  EXPECT_TRUE(items[2].ok());
  EXPECT_EQ(items[2].result, "c");
}

TEST_F(MapTest, FailFastStopsAfterTheFailedItem) {
  // An endless generator: only fail_fast can end this stream.
  int pulled = 0;
  MapSource source([&pulled]() -> std::optional<MapInput> {
    ++pulled;
    if (pulled == 3) return MapInput("fail", "third");
    return MapInput("1");
  });
  MapOptions o;
  o.fail_fast = true;
  o.window = 2;
  MapStream stream = client_->Map("sleep", std::move(source), o);
  std::vector<MapItem> items;
  for (const MapItem& r : stream) items.push_back(r);
  EXPECT_THAT(stream.status(), StatusIs(absl::StatusCode::kAborted));
  ASSERT_FALSE(items.empty());
  EXPECT_FALSE(items.back().ok());
  EXPECT_EQ(items.back().index, 2u);
  EXPECT_LE(pulled, 6);
}

TEST_F(MapTest, WindowBoundsInputsInFlight) {
  constexpr int kWindow = 2;
  const std::string queue = "map-window";
  std::atomic<int> pulled{0};
  std::atomic<int> delivered{0};
  std::atomic<int> max_ahead{0};
  MapSource source([&]() -> std::optional<MapInput> {
    if (pulled.load() == 8) return std::nullopt;
    int ahead = ++pulled - delivered.load();
    max_ahead.store(std::max(max_ahead.load(), ahead));
    // Longer than the scheduler's deferred_insert_limit (100 ms): a Map task
    // is listed once it is written, which a shorter one is only when done.
    return MapInput("200");
  });
  // Meanwhile, sample the server: tasks of the map not yet finished.
  std::atomic<int> max_live{0};
  std::atomic<int> samples_with_live{0};
  Notification stop;
  std::thread sampler([&] {
    while (!stop.HasBeenNotified()) {
      // One List call, so a task moving from QUEUED to RUNNING between two
      // queries cannot be counted twice.
      int live = 0;
      v1::ListTasksRequest req;
      req.set_queue(queue);
      req.set_page_size(1000);
      absl::StatusOr<v1::ListTasksResponse> r = client_->List(req);
      if (r.ok()) {
        for (const v1::Task& t : r->tasks()) {
          live += t.state() == v1::QUEUED || t.state() == v1::RUNNING;
        }
      }
      if (live > 0) ++samples_with_live;
      max_live.store(std::max(max_live.load(), live));
      stop.WaitForNotificationWithTimeout(absl::Milliseconds(5));
    }
  });
  MapOptions o;
  o.window = kWindow;
  o.queue = queue;
  MapStream stream = client_->MapUnordered("sleep", std::move(source), o);
  for (const MapItem& r : stream) {
    EXPECT_TRUE(r.ok()) << r.status;
    ++delivered;
  }
  stop.Notify();
  sampler.join();
  EXPECT_THAT(stream.status(), IsOk());
  EXPECT_EQ(delivered.load(), 8);
  EXPECT_LE(max_ahead.load(), kWindow);
  EXPECT_EQ(max_ahead.load(), kWindow) << "the window was never filled";
  EXPECT_LE(max_live.load(), kWindow);
  EXPECT_GT(samples_with_live.load(), 0) << "sampler saw no task";
}

// window_bytes bounds the payload bytes in flight besides the count: with
// 2,000-byte inputs and 6,000 bytes, three are sent (the client holds the
// fourth, pulled); an input larger than the bound goes alone.
TEST_F(MapTest, WindowBytesBoundsPayloadInFlight) {
  constexpr int kInputs = 12;
  std::atomic<int> pulled{0};
  std::atomic<int> delivered{0};
  std::atomic<int> max_ahead{0};
  // The last one alone exceeds the bound.
  auto payload = [](int i) {
    return std::string(i == kInputs - 1 ? 9000 : 2000, 'a' + i);
  };
  MapSource source([&]() -> std::optional<MapInput> {
    if (pulled.load() == kInputs) return std::nullopt;
    const int i = pulled++;
    max_ahead.store(std::max(max_ahead.load(), pulled.load() - delivered));
    return MapInput(payload(i));
  });
  MapOptions o;
  o.window = 100;
  o.window_bytes = 6000;
  MapStream stream = client_->Map("echo", std::move(source), o);
  int i = 0;
  for (const MapItem& r : stream) {
    ASSERT_TRUE(r.ok()) << r.status;
    EXPECT_EQ(r.index, static_cast<uint64_t>(i));
    EXPECT_TRUE(r.result == payload(i)) << "item " << i;
    ++i;
    ++delivered;
  }
  EXPECT_THAT(stream.status(), IsOk());
  EXPECT_EQ(delivered.load(), kInputs);
  // Three in flight plus the one held back; not more.
  EXPECT_LE(max_ahead.load(), 4);
  EXPECT_GE(max_ahead.load(), 3) << "the byte window was never filled";

  o.window_bytes = -1;
  MapStream bad = client_->Map("echo", {"x"}, o);
  EXPECT_EQ(bad.Next(), nullptr);
  EXPECT_THAT(bad.status(), StatusIs(absl::StatusCode::kInvalidArgument,
                                     HasSubstr("window_bytes")));
}

TEST_F(MapTest, BreakingOutEarlyStopsPullingInputs) {
  int pulled = 0;
  MapSource endless([&pulled]() -> std::optional<MapInput> {
    return MapInput(absl::StrCat(pulled++));
  });
  MapOptions o;
  o.window = 4;
  {
    MapStream stream = client_->Map("echo", std::move(endless), o);
    int seen = 0;
    for (const MapItem& r : stream) {
      EXPECT_EQ(r.result, absl::StrCat(r.index));
      if (++seen == 10) break;
    }
  }
  EXPECT_LE(pulled, 10 + 4);
}

// With no prefetch, 2 workers and six 1.5 s sleeps: after the first
// result, two run and two wait in forqd's queue. Leaving the stream then
// cancels the two waiting (Pool.terminate()), unless the header keeps them.
void LeaveMapAfterFirstResult(bool keep, int want_cancelled) {
  auto p = ForqdProcess::Start(
      {.workers = 2, .flags = {"--prefetch=0", "--log_level=warn"}});
  ASSERT_THAT(p, IsOk());
  auto c = Client::Connect({.address = (*p)->grpc_address()});
  ASSERT_THAT(c, IsOk());
  const std::string queue = keep ? "map-kept" : "map-left";
  MapOptions o;
  o.queue = queue;
  o.keep_queued_on_cancel = keep;
  {
    MapStream stream =
        (*c)->Map("sleep", {"1500", "1500", "1500", "1500", "1500", "1500"}, o);
    for (const MapItem& r : stream) {
      ASSERT_TRUE(r.ok()) << r.status;
      break;  // leaves the stream with four results not read
    }
  }
  v1::ListTasksRequest req;
  req.set_queue(queue);
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  int succeeded = 0, cancelled = 0;
  while (absl::Now() < deadline) {
    absl::StatusOr<v1::ListTasksResponse> l = (*c)->List(req);
    ASSERT_THAT(l, IsOk());
    succeeded = cancelled = 0;
    for (const v1::Task& t : l->tasks()) {
      if (t.state() == v1::SUCCEEDED) ++succeeded;
      if (t.state() == v1::CANCELLED) {
        ++cancelled;
        EXPECT_THAT(t.error().message(), HasSubstr("Map stream ended"));
      }
    }
    if (succeeded + cancelled == 6) break;
    // Polling forqd's list (its tasks end seconds apart), not timing.
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_EQ(cancelled, want_cancelled);
  EXPECT_EQ(succeeded, 6 - want_cancelled);
}

TEST(MapCancelTest, LeftStreamCancelsInputsNotStarted) {
  LeaveMapAfterFirstResult(/*keep=*/false, /*want_cancelled=*/2);
}

TEST(MapCancelTest, KeepQueuedOnCancelRunsThemAll) {
  LeaveMapAfterFirstResult(/*keep=*/true, /*want_cancelled=*/0);
}

TEST_F(MapTest, InvalidWindowEndsStreamWithInvalidArgument) {
  MapOptions o;
  o.window = kMaxMapWindow + 1;
  MapStream stream = client_->Map("echo", {"a"}, o);
  EXPECT_EQ(stream.Next(), nullptr);
  EXPECT_THAT(stream.status(), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_F(MapTest, EmptyInputYieldsNothing) {
  MapStream stream = client_->Map("echo", std::vector<std::string>{});
  EXPECT_EQ(stream.Next(), nullptr);
  EXPECT_THAT(stream.status(), IsOk());
}

TEST_F(MapTest, ExecutorSubmitMapAndShutdown) {
  Executor ex(*client_);
  absl::StatusOr<TaskFuture> f = ex.Submit("sleep", "200");
  ASSERT_THAT(f, IsOk());
  std::vector<std::string> got;
  for (const MapItem& r : ex.Map("echo", {"x", "y", "z"})) {
    got.push_back(r.result);
  }
  EXPECT_THAT(got, ElementsAre("x", "y", "z"));
  EXPECT_THAT(ex.Shutdown(/*wait=*/true), IsOk());
  // Shutdown(wait) returned, so the task must already be finished.
  absl::StatusOr<v1::Task> t = client_->Get(f->id());
  ASSERT_THAT(t, IsOk());
  EXPECT_EQ(t->state(), v1::SUCCEEDED);
  EXPECT_THAT(ex.Submit("echo", "late"),
              StatusIs(absl::StatusCode::kUnavailable));
  MapStream late = ex.Map("echo", {"a"});
  EXPECT_EQ(late.Next(), nullptr);
  EXPECT_THAT(late.status(), StatusIs(absl::StatusCode::kUnavailable));
}

TEST_F(MapTest, ExecutorShutdownWithCancelFuturesCancelsQueuedTasks) {
  ExecutorOptions eo;
  eo.queue = "exec-cancel";
  Executor ex(*client_, eo);
  std::vector<TaskFuture> futures;
  // More long tasks than workers: some are still QUEUED at shutdown.
  for (int i = 0; i < 6; ++i) {
    absl::StatusOr<TaskFuture> f = ex.Submit("sleep", "2000");
    ASSERT_THAT(f, IsOk());
    futures.push_back(*f);
  }
  EXPECT_THAT(ex.Shutdown(/*wait=*/true, /*cancel_futures=*/true), IsOk());
  int cancelled = 0;
  for (const TaskFuture& f : futures) {
    absl::StatusOr<v1::Task> t = client_->Get(f.id());
    ASSERT_THAT(t, IsOk());
    EXPECT_TRUE(IsTerminal(t->state())) << StateName(t->state());
    if (t->state() == v1::CANCELLED) ++cancelled;
  }
  EXPECT_GE(cancelled, 4);
}

TEST_F(MapTest, PoolApplyAsyncMapAndJoin) {
  Pool pool(*client_);
  absl::StatusOr<TaskFuture> f = pool.ApplyAsync("sleep", "150");
  ASSERT_THAT(f, IsOk());
  absl::StatusOr<std::string> applied = pool.Apply("echo", "hi");
  ASSERT_THAT(applied, IsOk());
  EXPECT_EQ(*applied, "hi");
  absl::StatusOr<std::vector<std::string>> m = pool.Map("echo", Seq(5));
  ASSERT_THAT(m, IsOk());
  EXPECT_EQ(*m, Seq(5));
  std::vector<std::string> unordered;
  for (const MapItem& r : pool.ImapUnordered("echo", {"p", "q"})) {
    unordered.push_back(r.result);
  }
  std::sort(unordered.begin(), unordered.end());
  EXPECT_THAT(unordered, ElementsAre("p", "q"));

  EXPECT_THAT(pool.Join(), StatusIs(absl::StatusCode::kFailedPrecondition));
  pool.Close();
  EXPECT_THAT(pool.ApplyAsync("echo", "late"),
              StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(pool.Join(), IsOk());
  absl::StatusOr<v1::Task> t = client_->Get(f->id());
  ASSERT_THAT(t, IsOk());
  EXPECT_EQ(t->state(), v1::SUCCEEDED);
}

TEST_F(MapTest, PoolMapReturnsTheFirstFailedItemsError) {
  Pool pool(*client_);
  absl::StatusOr<std::vector<std::string>> m =
      pool.Map("echo", {MapInput("ok"), MapInput("fail", "nope")});
  EXPECT_THAT(
      m, StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("item 1")))
      << m.status();
}

TEST_F(MapTest, CliMapPrintsTwentyResultsInInputOrder) {
  std::string in;
  for (int i = 1; i <= 20; ++i) absl::StrAppend(&in, i, "\n");
  CommandResult r = Forq({"map", "sleep"}, in);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  std::vector<std::string> lines =
      absl::StrSplit(r.out, '\n', absl::SkipEmpty());
  EXPECT_EQ(lines, Seq(20));
}

TEST_F(MapTest, CliMapUnorderedPrintsShortTasksFirst) {
  CommandResult r = Forq({"map", "sleep", "--unordered"}, "800\n10\n10\n10\n");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  std::vector<std::string> lines =
      absl::StrSplit(r.out, '\n', absl::SkipEmpty());
  EXPECT_THAT(lines, ElementsAre("10", "10", "10", "800"));
}

TEST_F(MapTest, CliMapFailedItemExitsOneAndNamesTheItem) {
  CommandResult r = Forq({"map", "fail"}, "bad input\n");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("item 0"));
  EXPECT_THAT(r.err, HasSubstr("bad input"));
}

TEST_F(MapTest, CliMapJsonPrintsOneObjectPerInput) {
  CommandResult r = Forq({"map", "echo", "--json", "--window", "1"}, "a\nb\n");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  std::vector<std::string> lines =
      absl::StrSplit(r.out, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_THAT(lines[0], HasSubstr("\"state\":\"SUCCEEDED\""));
  EXPECT_THAT(lines[1], HasSubstr("\"index\":\"1\""));
}

}  // namespace
}  // namespace forq
