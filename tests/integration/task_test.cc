// End-to-end task tests: a real forqd on loopback, the real client library.
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/time_util.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"

#include "forq/client.h"
#include "forq/v1/task.grpc.pb.h"
#include "tests/testing/await_task.h"
#include "tests/testing/forqd_process.h"
#include "tests/testing/postgres_server.h"
#include "tests/testing/shared_forqd.h"
#include "tests/testing/status_matchers.h"

namespace forq {
namespace {

using ::forq::testing::AwaitAll;
using ::forq::testing::AwaitEnd;
using ::forq::testing::AwaitResult;
using ::forq::testing::AwaitWait;
using ::forq::testing::ForqdOptions;
using ::forq::testing::ForqdProcess;
using ::forq::testing::IsOk;
using ::forq::testing::SharedForqdTest;
using ::forq::testing::StatusIs;
using ::google::protobuf::util::TimeUtil;
using ::testing::HasSubstr;

absl::Time T(const google::protobuf::Timestamp& ts) {
  return absl::FromUnixNanos(TimeUtil::TimestampToNanoseconds(ts));
}

class TaskTest : public SharedForqdTest<TaskTest> {
 public:
  static ForqdOptions Options() {
    ForqdOptions o;
    o.flags = {"--retry_backoff=50ms", "--purge_interval=100ms"};
#ifdef FORQ_TEST_POSTGRES
    // postgres_task_test: the same tests with the tasks in PostgreSQL.
    auto store = forq::testing::PostgresStoreFlag("task");
    EXPECT_TRUE(store.ok()) << store.status();
    if (store.ok()) o.flags.push_back(*store);
#endif
    return o;
  }

