// Client::Connect against a forqd that is not listening (yet).
#include <memory>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include "forq/client.h"
#include "tests/testing/forqd_process.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace forq {
namespace {

using ::forq::testing::ForqdProcess;
using ::forq::testing::IsOk;
using ::forq::testing::StatusIs;
using ::forq::testing::TempDir;
using ::testing::HasSubstr;

// Nothing listens on the socket: without wait_for_server (the CLI's
// setting) Connect says so at once, well inside connect_timeout.
TEST(ConnectTest, NothingListeningFailsAtOnceWithoutWaitForServer) {
  TempDir dir;
  ClientOptions o;
  o.address = absl::StrCat("unix:", dir.path(), "/forqd.sock");
  o.connect_timeout = absl::Seconds(20);
  o.wait_for_server = false;
  const absl::Time start = absl::Now();
  absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(o);
  EXPECT_THAT(c.status(), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(c.status().message(), HasSubstr("cannot reach forqd at"));
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
}

// With wait_for_server (the default), a client started before forqd
// listens keeps trying and connects once forqd is up.
TEST(ConnectTest, WaitForServerConnectsToAForqdStartedLater) {
  TempDir dir;
  const std::string address = absl::StrCat("unix:", dir.path(), "/forqd.sock");
  absl::Notification trying;
  absl::StatusOr<std::unique_ptr<Client>> client;
  std::thread connect([&] {
    ClientOptions o;
    o.address = address;
    o.connect_timeout = absl::Seconds(60);
    o.wait_for_server = true;
    trying.Notify();
    client = Client::Connect(o);
  });
  trying.WaitForNotification();
  absl::StatusOr<std::unique_ptr<ForqdProcess>> forqd =
      ForqdProcess::Start({.workers = 1, .flags = {"--grpc_addr=" + address}});
  connect.join();
  ASSERT_THAT(forqd, IsOk());
  ASSERT_THAT(client, IsOk());
  absl::StatusOr<std::string> echoed = (*client)->Apply("echo", "up");
  ASSERT_THAT(echoed, IsOk());
  EXPECT_EQ(*echoed, "up");
}

}  // namespace
}  // namespace forq
