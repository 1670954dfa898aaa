// Tasks submitted without a durable acknowledgement: Ack::kDeferred and
// SubmitForResults (Map inputs).
#include <algorithm>
#include <atomic>
#include <string>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include "common/mutex.h"
#include "common/notification.h"
#include "server/scheduler/scheduler.h"
#include "server/scheduler/scheduler_testing.h"
#include "tests/testing/status_matchers.h"

namespace forq::server {
namespace {

using ::forq::testing::IsOk;
using ::forq::testing::StatusIs;

// Submits one echo with Ack::kDeferred; `done` runs before returning.
std::string SubmitDeferred(Scheduler& scheduler, absl::Duration delay) {
  v1::TaskSpec spec;
  spec.set_kind("echo");
  spec.set_payload("deferred");
  if (delay > absl::ZeroDuration()) {
    spec.mutable_delay()->set_seconds(absl::ToInt64Seconds(delay));
  }
  std::string id;
  scheduler.Submit(
      {spec},
      [&](absl::StatusOr<std::vector<InsertResult>> r) {
        ASSERT_TRUE(r.ok()) << r.status();
        id = (*r)[0].task.id();
      },
      Scheduler::Ack::kDeferred);
  EXPECT_FALSE(id.empty());
  return id;
}

// A deferred task that finishes costs one row: its terminal record,
// inserted; nothing was written before.
TEST(SchedulerTest, DeferredTaskIsWrittenOnceFinished) {
  SchedulerOptions options;
  options.deferred_insert_limit = absl::Hours(1);
  EchoScheduler s(options);
  FailingFinishStore& store = s.store;
  Scheduler& scheduler = s.scheduler;
  const std::string id = SubmitDeferred(scheduler, absl::ZeroDuration());
  EXPECT_EQ(AwaitTask(scheduler, id).state(), v1::SUCCEEDED);
  absl::StatusOr<v1::Task> stored = store.Get(id);
  ASSERT_THAT(stored, IsOk());
  EXPECT_EQ(stored->state(), v1::SUCCEEDED);
  EXPECT_EQ(stored->result(), "deferred");
  EXPECT_EQ(stored->attempt(), 1);
  EXPECT_EQ(store.inserted_rows.load(), 1);
  EXPECT_EQ(store.updated_rows.load(), 0);
  scheduler.Shutdown(absl::Seconds(1));
}

// One still unfinished after deferred_insert_limit is inserted as it
// stands, so it is listed and survives a crash like any task.
TEST(SchedulerTest, DeferredTaskStillQueuedIsInsertedAfterTheLimit) {
  SchedulerOptions options;
  options.deferred_insert_limit = absl::Milliseconds(20);
  EchoScheduler s(options);
  FailingFinishStore& store = s.store;
  Scheduler& scheduler = s.scheduler;
  const std::string id = SubmitDeferred(scheduler, absl::Hours(1));
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  absl::StatusOr<v1::Task> stored = store.Get(id);
  while (!stored.ok() && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(5));  // polling the store, not timing
    stored = store.Get(id);
  }
  ASSERT_THAT(stored, IsOk());
  EXPECT_EQ(stored->state(), v1::QUEUED);
  EXPECT_EQ(store.inserted_rows.load(), 1);
  absl::StatusOr<ListPage> page = scheduler.List(ListQuery());
  ASSERT_THAT(page, IsOk());
  ASSERT_EQ(page->tasks.size(), 1u);
  EXPECT_EQ(page->tasks[0].id(), id);
  scheduler.Shutdown(absl::Seconds(1));
}

// Stopping forqd stores what was accepted and never written, so it runs
// after the restart.
TEST(SchedulerTest, ShutdownInsertsUnwrittenDeferredTasks) {
  SchedulerOptions options;
  options.deferred_insert_limit = absl::Hours(1);
  EchoScheduler s(options);
  FailingFinishStore& store = s.store;
  Scheduler& scheduler = s.scheduler;
  const std::string id = SubmitDeferred(scheduler, absl::Hours(1));
  EXPECT_FALSE(store.Get(id).ok());
  scheduler.Shutdown(absl::Seconds(1));
  absl::StatusOr<v1::Task> stored = store.Get(id);
  ASSERT_THAT(stored, IsOk());
  EXPECT_EQ(stored->state(), v1::QUEUED);
  EXPECT_EQ(stored->attempt(), 0);
}

// Collects what SubmitForResults hands out.
class CollectingSink : public Scheduler::ResultSink {
 public:
  explicit CollectingSink(size_t expect) : expect_(expect) {}
  void OnResults(std::vector<Result> results) override {
    MutexLock lock(&mu_);
    for (Result& r : results) results_.push_back(std::move(r));
    if (results_.size() >= expect_ && !all_.HasBeenNotified()) all_.Notify();
  }
  // The results, once `expect` came (empty after 30 s).
  std::vector<Result> Await() {
    if (!all_.WaitForNotificationWithTimeout(absl::Seconds(30))) return {};
    MutexLock lock(&mu_);
    return results_;
  }

