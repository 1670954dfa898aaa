#include "server/manager/manager_service.h"

#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include <grpcpp/grpcpp.h>

#include "common/mutex.h"
#include "common/notification.h"
#include "forq/v1/manager.grpc.pb.h"
#include "tests/testing/status_matchers.h"

namespace forq::server {
namespace {

int ThreadCount() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (absl::StartsWith(line, "Threads:")) {
      int n = 0;
      if (absl::SimpleAtoi(absl::StripAsciiWhitespace(line.substr(8)), &n)) {
        return n;
      }
    }
  }
  return -1;
}

// A real gRPC server on 127.0.0.1 with the ManagerService, in process.
class ManagerServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                             &port);
    builder.RegisterService(service_.grpc_service());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_GT(port, 0);
    channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", port),
                                   grpc::InsecureChannelCredentials());
    stub_ = v1::ManagerService::NewStub(channel_);
  }
  void TearDown() override {
    service_.Shutdown();
    server_->Shutdown();
  }

  ManagerService service_{nullptr, nullptr};
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::ManagerService::Stub> stub_;
};

TEST_F(ManagerServiceTest, DictSetGetAndWrongType) {
  grpc::ClientContext c1;
  v1::DictRequest set;
  set.set_name("cfg");
  set.set_key("k");
  set.set_value("v");
  v1::DictResponse resp;
  ASSERT_TRUE(stub_->DictSet(&c1, set, &resp).ok());
  grpc::ClientContext c2;
  v1::DictRequest get;
  get.set_name("cfg");
  get.set_key("k");
  ASSERT_TRUE(stub_->DictGet(&c2, get, &resp).ok());
  EXPECT_EQ(resp.value(), "v");
  grpc::ClientContext c3;
  v1::ListRequest len;
  len.set_name("cfg");
  v1::ListResponse lresp;
  grpc::Status s = stub_->ListLen(&c3, len, &lresp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(s.error_message(), ::testing::HasSubstr("is a dict"));
}

TEST_F(ManagerServiceTest, LockOverGrpcCarriesFencingToken) {
  grpc::ClientContext c1;
  v1::OpenSessionRequest open;
  v1::OpenSessionResponse session;
  ASSERT_TRUE(stub_->OpenSession(&c1, open, &session).ok());
  EXPECT_EQ(session.session().size(), 32u);
  v1::LockRequest req;
  req.set_name("l");
  req.set_session(session.session());
  v1::LockResponse first, second;
  grpc::ClientContext c2, c3, c4;
  ASSERT_TRUE(stub_->LockAcquire(&c2, req, &first).ok());
  EXPECT_TRUE(first.acquired());
  ASSERT_TRUE(stub_->LockRelease(&c3, req, &second).ok());
  ASSERT_TRUE(stub_->LockAcquire(&c4, req, &second).ok());
  EXPECT_GT(second.fencing_token(), first.fencing_token());
}

TEST_F(ManagerServiceTest, ClientDeadlineRemovesParkedWaiter) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() +
                   std::chrono::milliseconds(200));
  v1::QueueRequest req;
  req.set_name("q");
  v1::QueueResponse resp;
  grpc::Status s = stub_->QueueGet(&ctx, req, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(service_.core().AwaitWaiterCount(0, absl::Seconds(5)));
  // The abandoned get took nothing: a later put stays in the queue.
  grpc::ClientContext put_ctx;
  req.set_value("x");
  ASSERT_TRUE(stub_->QueuePut(&put_ctx, req, &resp).ok());
  EXPECT_EQ(resp.size(), 1);
}

TEST_F(ManagerServiceTest, ExplicitTimeoutAndCancel) {
  grpc::ClientContext ctx;
  v1::EventRequest req;
  req.set_name("e");
  req.mutable_timeout()->set_nanos(50'000'000);
  v1::EventResponse resp;
  ASSERT_TRUE(stub_->EventWait(&ctx, req, &resp).ok());
  EXPECT_FALSE(resp.is_set());

  // Client-side cancel of a parked call unparks it on the server.
  grpc::ClientContext cancel_ctx;
  v1::EventRequest wait;
  wait.set_name("e");
  Notification done;
  grpc::Status status;
  stub_->async()->EventWait(&cancel_ctx, &wait, &resp, [&](grpc::Status s) {
    status = std::move(s);
    done.Notify();
  });
  ASSERT_TRUE(service_.core().AwaitWaiterCount(1, absl::Seconds(5)));
  cancel_ctx.TryCancel();
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(5)));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(service_.core().AwaitWaiterCount(0, absl::Seconds(5)));
}

