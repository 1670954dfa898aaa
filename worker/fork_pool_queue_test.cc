// ForkPool's queues behind a running attempt: prefetch, the depth per task
// kind, a full ring, revocation for an idle worker, cancel and crash of
// what waits.
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include "tests/testing/status_matchers.h"
#include "worker/fork_pool_testing.h"

namespace forq::worker {
namespace {

using fork_pool_testing::ForkPoolTest;
using fork_pool_testing::Options;
using fork_pool_testing::Task;
using ::forq::testing::IsOk;
using ::forq::testing::StatusIs;

TEST_F(ForkPoolTest, DispatchWithoutIdleWorkerIsResourceExhausted) {
  ForkPoolOptions options = Options(1);
  options.prefetch = 0;
  StartPool(options);
  Run("long", "sleep", "60000");
  Assignment a;
  a.task_id = "second";
  a.kind = "echo";
  EXPECT_THAT(pool_->Dispatch(a),
              StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_EQ(pool_->IdleCount(), 0);
  EXPECT_EQ(pool_->Room(), 0);
}

TEST_F(ForkPoolTest, QueuesBehindARunningTaskUpToPrefetch) {
  ForkPoolOptions options = Options(1);
  options.prefetch = 2;
  StartPool(options);
  ASSERT_TRUE(WaitIdle(1));
  EXPECT_EQ(pool_->Room(), 3);
  // Queued this deep only once the pool knows echo is short.
  ASSERT_EQ(RunAndWait("echo", "warm").kind, OutcomeKind::kSucceeded);
  ASSERT_TRUE(WaitIdle(1));
  std::vector<Assignment> batch;
  // The first keeps the worker busy while the test dispatches more (a
  // sleep cannot end early, so no race on how fast the worker is).
  batch.push_back(Task("q0", "sleep", "2000"));
  for (int i = 1; i < 4; ++i) {
    batch.push_back(Task(absl::StrCat("q", i), "echo", absl::StrCat(i)));
  }
  // One runs, two wait in the ring, the fourth is refused and kept.
  EXPECT_EQ(pool_->DispatchMany(batch), 3u);
  EXPECT_EQ(batch[3].task_id, "q3");
  EXPECT_FALSE(batch[0].queued);
  EXPECT_TRUE(batch[1].queued);
  EXPECT_TRUE(batch[2].queued);
  // A task with a short timeout needs an idle worker.
  EXPECT_THAT(pool_->Dispatch(Task("short", "echo", "", absl::Seconds(1))),
              StatusIs(absl::StatusCode::kResourceExhausted));
  for (int i = 0; i < 3; ++i) {
    std::optional<Outcome> o = rec_.NextOutcome();
    ASSERT_TRUE(o.has_value());
    EXPECT_EQ(o->task_id, absl::StrCat("q", i));  // in order
    EXPECT_EQ(o->kind, OutcomeKind::kSucceeded);
    // The outcome names the attempt that started as this one ended.
    EXPECT_EQ(o->next_task_id, i < 2 ? absl::StrCat("q", i + 1) : "");
    EXPECT_EQ(o->next_attempt, i < 2 ? 1 : 0);
    if (i > 0) {
      EXPECT_EQ(o->result, absl::StrCat(i));
    }
  }
}

// A worker's queue holds about 2 ms of work: a kind whose attempts run
// 20 ms or more waits for an idle worker, one of microseconds queues up to
// the prefetch, and one the pool has not timed yet queues one deep. So a
// task submitted later never waits behind a row of long ones.
TEST_F(ForkPoolTest, QueueDepthFollowsTheKindsRunTime) {
  ForkPoolOptions options = Options(1);
  options.prefetch = 8;
  StartPool(options);
  ASSERT_EQ(RunAndWait("sleep", "30").kind, OutcomeKind::kSucceeded);
  ASSERT_EQ(RunAndWait("echo", "warm").kind, OutcomeKind::kSucceeded);
  ASSERT_TRUE(WaitIdle(1));
  ASSERT_THAT(pool_->Dispatch(Task("running", "sleep", "300")), IsOk());
  EXPECT_EQ(pool_->RoomFor("sleep"), 0);
  EXPECT_EQ(pool_->RoomFor("sha256"), 1);
  EXPECT_EQ(pool_->RoomFor("echo"), 8);
  EXPECT_THAT(pool_->Dispatch(Task("long", "sleep", "30")),
              StatusIs(absl::StatusCode::kResourceExhausted));
  ASSERT_THAT(pool_->Dispatch(Task("untimed", "sha256", "x")), IsOk());
  EXPECT_THAT(pool_->Dispatch(Task("untimed2", "sha256", "y")),
              StatusIs(absl::StatusCode::kResourceExhausted));
  for (int i = 0; i < 7; ++i) {  // with "untimed", the prefetch of 8
    ASSERT_THAT(pool_->Dispatch(Task(absl::StrCat("e", i), "echo", "x")),
                IsOk());
  }
  EXPECT_THAT(pool_->Dispatch(Task("e7", "echo", "x")),
              StatusIs(absl::StatusCode::kResourceExhausted));
  for (int i = 0; i < 9; ++i) {
    std::optional<Outcome> o = rec_.NextOutcome();
    ASSERT_TRUE(o.has_value());
    EXPECT_EQ(o->kind, OutcomeKind::kSucceeded) << o->task_id;
  }
}

// Assignments queued behind a running one can fill the ring: the rest is
// refused for now (kept by the caller), and the worker is not treated as
// broken.
TEST_F(ForkPoolTest, RingFilledByQueuedAssignmentsMeansNoRoomForNow) {
  ForkPoolOptions options = Options(1);
  options.prefetch = 64;
  options.ring_bytes = 64 << 10;  // frames over 16 KiB are spilled
  StartPool(options);
  ASSERT_EQ(RunAndWait("echo", "warm").kind, OutcomeKind::kSucceeded);
  ASSERT_TRUE(WaitIdle(1));
  std::vector<Assignment> batch;
  batch.push_back(Task("head", "sleep", "300"));
  for (int i = 0; i < 12; ++i) {
    batch.push_back(
        Task(absl::StrCat("p", i), "echo", std::string(12 << 10, 'a' + i)));
  }
  const size_t sent = pool_->DispatchMany(batch);
  EXPECT_GT(sent, 2u);
  EXPECT_LT(sent, batch.size());
  for (size_t i = 0; i < sent; ++i) {
    std::optional<Outcome> o = rec_.NextOutcome();
    ASSERT_TRUE(o.has_value());
    EXPECT_EQ(o->kind, OutcomeKind::kSucceeded) << o->task_id << o->status;
    if (i > 0) {
      EXPECT_EQ(o->result.size(), size_t{12 << 10});
    }
  }
  EXPECT_EQ(rec_.exit_count(), 0u);
  // The refused ones go once there is room, as many as the ring holds.
  batch.erase(batch.begin(), batch.begin() + sent);
  while (!batch.empty()) {
    ASSERT_TRUE(WaitIdle(1));
    const size_t more = pool_->DispatchMany(batch);
    ASSERT_GT(more, 0u);
    for (size_t i = 0; i < more; ++i) {
      std::optional<Outcome> o = rec_.NextOutcome();
      ASSERT_TRUE(o.has_value());
      EXPECT_EQ(o->kind, OutcomeKind::kSucceeded) << o->task_id << o->status;
    }
    batch.erase(batch.begin(), batch.begin() + more);
  }
  EXPECT_EQ(rec_.exit_count(), 0u);
}

TEST_F(ForkPoolTest, IdleWorkerTakesOverWhatWaitsBehindALongTask) {
  ForkPoolOptions options = Options(2);
  options.prefetch = 4;
  StartPool(options);
  ASSERT_TRUE(WaitIdle(2));
  // Both workers busy, then one assignment queued behind each.
  ASSERT_THAT(pool_->Dispatch(Task("long", "sleep", "20000")), IsOk());
  ASSERT_THAT(pool_->Dispatch(Task("short", "sleep", "200")), IsOk());
  ASSERT_THAT(pool_->Dispatch(Task("behind-long", "echo", "a")), IsOk());
  ASSERT_THAT(pool_->Dispatch(Task("behind-short", "echo", "b")), IsOk());
  // "short" and what follows it finish; that worker is then idle while
  // "behind-long" waits behind a 20 s task: it must be given back unrun.
  std::map<std::string, OutcomeKind> seen;
  while (seen.size() < 3) {
    std::optional<Outcome> o = rec_.NextOutcome();
    ASSERT_TRUE(o.has_value()) << "nothing given back";
    ASSERT_NE(o->task_id, "long") << "waited for the long task";
    seen[o->task_id] = o->kind;
  }
  EXPECT_EQ(seen["short"], OutcomeKind::kSucceeded);
  EXPECT_EQ(seen["behind-short"], OutcomeKind::kSucceeded);
  EXPECT_EQ(seen["behind-long"], OutcomeKind::kRevoked);
  EXPECT_EQ(PidRunning("behind-long"), 0);
}

TEST_F(ForkPoolTest, CancelOfAQueuedAssignmentNeverRunsIt) {
  ForkPoolOptions options = Options(1);
  options.prefetch = 2;
  StartPool(options);
  ASSERT_TRUE(WaitIdle(1));
  ASSERT_THAT(pool_->Dispatch(Task("first", "sleep", "300")), IsOk());
  ASSERT_THAT(pool_->Dispatch(Task("queued", "crash", "")), IsOk());
  pool_->Cancel("queued", 1);
  std::map<std::string, OutcomeKind> seen;
  while (seen.size() < 2) {
    std::optional<Outcome> o = rec_.NextOutcome();
    ASSERT_TRUE(o.has_value());
    seen[o->task_id] = o->kind;
  }
  EXPECT_EQ(seen["queued"], OutcomeKind::kCancelled);
  // "first" ran, or (if the worker had not taken it yet) came back unrun.
  EXPECT_THAT(seen["first"],
              ::testing::AnyOf(OutcomeKind::kSucceeded, OutcomeKind::kRevoked));
  // Had "queued" (crash) run, its worker would have died.
  EXPECT_EQ(rec_.exit_count(), 0u);
}

TEST_F(ForkPoolTest, CrashGivesBackWhatWaitedBehindIt) {
  ForkPoolOptions options = Options(1);
  options.prefetch = 2;
  StartPool(options);
  ASSERT_EQ(RunAndWait("echo", "warm").kind, OutcomeKind::kSucceeded);
  ASSERT_TRUE(WaitIdle(1));
  std::vector<Assignment> batch;
  batch.push_back(Task("boom", "crash", ""));
  batch.push_back(Task("next1", "echo", "1"));
  batch.push_back(Task("next2", "echo", "2"));
  ASSERT_EQ(pool_->DispatchMany(batch), 3u);
  std::map<std::string, OutcomeKind> seen;
  while (seen.size() < 3) {
    std::optional<Outcome> o = rec_.NextOutcome();
    ASSERT_TRUE(o.has_value());
    seen[o->task_id] = o->kind;
  }
  EXPECT_EQ(seen["boom"], OutcomeKind::kSignaled);
  EXPECT_EQ(seen["next1"], OutcomeKind::kRevoked);
  EXPECT_EQ(seen["next2"], OutcomeKind::kRevoked);
}

}  // namespace
}  // namespace forq::worker
