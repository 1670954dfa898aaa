// WaitStream (many waits on one call) and the client's multiplexed futures,
// against a real forqd on loopback.
#include <signal.h>

#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"

#include "common/notification.h"
#include "forq/client.h"
#include "forq/executor.h"
#include "forq/v1/task.grpc.pb.h"
#include "server/http/http_test_client.h"
#include "tests/testing/await_task.h"
#include "tests/testing/forqd_process.h"
#include "tests/testing/grpc_calls.h"
#include "tests/testing/run_budget.h"
#include "tests/testing/shared_forqd.h"
#include "tests/testing/status_matchers.h"

namespace forq {
namespace {

using ::forq::testing::AwaitAll;
using ::forq::testing::AwaitEnd;
using ::forq::testing::AwaitNotification;
using ::forq::testing::AwaitResult;
using ::forq::testing::ForqdProcess;
using ::forq::testing::GrpcCalls;
using ::forq::testing::IsOk;
using ::forq::testing::RunBudget;
using ::forq::testing::SharedForqdTest;
using ::forq::testing::StatusIs;
using ::testing::HasSubstr;

class WaitStreamTest : public SharedForqdTest<WaitStreamTest> {
 protected:
  // forq_grpc_requests_total of one method (see GrpcCalls).
  static double Calls(const std::string& method, bool any_code = false) {
    return GrpcCalls(forqd_->http_address(), method, any_code);
  }