// A timeout beyond ~292 years (valid up to 10,000) overflowed the
// nanosecond conversion: the wait answered "not set" at once.
TEST_F(ManagerServiceTest, TimeoutOfCenturiesWaitsForTheEvent) {
  grpc::ClientContext wait_ctx;
  v1::EventRequest wait;
  wait.set_name("e");
  wait.mutable_timeout()->set_seconds(9'467'280'000);  // 300 years
  v1::EventResponse resp;
  Notification done;
  grpc::Status status;
  stub_->async()->EventWait(&wait_ctx, &wait, &resp, [&](grpc::Status s) {
    status = std::move(s);
    done.Notify();
  });
  ASSERT_TRUE(service_.core().AwaitWaiterCount(1, absl::Seconds(5)));
  EXPECT_FALSE(done.HasBeenNotified());
  grpc::ClientContext set_ctx;
  v1::EventRequest set;
  set.set_name("e");
  v1::EventResponse set_resp;
  ASSERT_TRUE(stub_->EventSet(&set_ctx, set, &set_resp).ok());
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(5)));
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_TRUE(resp.is_set());
}

// Parked calls cost no thread each.
TEST_F(ManagerServiceTest, ThousandBlockedQueueGetsUseFewThreads) {
  constexpr int kCalls = 1000;
  struct Pending {
    grpc::ClientContext ctx;
    v1::QueueRequest req;
    v1::QueueResponse resp;
  };
  std::vector<std::unique_ptr<Pending>> calls;
  Mutex mu;
  CondVar cv;
  int finished = 0, ok = 0;
  for (int i = 0; i < kCalls; ++i) {
    auto p = std::make_unique<Pending>();
    p->req.set_name("jobs");
    stub_->async()->QueueGet(&p->ctx, &p->req, &p->resp,
                             [&](const grpc::Status& s) {
                               MutexLock lock(&mu);
                               ++finished;
                               ok += s.ok();
                               cv.Signal();
                             });
    calls.push_back(std::move(p));
  }
  ASSERT_TRUE(service_.core().AwaitWaiterCount(kCalls, absl::Seconds(60)));
  const int threads = ThreadCount();
  RecordProperty("threads_with_1000_parked", threads);
  EXPECT_LT(threads, 50) << "threads while " << kCalls << " gets are parked";
  for (int i = 0; i < kCalls; ++i) {
    grpc::ClientContext ctx;
    v1::QueueRequest put;
    put.set_name("jobs");
    put.set_value(absl::StrCat(i));
    v1::QueueResponse resp;
    ASSERT_TRUE(stub_->QueuePut(&ctx, put, &resp).ok());
  }
  MutexLock lock(&mu);
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (finished < kCalls && absl::Now() < deadline) {
    cv.WaitWithTimeout(&mu, absl::Seconds(1));
  }
  EXPECT_EQ(finished, kCalls);
  EXPECT_EQ(ok, kCalls);
  std::cout << "threads with " << kCalls << " parked queue gets: " << threads
            << "\n";
}

TEST_F(ManagerServiceTest, WatchStreamsChanges) {
  grpc::ClientContext wctx;
  v1::ManagerWatchRequest wreq;
  wreq.set_name("w");
  auto reader = stub_->Watch(&wctx, wreq);
  v1::ManagerEvent ev;
  ASSERT_TRUE(reader->Read(&ev));
  EXPECT_EQ(ev.op(), "snapshot");
  for (int i = 0; i < 3; ++i) {
    grpc::ClientContext c;
    v1::ListRequest app;
    app.set_name("w");
    app.set_value(absl::StrCat(i));
    v1::ListResponse r;
    ASSERT_TRUE(stub_->ListAppend(&c, app, &r).ok());
  }
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(reader->Read(&ev));
    EXPECT_EQ(ev.op(), "append");
    EXPECT_EQ(ev.value(), absl::StrCat(i));
    EXPECT_EQ(ev.type(), v1::OBJECT_TYPE_LIST);
  }
  wctx.TryCancel();
  while (reader->Read(&ev)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
}

}  // namespace
}  // namespace forq::server
