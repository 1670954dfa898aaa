// The mp.* task kinds run against a real core through the task bridge, with
// threads standing in for worker processes (the pool's side channel is
// tested by the worker module; end-to-end runs are in
// tests/integration/manager_test.cc).
#include "worker/mp_handlers.h"

#include <string>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include "common/mutex.h"
#include "common/notification.h"
#include "server/manager/object_manager.h"
#include "server/manager/task_bridge.h"
#include "tests/testing/status_matchers.h"
#include "worker/handler.h"
#include "worker/manager_client.h"

namespace forq::server {
namespace {

using ::forq::testing::IsOk;
using ::forq::testing::StatusIs;

// A TaskContext whose Call goes through the task bridge to `core`,
// blocking like a worker does.
class BridgeContext : public worker::TaskContext {
 public:
  BridgeContext(ObjectManager& core, std::string id)
      : core_(core), id_(std::move(id)) {}
  absl::string_view task_id() const override { return id_; }
  int attempt() const override { return 1; }
  absl::Time deadline() const override { return absl::InfiniteFuture(); }
  bool cancelled() const override { return false; }
  void Progress(double, absl::string_view) override {}
  absl::StatusOr<std::string> Call(absl::string_view request) override {
    Notification done;
    absl::StatusOr<std::string> out = absl::UnknownError("no reply");
    HandleManagerTaskCall(core_, id_, request,
                          [&](absl::StatusOr<std::string> r) {
                            out = std::move(r);
                            done.Notify();
                          });
    done.WaitForNotification();
    return out;
  }

 private:
  ObjectManager& core_;
  std::string id_;
};

class MpHandlersTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_THAT(worker::RegisterMpHandlers(registry_), IsOk());
  }

  absl::StatusOr<std::string> Run(const std::string& kind,
                                  const std::string& payload,
                                  const std::string& task_id) {
    BridgeContext ctx(core_, task_id);
    std::string out;
    const worker::Handler* h = registry_.Find(kind);
    if (h == nullptr) return absl::NotFoundError(kind);
    absl::Status s = (*h)(ctx, payload, &out);
    if (!s.ok()) return s;
    return out;
  }

  // Runs two handlers at the same time, released together.
  void RunPair(const std::string& a, const std::string& b,
               absl::StatusOr<std::string>* ra,
               absl::StatusOr<std::string>* rb) {
    Notification go;
    std::thread t1([&] {
      go.WaitForNotification();
      *ra = Run("mp.counter", a, "t1");
    });
    std::thread t2([&] {
      go.WaitForNotification();
      *rb = Run("mp.counter", b, "t2");
    });
    go.Notify();
    t1.join();
    t2.join();
  }

  std::string ListGet0(const std::string& list) {
    BridgeContext ctx(core_, "reader");
    worker::ManagerClient m(ctx);
    absl::StatusOr<std::string> v = m.ListGet(list, 0);
    EXPECT_THAT(v, IsOk());
    return v.ok() ? *v : "";
  }

  void Append0(const std::string& list) {
    BridgeContext ctx(core_, "init");
    worker::ManagerClient m(ctx);
    ASSERT_THAT(m.ListAppend(list, "0"), IsOk());
  }

  ObjectManager core_{nullptr, nullptr};
  worker::HandlerRegistry registry_;
};

TEST_F(MpHandlersTest, CounterUnderLockCancelsOut) {
  Append0("counter");
  absl::StatusOr<std::string> a, b;
  RunPair("list=counter delta=1 n=1000", "list=counter delta=-1 n=1000", &a,
          &b);
  ASSERT_THAT(a, IsOk());
  ASSERT_THAT(b, IsOk());
  EXPECT_EQ(ListGet0("counter"), "0");
  // Both tasks closed their sessions: nothing is left holding the lock.
  EXPECT_EQ(core_.session_count(), 0u);
}

TEST_F(MpHandlersTest, CounterWithoutLockLosesUpdates) {
  std::string value = "0";
  for (int i = 0; i < 5 && value == "0"; ++i) {
    const std::string list = "racy" + std::to_string(i);
    Append0(list);
    absl::StatusOr<std::string> a, b;
    RunPair("list=" + list + " delta=1 n=20000 nolock=1",
            "list=" + list + " delta=-1 n=20000 nolock=1", &a, &b);
    ASSERT_THAT(a, IsOk());
    ASSERT_THAT(b, IsOk());
    value = ListGet0(list);
  }
  EXPECT_NE(value, "0");
}

TEST_F(MpHandlersTest, ProducerAndConsumerShareAQueue) {
  absl::StatusOr<std::string> got;
  std::thread consumer(
      [&] { got = Run("mp.queue_get", "queue=pc", "consumer"); });
  ASSERT_TRUE(core_.AwaitWaiterCount(1, absl::Seconds(10)));  // parked
  EXPECT_THAT(Run("mp.queue_put", "queue=pc item=a", "producer"), IsOk());
  consumer.join();
  ASSERT_THAT(got, IsOk());
  EXPECT_EQ(*got, "a");
}

TEST_F(MpHandlersTest, BadPayloadsAreInvalidArgument) {
  EXPECT_THAT(Run("mp.queue_put", "queue=q", "t"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(Run("mp.queue_get", "bogus", "t"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(Run("mp.counter", "list=x n=abc", "t"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(Run("mp.counter", "list=x color=red", "t"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  // The list must be initialised first.
  EXPECT_THAT(Run("mp.counter", "list=empty n=1", "t"),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(Run("mp.queue_get", "queue=nothing timeout_ms=10", "t"),
              StatusIs(absl::StatusCode::kDeadlineExceeded));
}

}  // namespace
}  // namespace forq::server
