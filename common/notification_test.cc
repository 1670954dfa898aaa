#include "common/notification.h"

#include <string>
#include <thread>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace forq {
namespace {

TEST(NotificationTest, WaiterSeesWritesMadeBeforeNotify) {
  Notification ready;
  std::string value;
  std::thread writer([&] {
    value = "written";
    ready.Notify();
  });
  ready.WaitForNotification();
  EXPECT_TRUE(ready.HasBeenNotified());
  EXPECT_EQ(value, "written");
  writer.join();
}

TEST(NotificationTest, TimedWaitReturnsFalseWhenNeverNotified) {
  Notification never;
  const absl::Time start = absl::Now();
  EXPECT_FALSE(never.WaitForNotificationWithTimeout(absl::Milliseconds(20)));
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(20));
  EXPECT_FALSE(never.HasBeenNotified());
}

TEST(NotificationTest, TimedWaitReturnsTrueOnceNotified) {
  Notification done;
  std::thread notifier([&] { done.Notify(); });
  EXPECT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(30)));
  notifier.join();
  // Already notified: returns at once, even with no time left.
  EXPECT_TRUE(done.WaitForNotificationWithTimeout(absl::ZeroDuration()));
}

}  // namespace
}  // namespace forq