  static std::unique_ptr<v1::TaskService::Stub> Stub() {
    return v1::TaskService::NewStub(grpc::CreateChannel(
        forqd_->grpc_address(), grpc::InsecureChannelCredentials()));
  }
};

TEST_F(WaitStreamTest, ManyFuturesResolveWithoutOneWaitCallPerTask) {
  const double waits_before = Calls("forq.v1.TaskService/Wait");
  std::vector<TaskFuture> futures;
  std::vector<v1::TaskSpec> specs;
  for (int i = 0; i < 2000; ++i) {
    v1::TaskSpec s;
    s.set_kind("echo");
    s.set_payload(absl::StrCat("r", i));
    specs.push_back(std::move(s));
    if (specs.size() == 100) {
      auto r = client_->SubmitBatch(specs);
      ASSERT_THAT(r, IsOk());
      for (auto& f : *r) futures.push_back(std::move(f));
      specs.clear();
    }
  }
  for (int i = 0; i < 2000; ++i) {
    absl::StatusOr<std::string> r = AwaitResult(futures[i], absl::Seconds(60));
    ASSERT_THAT(r, IsOk()) << i;
    EXPECT_EQ(*r, absl::StrCat("r", i));
  }
  // Every result came over the stream: no unary Wait was made.
  EXPECT_EQ(Calls("forq.v1.TaskService/Wait"), waits_before);
}

TEST_F(WaitStreamTest, FailedTaskResolvesWithItsError) {
  auto f = client_->Submit("fail", "no disk");
  ASSERT_THAT(f, IsOk());
  absl::StatusOr<v1::Task> t = AwaitEnd(*f, absl::Seconds(30));
  ASSERT_THAT(t, IsOk());
  EXPECT_EQ(t->state(), v1::FAILED);
  EXPECT_THAT(f->Get(), StatusIs(absl::StatusCode::kFailedPrecondition,
                                 HasSubstr("no disk")));
}

TEST_F(WaitStreamTest, UnknownIdIsNotFound) {
  TaskFuture ghost(
      client_,
      [] {
        v1::Task t;
        t.set_id("no-such-task");
        return t;
      }(),
      false);
  EXPECT_THAT(ghost.Wait(), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(client_->WaitAll({"no-such-task"}),
              StatusIs(absl::StatusCode::kNotFound));
  // The stream survives an unknown id.
  auto f = client_->Submit("echo", "after");
  ASSERT_THAT(f, IsOk());
  EXPECT_THAT(AwaitResult(*f, absl::Seconds(30)), IsOk());
}

TEST_F(WaitStreamTest, WaitAllReturnsTasksInOrder) {
  std::vector<std::string> ids;
  for (int i = 0; i < 50; ++i) {
    auto f = client_->Submit("echo", absl::StrCat(i));
    ASSERT_THAT(f, IsOk());
    ids.push_back(f->id());
  }  // futures gone: WaitAll waits on its own
  auto tasks = AwaitAll(*client_, ids, absl::Seconds(60));
  ASSERT_THAT(tasks, IsOk());
  ASSERT_EQ(tasks->size(), 50u);
  for (int i = 0; i < 50; ++i) {
    EXPECT_EQ((*tasks)[i].id(), ids[i]);
    EXPECT_EQ((*tasks)[i].result(), absl::StrCat(i));
  }
}

TEST_F(WaitStreamTest, TimedOutWaitLeavesTheFutureUsable) {
  auto f = client_->Submit("sleep", "300");
  ASSERT_THAT(f, IsOk());
  EXPECT_THAT(f->WaitFor(absl::Milliseconds(1)),
              StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_THAT(AwaitResult(*f, absl::Seconds(30)), IsOk());
  EXPECT_THAT(f->Ready(), IsOk());
  EXPECT_TRUE(*f->Ready());
}

TEST_F(WaitStreamTest, CancelledWaitGetsNoAnswerAndHalfCloseEndsTheStream) {
  auto slow = client_->Submit("sleep", "60000");
  auto fast = client_->Submit("echo", "quick");
  ASSERT_THAT(slow, IsOk());
  ASSERT_THAT(fast, IsOk());
  auto stub = Stub();
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  auto rpc = stub->WaitStream(&ctx);
  v1::WaitStreamRequest req;
  req.add_ids(slow->id());
  req.add_ids(fast->id());
  ASSERT_TRUE(rpc->Write(req));
  req.Clear();
  req.add_cancel_ids(slow->id());
  ASSERT_TRUE(rpc->Write(req));
  ASSERT_TRUE(rpc->WritesDone());
  // Only the fast task is answered; the half-close then ends the call
  // although the slow task is still running.
  std::vector<std::string> answered;
  v1::WaitStreamResponse resp;
  while (rpc->Read(&resp)) {
    for (const v1::Task& t : resp.tasks()) answered.push_back(t.id());
    EXPECT_EQ(resp.errors_size(), 0);
  }
  grpc::Status s = rpc->Finish();
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_THAT(answered, ::testing::ElementsAre(fast->id()));
  ASSERT_THAT(slow->Cancel(), IsOk());
}

TEST_F(WaitStreamTest, RestAnswersNdjson) {
  auto f = client_->Submit("echo", "rest");
  ASSERT_THAT(f, IsOk());
  ASSERT_THAT(AwaitResult(*f, absl::Seconds(30)), IsOk());
  auto r = server::testing::HttpCall(
      forqd_->http_address(), "POST", "/v1/tasks:waitStream?text=true",
      absl::StrCat("{\"ids\": [\"", f->id(), "\", \"nope\"]}\n"),
      {{"Content-Type", "application/x-ndjson"}});
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->status, 200) << r->body;
  EXPECT_THAT(r->body, HasSubstr(f->id()));
  EXPECT_THAT(r->body, HasSubstr("\"SUCCEEDED\""));
  EXPECT_THAT(r->body, HasSubstr("\"nope\""));
}

TEST_F(WaitStreamTest, ExecutorShutdownWaitsOverTheStream) {
  const double waits_before = Calls("forq.v1.TaskService/Wait");
  {
    Executor ex(*client_);
    for (int i = 0; i < 200; ++i) ASSERT_THAT(ex.Submit("echo", "e"), IsOk());
    ASSERT_THAT(ex.Shutdown(), IsOk());
  }
  EXPECT_EQ(Calls("forq.v1.TaskService/Wait"), waits_before);
}

TEST_F(WaitStreamTest, LegacyPerTaskWaitStillWorks) {
  auto c = Client::Connect(
      {.address = forqd_->grpc_address(), .wait_stream = false});
  ASSERT_THAT(c, IsOk());
  const double waits_before = Calls("forq.v1.TaskService/Wait");
  // Still running when Submit answers (an echo may already be finished,
  // and a finished task in the answer needs no call at all).
  auto f = (*c)->Submit("sleep", "200");
  ASSERT_THAT(f, IsOk());
  ASSERT_FALSE(IsTerminal(f->submitted().state()));
  EXPECT_THAT(AwaitResult(*f, absl::Seconds(30)), IsOk());
  EXPECT_GT(Calls("forq.v1.TaskService/Wait"), waits_before);
}

// A client that waits for one task at a time uses one Wait call per task
// and never opens the stream (whose callback threads would then sit between
// every later blocking call and its caller); a second pending future opens
// it, as before.
TEST_F(WaitStreamTest, LoneWaitIsOneWaitCallAndOpensNoStream) {
  const std::string kWait = "forq.v1.TaskService/Wait";
  const std::string kStream = "forq.v1.TaskService/WaitStream";
  const double waits_before = Calls(kWait);
  const double streams_before = Calls(kStream, /*any_code=*/true);
  {
    auto c = Client::Connect({.address = forqd_->grpc_address()});
    ASSERT_THAT(c, IsOk());
    // Get with a wall-clock timeout, not AwaitResult: its slices would
    // each be a Wait call.
    for (int i = 0; i < 3; ++i) {
      auto f = (*c)->Submit("sleep", "50");
      ASSERT_THAT(f, IsOk());
      ASSERT_FALSE(IsTerminal(f->submitted().state()));
      EXPECT_THAT(f->Get(absl::Seconds(30)), IsOk());
      EXPECT_THAT(f->Ready(), IsOk());
    }
  }
  EXPECT_EQ(Calls(kWait), waits_before + 3);
  {
    auto c = Client::Connect({.address = forqd_->grpc_address()});
    ASSERT_THAT(c, IsOk());
    auto a = (*c)->Submit("sleep", "50");
    auto b = (*c)->Submit("sleep", "50");
    ASSERT_THAT(a, IsOk());
    ASSERT_THAT(b, IsOk());
    EXPECT_THAT(a->Get(absl::Seconds(30)), IsOk());
    EXPECT_THAT(b->Get(absl::Seconds(30)), IsOk());
  }  // the client is gone: its stream ends and is counted
  EXPECT_EQ(Calls(kWait), waits_before + 3);
  for (RunBudget run(absl::Seconds(30));
       Calls(kStream, true) < streams_before + 1 && run.NextSlice();) {
    absl::SleepFor(absl::Milliseconds(5));  // polling /metrics
  }
  EXPECT_EQ(Calls(kStream, true), streams_before + 1);
}

// forqd killed while futures wait: they fail promptly with Unavailable; after
// a restart the same futures resolve (over a new stream).
// forqd's forq_task_waits gauge, or -1 if /metrics cannot be read.
double TaskWaits(const ForqdProcess& forqd) {
  auto r = server::testing::HttpCall(forqd.http_address(), "GET", "/metrics");
  if (!r.ok()) return -1;
  for (absl::string_view line : absl::StrSplit(r->body, '\n')) {
    double v = 0;
    if (absl::ConsumePrefix(&line, "forq_task_waits ") &&
        absl::SimpleAtod(absl::StripAsciiWhitespace(line), &v)) {
      return v;
    }
  }
  return -1;
}

// Whether `channel` connects within `budget` of time in which the test ran.
bool Connects(grpc::Channel& channel, absl::Duration budget) {
  RunBudget run(budget);
  for (grpc_connectivity_state state = channel.GetState(true);
       state != GRPC_CHANNEL_READY; state = channel.GetState(true)) {
    std::optional<absl::Time> until = run.NextSlice();
    if (!until) return false;
    channel.WaitForStateChange(state, absl::ToChronoTime(*until));
  }
  return true;
}

// Every bound below counts time in which the test ran (RunBudget), so a
// stop of the test and forqd together (SIGSTOP of them all, a suspended
// VM) does not fail it.
TEST(WaitStreamRestartTest, WaitersFailClearlyWhenForqdDiesAndResumeAfter) {
  auto p = ForqdProcess::Start({.workers = 2});
  ASSERT_THAT(p, IsOk());
  ForqdProcess& forqd = **p;
  auto c = Client::Connect({.address = forqd.grpc_address()});
  ASSERT_THAT(c, IsOk());
  auto f = (*c)->Submit("sleep", "2000");
  ASSERT_THAT(f, IsOk());
  // A second pending future: the waits go over the stream (a lone one is a
  // unary Wait call).
  auto g = (*c)->Submit("sleep", "2000");
  ASSERT_THAT(g, IsOk());
  // Wait until the task runs (unary Wait with a short timeout, so the
  // future's stream is first used by the waiter below).
  v1::TaskState state = f->submitted().state();
  for (RunBudget run(absl::Seconds(20));
       state != v1::RUNNING && run.NextSlice();) {
    auto t = (*c)->Wait(f->id(), absl::Milliseconds(20));
    ASSERT_THAT(t, IsOk());
    state = t->task().state();
  }
  ASSERT_EQ(state, v1::RUNNING) << v1::TaskState_Name(state);
  // The waiter's own bound is a run-time budget too (AwaitEnd): the future
  // stays tracked between its slices, so its wait stays parked in forqd.
  absl::StatusOr<v1::Task> seen;
  Notification waiter_done;
  std::thread waiter([&] {
    seen = AwaitEnd(*f, absl::Seconds(60));
    waiter_done.Notify();
  });
  // The kill must find the wait parked in forqd (else the client is still
  // dialing and there is no stream to fail).
  for (RunBudget run(absl::Seconds(20));
       TaskWaits(forqd) < 1 && run.NextSlice();) {
    absl::SleepFor(absl::Milliseconds(5));  // polling /metrics
  }
  EXPECT_GE(TaskWaits(forqd), 1) << "the waiter's wait never reached forqd";
  ASSERT_THAT(forqd.Kill(SIGKILL), IsOk());
  EXPECT_TRUE(AwaitNotification(waiter_done, absl::Seconds(20)))
      << "the waiter did not fail within 20 s of the kill";
  waiter.join();
  EXPECT_THAT(
      seen, StatusIs(absl::StatusCode::kUnavailable, HasSubstr("wait stream")));
  ASSERT_THAT(forqd.Restart(), IsOk());
  ASSERT_TRUE(Connects(*(*c)->channel(), absl::Seconds(30)));
  absl::StatusOr<v1::Task> t = AwaitEnd(*f, absl::Seconds(60));
  ASSERT_THAT(t, IsOk()) << forqd.LogTail();
  EXPECT_EQ(t->state(), v1::SUCCEEDED);
}

}  // namespace
}  // namespace forq