 protected:
  v1::Task RunToEnd(absl::string_view kind, absl::string_view payload,
                    const SubmitOptions& o = {}) {
    absl::StatusOr<TaskFuture> f = client_->Submit(kind, payload, o);
    EXPECT_THAT(f, IsOk());
    if (!f.ok()) return v1::Task();
    absl::StatusOr<v1::Task> t = AwaitEnd(*f, absl::Seconds(60));
    EXPECT_THAT(t, IsOk());
    return t.ok() ? *t : v1::Task();
  }
};

TEST_F(TaskTest, BuiltinsSucceedWithExpectedResults) {
  EXPECT_EQ(RunToEnd("echo", "hello").result(), "hello");
  EXPECT_EQ(RunToEnd("sleep", "20").result(), "20");
  EXPECT_EQ(RunToEnd("primes", "100000").result(), "9592");
  EXPECT_EQ(RunToEnd("sha256", "abc").result(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  v1::Task t = RunToEnd("echo", "x");
  EXPECT_EQ(t.state(), v1::SUCCEEDED);
  EXPECT_EQ(t.attempt(), 1);
  EXPECT_GT(t.worker_pid(), 0);
  EXPECT_LE(T(t.created_at()), T(t.started_at()));
  EXPECT_LE(T(t.started_at()), T(t.finished_at()));
}

TEST_F(TaskTest, FailingTaskReportsFailedWithItsMessage) {
  v1::Task t = RunToEnd("fail", "disk is on fire");
  EXPECT_EQ(t.state(), v1::FAILED);
  EXPECT_EQ(t.error().message(), "disk is on fire");
  EXPECT_EQ(t.attempt(), 1);  // permanent errors are not retried
  EXPECT_THAT(TaskResult(t), StatusIs(absl::StatusCode::kFailedPrecondition,
                                      HasSubstr("disk is on fire")));
}

// Submit with `wait`: one call answers with the finished task.
TEST_F(TaskTest, ApplySubmitsAndWaitsInOneCall) {
  absl::StatusOr<std::string> r = client_->Apply("echo", "one call");
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(*r, "one call");
  EXPECT_THAT(
      client_->Apply("fail", "no luck"),
      StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("no luck")));
  EXPECT_THAT(client_->Apply("no-such-kind", ""),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

// A wait shorter than the task: the reply is the unfinished task
// (done=false), which still finishes; a negative wait is refused.
TEST_F(TaskTest, SubmitWaitShorterThanTheTaskAnswersUnfinished) {
  auto stub = v1::TaskService::NewStub(client_->channel());
  v1::SubmitRequest req;
  req.mutable_task()->set_kind("sleep");
  req.mutable_task()->set_payload("2000");
  *req.mutable_wait() = TimeUtil::MillisecondsToDuration(50);
  v1::SubmitResponse resp;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->Submit(&ctx, req, &resp).ok());
  }
  EXPECT_FALSE(resp.done());
  EXPECT_FALSE(resp.task().id().empty());
  EXPECT_THAT(resp.task().state(), ::testing::AnyOf(v1::QUEUED, v1::RUNNING));
  absl::StatusOr<std::vector<v1::Task>> end =
      AwaitAll(*client_, {resp.task().id()}, absl::Seconds(60));
  ASSERT_THAT(end, IsOk());
  EXPECT_EQ((*end)[0].state(), v1::SUCCEEDED);

  *req.mutable_wait() = TimeUtil::MillisecondsToDuration(-5);
  grpc::ClientContext ctx;
  grpc::Status s = stub->Submit(&ctx, req, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("wait"));
}

// A task with a timeout under 10 s never waits behind a running one: with
// every worker busy the pool refuses it, and the tasks of its batch after
// it, until a worker is free. Refused, they keep their place and run.
TEST_F(TaskTest, BatchRefusedWhileEveryWorkerIsBusyRunsOnceOneIsFree) {
  std::vector<TaskFuture> sleeps;
  for (int i = 0; i < 2; ++i) {  // the fixture's two workers
    absl::StatusOr<TaskFuture> f = client_->Submit("sleep", "300");
    ASSERT_THAT(f, IsOk());
    sleeps.push_back(*std::move(f));
  }
  std::vector<v1::TaskSpec> specs(3);
  for (int i = 0; i < 3; ++i) {
    specs[i].set_kind("echo");
    specs[i].set_payload(absl::StrCat("e", i));
  }
  specs[0].mutable_timeout()->set_seconds(5);
  absl::StatusOr<std::vector<TaskFuture>> batch = client_->SubmitBatch(specs);
  ASSERT_THAT(batch, IsOk());
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<std::string> r = AwaitResult((*batch)[i], absl::Seconds(30));
    ASSERT_THAT(r, IsOk()) << "task " << i;
    EXPECT_EQ(*r, absl::StrCat("e", i));
  }
  for (const TaskFuture& f : sleeps) {
    EXPECT_THAT(AwaitResult(f, absl::Seconds(30)), IsOk());
  }
}

TEST_F(TaskTest, CrashingWorkerDoesNotTakeForqdDown) {
  v1::Task t = RunToEnd("crash", "", {.max_attempts = 2});
  EXPECT_EQ(t.state(), v1::DEAD);
  EXPECT_EQ(t.attempt(), 2);
  EXPECT_EQ(t.error().reason(), v1::SIGNALED);
  EXPECT_EQ(t.error().signal(), SIGABRT);
  // forqd and the pool still work.
  EXPECT_EQ(RunToEnd("echo", "still here").result(), "still here");
}

TEST_F(TaskTest, UnknownKindIsInvalidArgument) {
  absl::StatusOr<TaskFuture> f = client_->Submit("no.such.kind", "");
  EXPECT_THAT(f, StatusIs(absl::StatusCode::kInvalidArgument,
                          HasSubstr("unknown task kind 'no.such.kind'")));
}

TEST_F(TaskTest, TooBigPayloadIsInvalidArgumentNamingTheLimit) {
  std::string big(2 << 20, 'x');
  absl::StatusOr<TaskFuture> f = client_->Submit("echo", big);
  EXPECT_THAT(f, StatusIs(absl::StatusCode::kInvalidArgument,
                          HasSubstr("limit is 1048576 bytes")));
}

TEST_F(TaskTest, CancelOfQueuedTaskEndsCancelledAndNeverRuns) {
  // A far delay keeps the task QUEUED whatever the workers do.
  absl::StatusOr<TaskFuture> f =
      client_->Submit("echo", "x", {.delay = absl::Hours(1)});
  ASSERT_THAT(f, IsOk());
  absl::StatusOr<v1::Task> c = f->Cancel();
  ASSERT_THAT(c, IsOk());
  EXPECT_EQ(c->state(), v1::CANCELLED);
  absl::StatusOr<v1::Task> t = AwaitEnd(*f, absl::Seconds(5));
  ASSERT_THAT(t, IsOk());
  EXPECT_EQ(t->state(), v1::CANCELLED);
  EXPECT_EQ(t->attempt(), 0);
  // Cancelling again is a precondition failure.
  EXPECT_THAT(f->Cancel(), StatusIs(absl::StatusCode::kFailedPrecondition));
}

TEST_F(TaskTest, CancelOfRunningTaskStopsIt) {
  absl::StatusOr<TaskFuture> f = client_->Submit("sleep", "60000");
  ASSERT_THAT(f, IsOk());
  // Wait until it runs: Watch would do too; Wait with short slices is enough.
  absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (absl::Now() < deadline) {
    auto t = client_->Get(f->id());
    ASSERT_THAT(t, IsOk());
    if (t->state() == v1::RUNNING) break;
    (void)client_->Wait(f->id(), absl::Milliseconds(20));
  }
  ASSERT_THAT(f->Cancel(), IsOk());
  absl::StatusOr<v1::Task> t = AwaitEnd(*f, absl::Seconds(20));
  ASSERT_THAT(t, IsOk());
  EXPECT_EQ(t->state(), v1::CANCELLED);
}

TEST_F(TaskTest, GetOfRunningTaskShowsItsWorkerPid) {
  absl::StatusOr<TaskFuture> f = client_->Submit("sleep", "60000");
  ASSERT_THAT(f, IsOk());
  // worker_pid is "current or last attempt": it is there while the attempt
  // runs, not only after it ended.
  v1::Task running;
  absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (absl::Now() < deadline) {
    absl::StatusOr<v1::Task> t = client_->Get(f->id());
    ASSERT_THAT(t, IsOk());
    running = *t;
    if (t->state() == v1::RUNNING && t->worker_pid() > 0) break;
    (void)client_->Wait(f->id(), absl::Milliseconds(20));
  }
  EXPECT_EQ(running.state(), v1::RUNNING);
  ASSERT_GT(running.worker_pid(), 0);
  absl::StatusOr<v1::PoolStatus> pool = client_->GetPool();
  ASSERT_THAT(pool, IsOk());
  bool found = false;
  for (const v1::Worker& w : pool->workers()) {
    if (w.pid() == running.worker_pid()) {
      found = true;
      EXPECT_EQ(w.current_task_id(), f->id());
    }
  }
  EXPECT_TRUE(found) << "pid " << running.worker_pid() << " is no worker";
  ASSERT_THAT(f->Cancel(), IsOk());
  absl::StatusOr<v1::Task> done = AwaitEnd(*f, absl::Seconds(20));
  ASSERT_THAT(done, IsOk());
  EXPECT_EQ(done->state(), v1::CANCELLED);
  EXPECT_EQ(done->worker_pid(), running.worker_pid());
}

TEST_F(TaskTest, HundredConcurrentWaitersAllGetTheResult) {
  absl::StatusOr<TaskFuture> f = client_->Submit("sleep", "500");
  ASSERT_THAT(f, IsOk());
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  threads.reserve(100);
  for (int i = 0; i < 100; ++i) {
    threads.emplace_back([&] {
      absl::StatusOr<std::string> r = AwaitResult(*f, absl::Seconds(60));
      if (r.ok() && *r == "500") ok.fetch_add(1);
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 100);
}

TEST_F(TaskTest, WaitTimesOutWithCurrentState) {
  absl::StatusOr<TaskFuture> f =
      client_->Submit("echo", "x", {.delay = absl::Hours(1)});
  ASSERT_THAT(f, IsOk());
  absl::StatusOr<v1::WaitTaskResponse> r =
      client_->Wait(f->id(), absl::Milliseconds(100));
  ASSERT_THAT(r, IsOk());
  EXPECT_FALSE(r->done());
  EXPECT_EQ(r->task().state(), v1::QUEUED);
  EXPECT_THAT(f->Get(absl::Milliseconds(50)),
              StatusIs(absl::StatusCode::kDeadlineExceeded));
  ASSERT_THAT(f->Cancel(), IsOk());
}

TEST_F(TaskTest, UnknownIdIsNotFound) {
  EXPECT_THAT(client_->Get("nope"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(client_->Wait("nope", absl::Seconds(1)),
              StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(TaskTest, DelayedTaskDoesNotStartBeforeItsTime) {
  v1::Task t = RunToEnd("echo", "later", {.delay = absl::Milliseconds(700)});
  EXPECT_EQ(t.state(), v1::SUCCEEDED);
  EXPECT_GE(T(t.started_at()) - T(t.created_at()), absl::Milliseconds(700));
}

TEST_F(TaskTest, RetryableFailureBacksOffAndSucceeds) {
  v1::Task t = RunToEnd("flaky", "3", {.max_attempts = 5});
  EXPECT_EQ(t.state(), v1::SUCCEEDED);
  EXPECT_EQ(t.attempt(), 3);
  EXPECT_EQ(t.result(), "ok on attempt 3");
  // Two backoffs of at least 0.75 * 50 ms and 0.75 * 100 ms.
  EXPECT_GE(T(t.finished_at()) - T(t.created_at()), absl::Milliseconds(110));
}

TEST_F(TaskTest, DeadLetterIsListedAndManualRetryRunsItAgain) {
  SubmitOptions o{.queue = "dlq-test", .max_attempts = 2};
  v1::Task t = RunToEnd("flaky", "3", o);
  ASSERT_EQ(t.state(), v1::DEAD);
  EXPECT_EQ(t.attempt(), 2);
  v1::ListTasksRequest req;
  req.set_state(v1::DEAD);
  req.set_queue("dlq-test");
  absl::StatusOr<v1::ListTasksResponse> dead = client_->List(req);
  ASSERT_THAT(dead, IsOk());
  ASSERT_EQ(dead->tasks_size(), 1);
  EXPECT_EQ(dead->tasks(0).id(), t.id());

  absl::StatusOr<v1::Task> r = client_->Retry(t.id());
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->state(), v1::QUEUED);
  absl::StatusOr<v1::WaitTaskResponse> w =
      AwaitWait(*client_, t.id(), absl::Seconds(30));
  ASSERT_THAT(w, IsOk());
  EXPECT_EQ(w->task().state(), v1::SUCCEEDED);
  EXPECT_EQ(w->task().attempt(), 3);
  // A succeeded task cannot be retried.
  EXPECT_THAT(client_->Retry(t.id()),
              StatusIs(absl::StatusCode::kFailedPrecondition));
}

TEST_F(TaskTest, IdempotencyKeyReturnsTheFirstTask) {
  SubmitOptions o{.idempotency_key =
                      absl::StrCat("key-", absl::ToUnixNanos(absl::Now()))};
  absl::StatusOr<TaskFuture> a = client_->Submit("echo", "first", o);
  absl::StatusOr<TaskFuture> b = client_->Submit("echo", "second", o);
  ASSERT_THAT(a, IsOk());
  ASSERT_THAT(b, IsOk());
  EXPECT_FALSE(a->existing());
  EXPECT_TRUE(b->existing());
  EXPECT_EQ(a->id(), b->id());
  EXPECT_EQ(*AwaitResult(*b, absl::Seconds(30)), "first");
}

TEST_F(TaskTest, BatchIsAllOrNone) {
  std::vector<v1::TaskSpec> specs(3);
  for (auto& s : specs) {
    s.set_kind("echo");
    s.set_queue("batch-atomic");
  }
  specs[1].set_kind("no.such.kind");
  EXPECT_THAT(
      client_->SubmitBatch(specs),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("task 1")));
  v1::ListTasksRequest req;
  req.set_queue("batch-atomic");
  absl::StatusOr<v1::ListTasksResponse> l = client_->List(req);
  ASSERT_THAT(l, IsOk());
  EXPECT_EQ(l->tasks_size(), 0);

  specs[1].set_kind("echo");
  absl::StatusOr<std::vector<TaskFuture>> ok = client_->SubmitBatch(specs);
  ASSERT_THAT(ok, IsOk());
  ASSERT_EQ(ok->size(), 3u);
  for (const TaskFuture& f : *ok) {
    EXPECT_THAT(AwaitResult(f, absl::Seconds(30)), IsOk());
  }
}

TEST_F(TaskTest, AsyncBatchesInFlightTogetherAllRunAndAnErrorStaysItsOwn) {
  std::vector<PendingBatch> pending;
  for (int b = 0; b < 4; ++b) {
    std::vector<v1::TaskSpec> specs(25);
    for (int i = 0; i < 25; ++i) {
      specs[i].set_kind(b == 2 && i == 7 ? "no.such.kind" : "echo");
      specs[i].set_queue("batch-async");
      specs[i].set_payload(absl::StrCat(b, "-", i));
    }
    pending.push_back(client_->SubmitBatchAsync(specs));
  }
  for (int b = 0; b < 4; ++b) {
    absl::StatusOr<std::vector<TaskFuture>> r = pending[b].Wait();
    if (b == 2) {
      // The bad batch fails whole, as SubmitBatch would; the others do not.
      EXPECT_THAT(
          r, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("task 7")));
      continue;
    }
    ASSERT_THAT(r, IsOk());
    ASSERT_EQ(r->size(), 25u);
    for (int i = 0; i < 25; ++i) {
      absl::StatusOr<std::string> got = AwaitResult((*r)[i], absl::Seconds(30));
      ASSERT_THAT(got, IsOk());
      EXPECT_EQ(*got, absl::StrCat(b, "-", i));
    }
  }
  EXPECT_THAT(pending[0].Wait(),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  v1::ListTasksRequest req;
  req.set_queue("batch-async");
  absl::StatusOr<v1::ListTasksResponse> l = client_->List(req);
  ASSERT_THAT(l, IsOk());
  EXPECT_EQ(l->tasks_size(), 75);
}

// 250 echo tasks in `queue`, payload i for task i.
std::vector<v1::TaskSpec> EchoSpecs(const std::string& queue) {
  std::vector<v1::TaskSpec> specs(250);
  for (int i = 0; i < 250; ++i) {
    specs[i].set_kind("echo");
    specs[i].set_queue(queue);
    specs[i].set_payload(absl::StrCat(i));
  }
  return specs;
}

// SubmitMany's futures: one per spec, in order, each with its own result.
void ExpectEchoesInOrder(const std::vector<TaskFuture>& futures) {
  ASSERT_EQ(futures.size(), 250u);
  for (int i = 0; i < 250; ++i) {
    absl::StatusOr<std::string> got =
        AwaitResult(futures[i], absl::Seconds(30));
    ASSERT_THAT(got, IsOk());
    EXPECT_EQ(*got, absl::StrCat(i));
  }
}

TEST_F(TaskTest, SubmitManyGivesOneFuturePerSpecInOrderAndStopsAtARefusal) {
  std::vector<v1::TaskSpec> specs = EchoSpecs("many");
  Client::ManyOptions options;
  options.batch = 40;  // the last batch is short
  options.in_flight = 3;
  absl::StatusOr<std::vector<TaskFuture>> futures =
      client_->SubmitMany(specs, options);
  ASSERT_THAT(futures, IsOk());
  ExpectEchoesInOrder(*futures);

  specs[130].set_kind("no.such.kind");  // in the fourth batch of 40
  EXPECT_THAT(
      client_->SubmitMany(specs, options),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("task 10")));
  options.batch = 0;
  EXPECT_THAT(client_->SubmitMany(specs, options),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

// With one batch in flight SubmitMany makes blocking calls: the same
// futures, and nothing after a refused batch is sent.
TEST_F(TaskTest, SubmitManyOneBatchAtATimeSendsNothingAfterARefusal) {
  std::vector<v1::TaskSpec> specs = EchoSpecs("many-serial");
  Client::ManyOptions options;
  options.batch = 40;
  options.in_flight = 1;
  absl::StatusOr<std::vector<TaskFuture>> futures =
      client_->SubmitMany(specs, options);
  ASSERT_THAT(futures, IsOk());
  for (const TaskFuture& f : *futures) {
    EXPECT_FALSE(f.submitted().id().empty());
    EXPECT_EQ(f.submitted().queue(), "many-serial");
  }
  ExpectEchoesInOrder(*futures);

  specs[130].set_kind("no.such.kind");  // in the fourth batch of 40
  EXPECT_THAT(
      client_->SubmitMany(specs, options),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("task 10")));
  v1::ListTasksRequest req;
  req.set_queue("many-serial");
  req.set_page_size(1000);
  absl::StatusOr<v1::ListTasksResponse> l = client_->List(req);
  ASSERT_THAT(l, IsOk());
  EXPECT_EQ(l->tasks_size(), 250 + 3 * 40);  // three batches, then none
}

// A brief SubmitBatch answer (what SubmitBatchAsync asks for) carries only
// what a future needs of an unfinished task; a full answer the whole task.
TEST_F(TaskTest, BriefBatchAnswerCarriesIdQueueKindAndState) {
  auto stub = v1::TaskService::NewStub(client_->channel());
  v1::SubmitBatchRequest req;
  for (int i = 0; i < 2; ++i) {
    v1::TaskSpec* spec = req.add_tasks();
    spec->set_kind("sleep");
    spec->set_queue("brief");
    spec->set_payload("300");
  }
  for (bool brief : {true, false}) {
    req.set_brief(brief);
    v1::SubmitBatchResponse resp;
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->SubmitBatch(&ctx, req, &resp).ok());
    ASSERT_EQ(resp.tasks_size(), 2);
    for (const v1::Task& t : resp.tasks()) {
      EXPECT_FALSE(t.id().empty());
      EXPECT_EQ(t.queue(), "brief");
      EXPECT_EQ(t.kind(), "sleep");
      EXPECT_FALSE(v1::IsTerminal(t.state()));
      EXPECT_EQ(t.payload().empty(), brief);
      EXPECT_EQ(t.has_created_at(), !brief);
    }
  }
  std::vector<v1::TaskSpec> specs(req.tasks().begin(), req.tasks().end());
  absl::StatusOr<std::vector<TaskFuture>> futures =
      client_->SubmitBatchAsync(specs).Wait();
  ASSERT_THAT(futures, IsOk());
  for (const TaskFuture& f : *futures) {
    absl::StatusOr<v1::Task> done = AwaitEnd(f, absl::Seconds(30));
    ASSERT_THAT(done, IsOk());
    EXPECT_EQ(done->result(), "300");
    EXPECT_EQ(done->payload(), "300");  // the final task is whole
  }
}

TEST_F(TaskTest, FinishedTaskIsPurgedAfterItsTtl) {
  // Run waits in the submitting call, so the result is read before the
  // 200 ms TTL can start (a separate wait could arrive after the purge on a
  // slow machine or under a sanitizer).
  v1::TaskSpec spec;
  spec.set_kind("echo");
  spec.set_payload("short-lived");
  *spec.mutable_result_ttl() = TimeUtil::MillisecondsToDuration(200);
  absl::StatusOr<v1::Task> t = client_->Run(spec);
  ASSERT_THAT(t, IsOk());
  EXPECT_EQ(t->state(), v1::SUCCEEDED);
  EXPECT_EQ(t->result(), "short-lived");
  // A finished task with the default TTL, to tell a purge by TTL from a
  // purge of everything.
  v1::TaskSpec kept;
  kept.set_kind("echo");
  absl::StatusOr<v1::Task> k = client_->Run(kept);
  ASSERT_THAT(k, IsOk());
  // The purge runs every 100 ms: the id must turn NOT_FOUND.
  absl::Time deadline = absl::Now() + absl::Seconds(30);
  absl::Status last;
  while (absl::Now() < deadline) {
    last = client_->Get(t->id()).status();
    if (last.code() == absl::StatusCode::kNotFound) break;
    ASSERT_THAT(last, IsOk());
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_THAT(last, StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(client_->Get(k->id()), IsOk());
}

TEST(PriorityTest, HigherPriorityRunsFirst) {
  // Strict order across workers needs one task per worker at a time: with
  // --prefetch, a task already queued in one worker may start before a
  // higher-priority one queued in another.
  auto p = ForqdProcess::Start({.workers = 2, .flags = {"--prefetch=0"}});
  ASSERT_THAT(p, IsOk());
  auto c = Client::Connect({.address = (*p)->grpc_address()});
  ASSERT_THAT(c, IsOk());
  Client* client_ = c->get();
  // Hold dispatch while queueing low before high, so the order cannot
  // depend on how fast the submits are.
  ASSERT_THAT(client_->Drain(absl::ZeroDuration()), IsOk());
  std::vector<TaskFuture> low, high;
  for (int i = 0; i < 3; ++i) {
    low.push_back(*client_->Submit("echo", "low", {.priority = 0}));
  }
  for (int i = 0; i < 3; ++i) {
    high.push_back(*client_->Submit("echo", "high", {.priority = 10}));
  }
  ASSERT_THAT(client_->Resume(), IsOk());
  absl::Time last_high = absl::InfinitePast();
  absl::Time first_low = absl::InfiniteFuture();
  for (auto& f : high) {
    auto t = AwaitEnd(f, absl::Seconds(30));
    ASSERT_THAT(t, IsOk());
    last_high = std::max(last_high, T(t->started_at()));
  }
  for (auto& f : low) {
    auto t = AwaitEnd(f, absl::Seconds(30));
    ASSERT_THAT(t, IsOk());
    first_low = std::min(first_low, T(t->started_at()));
  }
  EXPECT_LE(last_high, first_low);
}

// With the default --prefetch, a worker's queue holds only about 2 ms of
// a kind's work: long tasks submitted first wait in forqd's queue, not in
// the workers', so a later task of higher priority still goes first.
TEST(PriorityTest, HigherPriorityOvertakesQueuedLongTasks) {
  auto p = ForqdProcess::Start({.workers = 2});
  ASSERT_THAT(p, IsOk());
  auto c = Client::Connect({.address = (*p)->grpc_address()});
  ASSERT_THAT(c, IsOk());
  Client& client = **c;
  for (int i = 0; i < 2; ++i) {  // forqd learns how long a sleep runs
    absl::StatusOr<TaskFuture> f = client.Submit("sleep", "100");
    ASSERT_THAT(f, IsOk());
    ASSERT_THAT(AwaitEnd(*f, absl::Seconds(30)), IsOk());
  }
  std::vector<TaskFuture> low;
  for (int i = 0; i < 6; ++i) {
    absl::StatusOr<TaskFuture> f = client.Submit("sleep", "200");
    ASSERT_THAT(f, IsOk());
    low.push_back(*std::move(f));
  }
  absl::StatusOr<TaskFuture> high =
      client.Submit("echo", "high", {.priority = 10});
  ASSERT_THAT(high, IsOk());
  absl::StatusOr<v1::Task> h = AwaitEnd(*high, absl::Seconds(30));
  ASSERT_THAT(h, IsOk());
  std::vector<absl::Time> starts;
  for (const TaskFuture& f : low) {
    absl::StatusOr<v1::Task> t = AwaitEnd(f, absl::Seconds(30));
    ASSERT_THAT(t, IsOk());
    starts.push_back(T(t->started_at()));
  }
  std::sort(starts.begin(), starts.end());
  // Two sleeps were running when it came; it started before the others.
  EXPECT_LT(T(h->started_at()), starts[2]);
}

TEST_F(TaskTest, WatchStreamsStatesAndProgressThenEnds) {
  absl::StatusOr<TaskFuture> f = client_->Submit("sleep", "700");
  ASSERT_THAT(f, IsOk());
  auto stub = v1::TaskService::NewStub(client_->channel());
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  v1::WatchRequest req;
  req.set_task_id(f->id());
  auto reader = stub->Watch(&ctx, req);
  v1::TaskEvent e;
  std::vector<v1::TaskState> states;
  int progress_events = 0;
  while (reader->Read(&e)) {
    EXPECT_EQ(e.task().id(), f->id());
    if (e.type() == v1::TaskEvent::PROGRESS) {
      ++progress_events;
      EXPECT_GT(e.task().progress(), 0.0);
      EXPECT_EQ(e.task().progress_message(), "sleeping");
    } else {
      states.push_back(e.task().state());
    }
  }
  EXPECT_TRUE(reader->Finish().ok());
  // The stream ends by itself after the terminal state.
  ASSERT_FALSE(states.empty());
  EXPECT_EQ(states.back(), v1::SUCCEEDED);
  EXPECT_THAT(states, ::testing::Contains(v1::RUNNING));
  EXPECT_GE(progress_events, 1);
}

TEST_F(TaskTest, WatchNeedsExactlyOneOfTaskOrQueue) {
  auto stub = v1::TaskService::NewStub(client_->channel());
  grpc::ClientContext ctx;
  v1::WatchRequest req;
  auto reader = stub->Watch(&ctx, req);
  v1::TaskEvent e;
  EXPECT_FALSE(reader->Read(&e));
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

// A separate forqd: a queue limit of 3.
TEST(QueueLimitTest, FullQueueIsResourceExhausted) {
  auto p = ForqdProcess::Start({.workers = 1, .flags = {"--max_queued=3"}});
  ASSERT_THAT(p, IsOk());
  auto c = Client::Connect({.address = (*p)->grpc_address()});
  ASSERT_THAT(c, IsOk());
  SubmitOptions o{.queue = "small", .delay = absl::Hours(1)};
  for (int i = 0; i < 3; ++i) ASSERT_THAT((*c)->Submit("echo", "x", o), IsOk());
  EXPECT_THAT((*c)->Submit("echo", "x", o),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       HasSubstr("queue 'small' is full")));
  // Other queues are not affected.
  EXPECT_THAT((*c)->Submit("echo", "x", {.queue = "other"}), IsOk());
}

// A Submit answered with a finished task (its idempotency key matched) is
// already complete: its future needs no call, even with forqd gone.
TEST(TaskFutureTest, FinishedTaskInTheSubmitAnswerNeedsNoCall) {
  auto p = ForqdProcess::Start({.workers = 2});
  ASSERT_THAT(p, IsOk());
  auto c = Client::Connect({.address = (*p)->grpc_address()});
  ASSERT_THAT(c, IsOk());
  const SubmitOptions o{.idempotency_key = "finished-once"};
  {
    auto first = (*c)->Submit("echo", "kept", o);
    ASSERT_THAT(first, IsOk());
    ASSERT_THAT(AwaitResult(*first, absl::Seconds(30)), IsOk());
  }  // its streamed result goes with it
  auto again = (*c)->Submit("echo", "ignored", o);
  ASSERT_THAT(again, IsOk());
  ASSERT_TRUE(again->existing());
  ASSERT_EQ(again->submitted().state(), v1::SUCCEEDED);
  ASSERT_THAT((*p)->Kill(SIGKILL), IsOk());
  EXPECT_THAT(again->Ready(), IsOk());
  absl::StatusOr<std::string> got = again->Get(absl::Seconds(5));
  ASSERT_THAT(got, IsOk());
  EXPECT_EQ(*got, "kept");
}

// kill -9 of forqd while tasks run: after a restart they run again
// (attempt 2) and succeed; finished results stay readable.
// With --running_write_delay=0 the RUNNING state is stored when an attempt
// starts, so every attempt running at the kill is counted.
TEST(RecoveryTest, TasksRunningAtKillRunAgainAfterRestart) {
  auto p =
      ForqdProcess::Start({.workers = 2, .flags = {"--running_write_delay=0"}});
  ASSERT_THAT(p, IsOk());
  ForqdProcess& forqd = **p;
  std::string done_id;
  std::vector<std::string> running;
  {
    auto c = Client::Connect({.address = forqd.grpc_address()});
    ASSERT_THAT(c, IsOk());
    auto done = (*c)->Submit("echo", "kept");
    ASSERT_THAT(done, IsOk());
    ASSERT_THAT(AwaitResult(*done, absl::Seconds(30)), IsOk());
    done_id = done->id();
    for (int i = 0; i < 2; ++i) {
      auto f = (*c)->Submit("sleep", "1500");
      ASSERT_THAT(f, IsOk());
      running.push_back(f->id());
    }
    for (const std::string& id : running) {
      absl::Time deadline = absl::Now() + absl::Seconds(20);
      while (absl::Now() < deadline) {
        auto t = (*c)->Get(id);
        ASSERT_THAT(t, IsOk());
        if (t->state() == v1::RUNNING) break;
        (void)(*c)->Wait(id, absl::Milliseconds(20));
      }
    }
  }
  ASSERT_THAT(forqd.Kill(SIGKILL), IsOk());
  ASSERT_THAT(forqd.Restart(), IsOk());
  auto c = Client::Connect({.address = forqd.grpc_address()});
  ASSERT_THAT(c, IsOk());
  auto kept = (*c)->Get(done_id);
  ASSERT_THAT(kept, IsOk());
  EXPECT_EQ(kept->result(), "kept");
  for (const std::string& id : running) {
    auto w = AwaitWait(**c, id, absl::Seconds(30));
    ASSERT_THAT(w, IsOk());
    EXPECT_EQ(w->task().state(), v1::SUCCEEDED) << forqd.LogTail();
    EXPECT_EQ(w->task().attempt(), 2);
  }
}

}  // namespace
}  // namespace forq