 private:
  const size_t expect_;
  Notification all_;
  Mutex mu_;
  std::vector<Result> results_ ABSL_GUARDED_BY(mu_);
};

v1::TaskSpec Spec(absl::string_view kind, absl::string_view payload,
                  absl::Duration delay = absl::ZeroDuration()) {
  v1::TaskSpec spec;
  spec.set_kind(std::string(kind));
  spec.set_payload(std::string(payload));
  if (delay > absl::ZeroDuration()) {
    spec.mutable_delay()->set_seconds(absl::ToInt64Seconds(delay));
  }
  return spec;
}

// SubmitForResults's ids or errors, answered before it returns (single
// node).
std::vector<absl::StatusOr<std::string>> SubmitForResults(
    Scheduler& scheduler, std::vector<v1::TaskSpec> specs,
    std::shared_ptr<Scheduler::ResultSink> sink, uint64_t first_tag) {
  std::vector<absl::StatusOr<std::string>> ids;
  bool answered = false;
  scheduler.SubmitForResults(std::move(specs), std::move(sink), first_tag,
                             [&](std::vector<absl::StatusOr<std::string>> r) {
                               ids = std::move(r);
                               answered = true;
                             });
  EXPECT_TRUE(answered);
  return ids;
}

// Each accepted task's durable result goes to the sink with its tag, the
// task written once (finished) and no Wait registered for it; a bad spec
// fails alone.
TEST(SchedulerTest, SubmitForResultsHandsEachDurableResultToTheSink) {
  SchedulerOptions options;
  options.deferred_insert_limit = absl::Hours(1);
  EchoScheduler s(options);
  auto sink = std::make_shared<CollectingSink>(2);
  std::vector<absl::StatusOr<std::string>> ids = SubmitForResults(
      s.scheduler,
      {Spec("echo", "a"), Spec("bad kind!", "b"), Spec("echo", "c")}, sink, 10);
  ASSERT_EQ(ids.size(), 3u);
  ASSERT_THAT(ids[0], IsOk());
  EXPECT_THAT(ids[1].status(), StatusIs(absl::StatusCode::kInvalidArgument));
  ASSERT_THAT(ids[2], IsOk());
  EXPECT_EQ(s.scheduler.pending_waits(), 0u);

  std::vector<Scheduler::ResultSink::Result> results = sink->Await();
  ASSERT_EQ(results.size(), 2u);
  std::sort(results.begin(), results.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  EXPECT_EQ(results[0].first, 10u);
  EXPECT_EQ(results[1].first, 12u);
  for (size_t i = 0; i < 2; ++i) {
    ASSERT_THAT(results[i].second, IsOk());
    const v1::Task& t = *results[i].second;
    EXPECT_EQ(t.id(), *ids[i * 2]);
    EXPECT_EQ(t.state(), v1::SUCCEEDED);
    EXPECT_EQ(t.result(), i == 0 ? "a" : "c");
    absl::StatusOr<v1::Task> stored = s.store.Get(t.id());
    ASSERT_THAT(stored, IsOk());
    EXPECT_EQ(stored->state(), v1::SUCCEEDED);
  }
  EXPECT_EQ(s.store.inserted_rows.load(), 2);
  EXPECT_EQ(s.store.updated_rows.load(), 0);
  s.scheduler.Shutdown(absl::Seconds(1));
}

TEST(SchedulerTest, SubmitForResultsRefusesEveryInputOfAFullQueue) {
  SchedulerOptions options;
  options.max_queued = 1;
  EchoScheduler s(options);
  auto sink = std::make_shared<CollectingSink>(1);
  std::vector<absl::StatusOr<std::string>> ids = SubmitForResults(
      s.scheduler,
      {Spec("echo", "a", absl::Hours(1)), Spec("echo", "b", absl::Hours(1))},
      sink, 0);
  ASSERT_EQ(ids.size(), 2u);
  for (const auto& id : ids) {
    EXPECT_THAT(id.status(), StatusIs(absl::StatusCode::kResourceExhausted));
  }
  s.scheduler.Shutdown(absl::Seconds(1));
}

// A task whose late insert fails is dropped: its sink hears it.
TEST(SchedulerTest, SinkLearnsOfATaskDroppedWhenItsInsertFails) {
  SchedulerOptions options;
  options.deferred_insert_limit = absl::Milliseconds(20);
  EchoScheduler s(options);
  s.store.refuse_inserts = true;
  auto sink = std::make_shared<CollectingSink>(1);
  std::vector<absl::StatusOr<std::string>> ids = SubmitForResults(
      s.scheduler, {Spec("echo", "a", absl::Hours(1))}, sink, 7);
  ASSERT_EQ(ids.size(), 1u);
  ASSERT_THAT(ids[0], IsOk());
  std::vector<Scheduler::ResultSink::Result> results = sink->Await();
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].first, 7u);
  EXPECT_THAT(results[0].second.status(),
              StatusIs(absl::StatusCode::kUnavailable,
                       ::testing::HasSubstr("refused its insert")));
  s.scheduler.Shutdown(absl::Seconds(1));
}

// Stopping forqd ends the results still owed (the tasks are stored for the
// next start, as any accepted task).
TEST(SchedulerTest, ShutdownTellsTheSinkNoResultWillCome) {
  SchedulerOptions options;
  options.deferred_insert_limit = absl::Hours(1);
  EchoScheduler s(options);
  auto sink = std::make_shared<CollectingSink>(1);
  std::vector<absl::StatusOr<std::string>> ids = SubmitForResults(
      s.scheduler, {Spec("echo", "a", absl::Hours(1))}, sink, 3);
  ASSERT_THAT(ids.at(0), IsOk());
  s.scheduler.Shutdown(absl::Seconds(1));
  std::vector<Scheduler::ResultSink::Result> results = sink->Await();
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].first, 3u);
  EXPECT_THAT(results[0].second.status(),
              StatusIs(absl::StatusCode::kUnavailable));
  absl::StatusOr<v1::Task> stored = s.store.Get(*ids[0]);
  ASSERT_THAT(stored, IsOk());
  EXPECT_EQ(stored->state(), v1::QUEUED);
}

}  // namespace
}  // namespace forq::server
