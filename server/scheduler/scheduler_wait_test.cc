// A Submit answer that waits for the result of a task that finished
// meanwhile (Scheduler::WaitIfFinishing, --durability=none).
#include <string>

#include "gtest/gtest.h"

#include "common/notification.h"
#include "server/scheduler/scheduler.h"
#include "server/scheduler/scheduler_testing.h"

namespace forq::server {
namespace {

// Lets the held terminal writes through and waits until `id`'s is durable,
// so no store callback reaches the scheduler after the test ends.
void ReleaseAndAwait(ManualScheduler& m, const std::string& id) {
  m.store.hold_finishes = false;
  m.store.ReleaseFinishes();
  Notification durable;
  m.scheduler.Wait(
      id, absl::Minutes(1),
      [&](const absl::StatusOr<v1::Task>&, bool) { durable.Notify(); });
  durable.WaitForNotification();
}

// Submits an echo task, hands it to a worker and reports it SUCCEEDED (its
// terminal write then goes as the store is set up to take it); its id.
std::string RunEchoToItsEnd(ManualScheduler& m) {
  std::string id = SubmitEcho(m.scheduler, "a");
  m.pool.AddRoom(1);
  EXPECT_EQ(m.pool.assigned().size(), 1u);
  m.pool.Finish(m.pool.assigned().at(0), worker::OutcomeKind::kSucceeded,
                absl::OkStatus(), "a");
  return id;
}

// A Submit answer can carry the result of a task that finished before the
// answer left: WaitIfFinishing holds it only while the terminal write is in
// flight, and answers with the durable terminal task.
TEST(SchedulerTest, WaitIfFinishingAnswersOnceTheTerminalWriteIsDurable) {
  ManualScheduler m;
  const std::string id = SubmitEcho(m.scheduler, "a");
  Scheduler::WaitDone unused = [](const absl::StatusOr<v1::Task>&, bool) {
    ADD_FAILURE() << "a task not finishing registers no wait";
  };
  EXPECT_FALSE(m.scheduler.WaitIfFinishing(id, unused));  // queued
  m.pool.AddRoom(1);
  ASSERT_EQ(m.pool.assigned().size(), 1u);
  EXPECT_FALSE(m.scheduler.WaitIfFinishing(id, unused));  // running

  m.store.hold_finishes = true;
  m.pool.Finish(m.pool.assigned()[0], worker::OutcomeKind::kSucceeded,
                absl::OkStatus(), "a");
  Notification answered;
  v1::Task answer;
  bool answer_terminal = false;
  Scheduler::WaitDone done = [&](absl::StatusOr<v1::Task> t, bool terminal) {
    ASSERT_TRUE(t.ok()) << t.status();
    answer = *std::move(t);
    answer_terminal = terminal;
    answered.Notify();
  };
  ASSERT_TRUE(m.scheduler.WaitIfFinishing(id, done));
  EXPECT_FALSE(answered.HasBeenNotified());  // the write is held
  m.store.hold_finishes = false;
  m.store.ReleaseFinishes();
  answered.WaitForNotification();
  EXPECT_TRUE(answer_terminal);
  EXPECT_EQ(answer.state(), v1::SUCCEEDED);
  EXPECT_EQ(answer.result(), "a");
  // Durable and done: nothing is finishing any more.
  EXPECT_FALSE(m.scheduler.WaitIfFinishing(id, unused));
  m.scheduler.Shutdown(absl::ZeroDuration());
}

// A terminal write that takes long (here held) does not hold the answer
// beyond a second: it then goes out with the task as it stands.
TEST(SchedulerTest, WaitIfFinishingGivesUpAfterASecond) {
  ManualScheduler m;
  m.store.hold_finishes = true;
  const std::string id = RunEchoToItsEnd(m);
  Notification answered;
  bool answer_terminal = true;
  v1::Task answer;
  Scheduler::WaitDone done = [&](absl::StatusOr<v1::Task> t, bool terminal) {
    ASSERT_TRUE(t.ok()) << t.status();
    answer = *std::move(t);
    answer_terminal = terminal;
    answered.Notify();
  };
  ASSERT_TRUE(m.scheduler.WaitIfFinishing(id, done));
  m.clock.Advance(absl::Milliseconds(999));
  m.scheduler.Poke();
  EXPECT_FALSE(answered.HasBeenNotified());
  m.clock.Advance(absl::Milliseconds(1));
  m.scheduler.Poke();
  answered.WaitForNotification();
  EXPECT_FALSE(answer_terminal);
  EXPECT_EQ(answer.id(), id);
  EXPECT_FALSE(IsTerminal(answer.state()));  // not durable yet
  ReleaseAndAwait(m, id);
  m.scheduler.Shutdown(absl::ZeroDuration());
}

// While the store refuses the terminal write, the answer does not wait.
TEST(SchedulerTest, WaitIfFinishingDoesNotWaitOnAFailingStore) {
  ManualScheduler m;
  m.store.fail_finishes = 1;
  const std::string id = RunEchoToItsEnd(m);
  m.store.failed.WaitForNotification();
  Scheduler::WaitDone unused = [](const absl::StatusOr<v1::Task>&, bool) {
    ADD_FAILURE() << "no wait registered";
  };
  // The store refused at once, inside Finish: the task is finishing with
  // a failed write, and the answer must not wait for the disk.
  EXPECT_FALSE(m.scheduler.WaitIfFinishing(id, unused));
  m.scheduler.Shutdown(absl::ZeroDuration());
}

// Switched off (forqd with fsync), a finishing task registers nothing.
TEST(SchedulerTest, WaitIfFinishingCanBeSwitchedOff) {
  SchedulerOptions options;
  options.answer_finished_submits = false;
  ManualScheduler m(options);
  m.store.hold_finishes = true;
  const std::string id = RunEchoToItsEnd(m);
  Scheduler::WaitDone unused = [](const absl::StatusOr<v1::Task>&, bool) {
    ADD_FAILURE() << "no wait registered";
  };
  EXPECT_FALSE(m.scheduler.WaitIfFinishing(id, unused));
  ReleaseAndAwait(m, id);
  m.scheduler.Shutdown(absl::ZeroDuration());
}

}  // namespace
}  // namespace forq::server
