#include "worker/assignment_queue.h"

#include "gtest/gtest.h"

namespace forq::worker {
namespace {

const absl::Time kT0 = absl::FromUnixSeconds(1000);
constexpr absl::Duration kGrace = absl::Seconds(5);

AssignmentQueue::Pending P(uint64_t seq,
                           absl::Duration timeout = absl::InfiniteDuration()) {
  AssignmentQueue::Pending p;
  p.task_id = "t" + std::to_string(seq);
  p.attempt = 1;
  p.task_seq = seq;
  p.timeout = timeout;
  return p;
}

TEST(AssignmentQueueTest, HeadStartsWhenItBecomesHeadAndTimesFromThere) {
  AssignmentQueue q(kGrace);
  EXPECT_EQ(q.deadline(), absl::InfiniteFuture());
  q.Push(P(1, absl::Seconds(30)), kT0);
  q.Push(P(2, absl::Seconds(60)), kT0 + absl::Seconds(1));
  EXPECT_EQ(q.head().task_seq, 1u);
  EXPECT_EQ(q.head_since(), kT0);
  EXPECT_EQ(q.deadline(), kT0 + absl::Seconds(30));
  // The second one's timeout runs from when it starts, not from dispatch.
  EXPECT_EQ(q.PopHead(kT0 + absl::Seconds(10)).task_seq, 1u);
  EXPECT_EQ(q.head_since(), kT0 + absl::Seconds(10));
  EXPECT_EQ(q.deadline(), kT0 + absl::Seconds(70));
  q.PopHead(kT0 + absl::Seconds(11));
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(q.deadline(), absl::InfiniteFuture());
}

TEST(AssignmentQueueTest, CancelOfHeadGetsAGraceDeadlineQueuedOneNot) {
  AssignmentQueue q(kGrace);
  q.Push(P(1), kT0);
  q.Push(P(2), kT0);
  bool queued = true;
  EXPECT_EQ(q.RequestCancel("t1", 1, kT0, &queued), 1u);
  EXPECT_FALSE(queued);
  EXPECT_EQ(q.cancel_deadline(), kT0 + kGrace);
  EXPECT_EQ(q.RequestCancel("t2", 1, kT0, &queued), 2u);
  EXPECT_TRUE(queued);
  EXPECT_FALSE(q.RequestCancel("t2", 1, kT0, &queued).has_value());
  EXPECT_FALSE(q.RequestCancel("t2", 2, kT0, &queued).has_value());
  EXPECT_FALSE(q.RequestCancel("nope", 1, kT0, &queued).has_value());
}

TEST(AssignmentQueueTest, RevokeTakesWhatTheWorkerNeverStarted) {
  AssignmentQueue q(kGrace);
  for (uint64_t s = 5; s <= 8; ++s) q.Push(P(s), kT0);
  EXPECT_EQ(q.BeginRevoke(), 8u);
  // The worker answered 5 (not drained yet) and took 6.
  std::vector<AssignmentQueue::Pending> revoked =
      q.FinishRevoke(/*started=*/6, kT0 + absl::Seconds(1));
  ASSERT_EQ(revoked.size(), 2u);
  EXPECT_EQ(revoked[0].task_seq, 7u);
  EXPECT_EQ(revoked[1].task_seq, 8u);
  ASSERT_EQ(q.size(), 2u);
  EXPECT_EQ(q.head().task_seq, 5u);
  EXPECT_EQ(q.head_since(), kT0);  // the head did not change
  // Its skipped answers for 7 and 8 are stale; one for 9 was never asked.
  AssignmentQueue::Pending out;
  EXPECT_EQ(q.OnSkipped(7, kT0, &out), AssignmentQueue::Skip::kStale);
  EXPECT_EQ(q.OnSkipped(9, kT0, &out), AssignmentQueue::Skip::kInvalid);
}

TEST(AssignmentQueueTest, RevokeBeforeAnyStartTakesAllAndSkipOfTakenHead) {
  AssignmentQueue q(kGrace);
  q.Push(P(3), kT0);
  q.Push(P(4), kT0);
  q.BeginRevoke();
  EXPECT_EQ(q.FinishRevoke(/*started=*/2, kT0).size(), 2u);
  EXPECT_TRUE(q.empty());

  // The worker took 5 while forqd revoked: 5 stays until the worker says
  // whether it ran it (kResult) or skipped it.
  q.Push(P(5), kT0);
  q.Push(P(6), kT0);
  q.BeginRevoke();
  EXPECT_EQ(q.FinishRevoke(/*started=*/5, kT0).size(), 1u);
  AssignmentQueue::Pending out;
  EXPECT_EQ(q.OnSkipped(5, kT0 + absl::Seconds(2), &out),
            AssignmentQueue::Skip::kHead);
  EXPECT_EQ(out.task_seq, 5u);
  EXPECT_TRUE(q.empty());
}

TEST(AssignmentQueueTest, ExitEndsWhatTheWorkerTookAndReturnsTheRest) {
  AssignmentQueue q(kGrace);
  for (uint64_t s = 1; s <= 4; ++s) q.Push(P(s), kT0);
  std::vector<AssignmentQueue::Pending> ended, unstarted;
  q.TakeOnExit(/*started=*/2, &ended, &unstarted);
  ASSERT_EQ(ended.size(), 2u);
  EXPECT_EQ(ended[1].task_seq, 2u);
  ASSERT_EQ(unstarted.size(), 2u);
  EXPECT_EQ(unstarted[0].task_seq, 3u);
  EXPECT_TRUE(q.empty());

  // A worker that died before storing started_seq still ends its head.
  q.Push(P(7), kT0);
  q.Push(P(8), kT0);
  ended.clear();
  unstarted.clear();
  q.TakeOnExit(/*started=*/0, &ended, &unstarted);
  ASSERT_EQ(ended.size(), 1u);
  EXPECT_EQ(ended[0].task_seq, 7u);
  EXPECT_EQ(unstarted.size(), 1u);
}

TEST(AssignmentQueueTest, GivesBackOnlyBehindALongHead) {
  AssignmentQueue q(kGrace);
  q.Push(P(1), kT0);
  EXPECT_FALSE(q.ShouldGiveBack(kT0 + absl::Hours(1), absl::Milliseconds(2)));
  q.Push(P(2), kT0);
  EXPECT_FALSE(
      q.ShouldGiveBack(kT0 + absl::Milliseconds(1), absl::Milliseconds(2)));
  EXPECT_TRUE(
      q.ShouldGiveBack(kT0 + absl::Milliseconds(2), absl::Milliseconds(2)));
}

}  // namespace
}  // namespace forq::worker
