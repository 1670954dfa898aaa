// The limits a client meets on a real forqd, each set by its own flag: the
// per-client Submit rate (RESOURCE_EXHAUSTED with RetryInfo / 429 with
// Retry-After), gRPC concurrent streams per connection, idle connections and
// the keepalive ping policy, slow HTTP request headers, and tokens reloaded
// on SIGHUP.
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "boost/asio/ip/tcp.hpp"
#include "boost/asio/read.hpp"
#include "boost/asio/write.hpp"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"

#include "forq/v1/pool.grpc.pb.h"
#include "forq/v1/task.grpc.pb.h"
#include "server/http/http_test_client.h"
#include "tests/testing/forqd_process.h"
#include "tests/testing/run_budget.h"
#include "tests/testing/run_timer.h"

namespace forq {
namespace {

using ::forq::server::testing::HttpCall;
using ::forq::testing::ForqdProcess;
using ::forq::testing::RunBudget;
using ::forq::testing::RunWatchdog;
using ::testing::HasSubstr;

constexpr char kTokenA[] = "token-a-0123456789abcdef";
constexpr char kTokenB[] = "token-b-0123456789abcdef";

std::unique_ptr<ForqdProcess> Start(std::vector<std::string> flags) {
  forq::testing::ForqdOptions o;
  o.workers = 1;
  o.flags = std::move(flags);
  o.flags.push_back("--durability=none");
  auto p = ForqdProcess::Start(o);
  EXPECT_TRUE(p.ok()) << p.status();
  return p.ok() ? *std::move(p) : nullptr;
}

std::shared_ptr<grpc::Channel> Channel(const ForqdProcess& forqd,
                                       grpc::ChannelArguments args = {}) {
  // A distinct argument gives each test channel its own connection.
  static int n = 0;
  args.SetInt("forq.test.channel", ++n);
  return grpc::CreateCustomChannel(forqd.grpc_address(),
                                   grpc::InsecureChannelCredentials(), args);
}

std::chrono::system_clock::time_point In(std::chrono::milliseconds d) {
  return std::chrono::system_clock::now() + d;
}

// Whether `channel` leaves READY within `budget` of time in which the test
// ran (RunBudget: a machine-wide stop of the test and forqd does not count).
bool LeavesReady(grpc::Channel& channel, absl::Duration budget) {
  RunBudget run(budget);
  while (channel.GetState(false) == GRPC_CHANNEL_READY) {
    std::optional<absl::Time> until = run.NextSlice();
    if (!until) return false;
    channel.WaitForStateChange(GRPC_CHANNEL_READY, absl::ToChronoTime(*until));
  }
  return true;
}

// Reads `reader` (of the call `ctx`) to its end and returns its status. A
// stream still open after `budget` of time in which the test ran is
// cancelled first (CANCELLED).
grpc::Status ReadToEnd(grpc::ClientContext& ctx,
                       grpc::ClientReader<v1::TaskEvent>& reader,
                       absl::Duration budget) {
  RunWatchdog watchdog(budget, [&ctx] { ctx.TryCancel(); });
  v1::TaskEvent ev;
  while (reader.Read(&ev)) {
  }
  return reader.Finish();
}

grpc::Status Submit(v1::TaskService::Stub& stub, int tasks,
                    const std::string& token = "") {
  grpc::ClientContext ctx;
  ctx.set_deadline(In(std::chrono::seconds(20)));
  if (!token.empty()) ctx.AddMetadata("authorization", "Bearer " + token);
  if (tasks == 1) {
    v1::SubmitRequest req;
    req.mutable_task()->set_kind("echo");
    v1::SubmitResponse resp;
    return stub.Submit(&ctx, req, &resp);
  }
  v1::SubmitBatchRequest req;
  for (int i = 0; i < tasks; ++i) req.add_tasks()->set_kind("echo");
  v1::SubmitBatchResponse resp;
  return stub.SubmitBatch(&ctx, req, &resp);
}

TEST(LimitsTest, SubmitRateIsLimitedPerClientWithRetryInfo) {
  // 3 tasks at once, then 1 every 10 s: the test never waits for a refill.
  auto forqd = Start({"--submit_rate=0.1", "--submit_burst=3"});
  ASSERT_NE(forqd, nullptr);
  auto stub = v1::TaskService::NewStub(Channel(*forqd));
  for (int i = 0; i < 3; ++i) {
    grpc::Status s = Submit(*stub, 1);
    ASSERT_TRUE(s.ok()) << i << ": " << s.error_message();
  }
  grpc::Status s = Submit(*stub, 1);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(s.error_message(), HasSubstr("submit rate limit"));
  // google.rpc.Status with a RetryInfo detail.
  EXPECT_THAT(s.error_details(), HasSubstr("google.rpc.RetryInfo"));
  EXPECT_EQ(Submit(*stub, 5).error_code(),
            grpc::StatusCode::RESOURCE_EXHAUSTED);

  // The REST gateway calls gRPC from 127.0.0.1 too: same client, 429.
  auto r = HttpCall(forqd->http_address(), "POST", "/v1/tasks",
                    R"({"kind":"echo"})");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 429) << r->body;
  int retry_after = 0;
  EXPECT_TRUE(absl::SimpleAtoi(r->header("Retry-After"), &retry_after))
      << r->header("Retry-After");
  EXPECT_GE(retry_after, 1);
  EXPECT_LE(retry_after, 10);
  EXPECT_THAT(r->body, HasSubstr("submit rate limit"));
  EXPECT_THAT(r->body, HasSubstr("RetryInfo"));

  // Reads are not limited.
  grpc::ClientContext ctx;
  v1::ListTasksRequest list;
  v1::ListTasksResponse tasks;
  ASSERT_TRUE(stub->List(&ctx, list, &tasks).ok());
  EXPECT_EQ(tasks.tasks_size(), 3);
}

TEST(LimitsTest, BatchLargerThanTheBurstIsAdmittedOnceThenWaits) {
  auto forqd = Start({"--submit_rate=0.1", "--submit_burst=2"});
  ASSERT_NE(forqd, nullptr);
  auto stub = v1::TaskService::NewStub(Channel(*forqd));
  grpc::Status s = Submit(*stub, 10);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(Submit(*stub, 1).error_code(),
            grpc::StatusCode::RESOURCE_EXHAUSTED);
}

TEST(LimitsTest, EachTokenHasItsOwnSubmitBucket) {
  const std::string dir = forq::testing::MakeTempDir("forq-limits");
  const std::string tokens = dir + "/tokens";
  std::ofstream(tokens) << kTokenA << " submit\n" << kTokenB << " submit\n";
  chmod(tokens.c_str(), 0600);
  auto forqd = Start({"--auth_tokens_file=" + tokens, "--submit_rate=0.1",
                      "--submit_burst=2"});
  ASSERT_NE(forqd, nullptr);
  auto stub = v1::TaskService::NewStub(Channel(*forqd));
  ASSERT_TRUE(Submit(*stub, 2, kTokenA).ok());
  EXPECT_EQ(Submit(*stub, 1, kTokenA).error_code(),
            grpc::StatusCode::RESOURCE_EXHAUSTED);
  // Same connection and address, other token: not limited by A's use.
  grpc::Status b = Submit(*stub, 1, kTokenB);
  EXPECT_TRUE(b.ok()) << b.error_message();
}

TEST(LimitsTest, ConcurrentStreamsPerConnectionAreCapped) {
  auto forqd = Start({"--grpc_max_concurrent_streams=2"});
  ASSERT_NE(forqd, nullptr);
  auto channel = Channel(*forqd);
  auto stub = v1::TaskService::NewStub(channel);
  auto pool = v1::PoolService::NewStub(channel);
  {
    // Connects and learns the server's SETTINGS.
    grpc::ClientContext ctx;
    v1::GetPoolRequest req;
    v1::PoolStatus resp;
    ASSERT_TRUE(pool->GetPool(&ctx, req, &resp).ok());
  }
  // Two open Watch streams take both slots of this connection.
  grpc::ClientContext w1, w2;
  v1::WatchRequest watch;
  watch.set_queue("*");
  auto r1 = stub->Watch(&w1, watch);
  auto r2 = stub->Watch(&w2, watch);
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(In(std::chrono::milliseconds(1500)));
    v1::GetPoolRequest req;
    v1::PoolStatus resp;
    EXPECT_EQ(pool->GetPool(&ctx, req, &resp).error_code(),
              grpc::StatusCode::DEADLINE_EXCEEDED);
  }
  // Another connection is not affected.
  {
    auto other = v1::PoolService::NewStub(Channel(*forqd));
    grpc::ClientContext ctx;
    ctx.set_deadline(In(std::chrono::seconds(10)));
    v1::GetPoolRequest req;
    v1::PoolStatus resp;
    EXPECT_TRUE(other->GetPool(&ctx, req, &resp).ok());
  }
  // Ending one stream frees a slot.
  w1.TryCancel();
  v1::TaskEvent ev;
  while (r1->Read(&ev)) {
  }
  EXPECT_EQ(r1->Finish().error_code(), grpc::StatusCode::CANCELLED);
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(In(std::chrono::seconds(10)));
    v1::GetPoolRequest req;
    v1::PoolStatus resp;
    grpc::Status s = pool->GetPool(&ctx, req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
  }
  w2.TryCancel();
  while (r2->Read(&ev)) {
  }
  r2->Finish();
}

TEST(LimitsTest, IdleGrpcConnectionsAreClosed) {
  auto forqd = Start({"--grpc_max_connection_idle=500ms"});
  ASSERT_NE(forqd, nullptr);
  auto channel = Channel(*forqd);
  auto pool = v1::PoolService::NewStub(channel);
  grpc::ClientContext ctx;
  v1::GetPoolRequest req;
  v1::PoolStatus resp;
  ASSERT_TRUE(pool->GetPool(&ctx, req, &resp).ok());
  // forqd sends GOAWAY after 500 ms without calls: the channel leaves READY
  // (a client alone keeps an idle connection for 30 minutes). It may have
  // left READY already, if this thread was slow to get here.
  EXPECT_TRUE(LeavesReady(*channel, absl::Seconds(10)));
}

TEST(LimitsTest, ClientsPingingTooOftenAreDisconnected) {
  auto forqd = Start({"--grpc_min_ping_interval=10s"});
  ASSERT_NE(forqd, nullptr);
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 100);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  auto stub = v1::TaskService::NewStub(Channel(*forqd, args));
  // A quiet Watch stream keeps the connection in use; the pings (one a
  // second: gRPC's floor) break it: at the third ping closer than 10 s to
  // the one before, forqd sends GOAWAY "too_many_pings" and closes the
  // connection (after ~4 s).
  grpc::ClientContext ctx;
  v1::WatchRequest watch;
  watch.set_queue("*");
  auto reader = stub->Watch(&ctx, watch);
  grpc::Status s = ReadToEnd(ctx, *reader, absl::Seconds(30));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
  // gRPC's words for that GOAWAY: not a lost connection or a keepalive
  // timeout, which are UNAVAILABLE too.
  EXPECT_THAT(s.error_message(), HasSubstr("Too many pings"));
}

TEST(LimitsTest, SlowHttpRequestHeadersAreCutOff) {
  auto forqd = Start({"--http_idle_timeout=1s"});
  ASSERT_NE(forqd, nullptr);
  namespace net = boost::asio;
  net::io_context ioc;
  net::ip::tcp::socket sock(ioc);
  // Before the connection: forqd's second starts after this.
  const absl::Time t0 = absl::Now();
  sock.connect(
      net::ip::tcp::endpoint(net::ip::make_address("127.0.0.1"),
                             static_cast<uint16_t>(forqd->http_port())));
  const std::string partial = "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ";
  net::write(sock, net::buffer(partial));
  // forqd closes the connection; within 10 s of time the test ran.
  RunBudget run(absl::Seconds(10));
  bool closed = false;
  while (!closed) {
    std::optional<absl::Time> until = run.NextSlice();
    if (!until) break;
    pollfd pfd{sock.native_handle(), POLLIN, 0};
    const int64_t ms = absl::ToInt64Milliseconds(*until - absl::Now());
    closed = poll(&pfd, 1, static_cast<int>(std::max<int64_t>(ms, 0))) > 0;
  }
  ASSERT_TRUE(closed) << "forqd kept the incomplete request open";
  const absl::Duration waited = absl::Now() - t0;
  char buf[256];
  boost::system::error_code ec;
  sock.read_some(net::buffer(buf), ec);
  EXPECT_TRUE(ec == net::error::eof || ec == net::error::connection_reset)
      << ec.message();
  EXPECT_GE(waited, absl::Milliseconds(800));
  // Normal requests are still served.
  auto r = HttpCall(forqd->http_address(), "GET", "/healthz");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);
}

// Tokens are re-read on SIGHUP, like the TLS files; a bad file keeps the
// old ones.
TEST(LimitsTest, TokensAreReloadedOnSighup) {
  const std::string dir = forq::testing::MakeTempDir("forq-limits");
  const std::string tokens = dir + "/tokens";
  auto write = [&](const std::string& text) {
    const std::string tmp = tokens + ".tmp";
    std::ofstream(tmp) << text;
    chmod(tmp.c_str(), 0600);
    ASSERT_EQ(rename(tmp.c_str(), tokens.c_str()), 0);
  };
  write(absl::StrCat(kTokenA, " admin\n"));
  auto forqd = Start({"--auth_tokens_file=" + tokens});
  ASSERT_NE(forqd, nullptr);
  auto pool = v1::PoolService::NewStub(Channel(*forqd));
  auto get_pool = [&](const std::string& token) {
    grpc::ClientContext ctx;
    ctx.set_deadline(In(std::chrono::seconds(10)));
    ctx.AddMetadata("authorization", "Bearer " + token);
    v1::GetPoolRequest req;
    v1::PoolStatus resp;
    return pool->GetPool(&ctx, req, &resp).error_code();
  };
  auto http_code = [&](const std::string& token) {
    auto r = HttpCall(forqd->http_address(), "GET", "/v1/workers", "",
                      {{"Authorization", "Bearer " + token}});
    return r.ok() ? r->status : -1;
  };
  ASSERT_EQ(get_pool(kTokenA), grpc::StatusCode::OK);
  ASSERT_EQ(get_pool(kTokenB), grpc::StatusCode::UNAUTHENTICATED);

  write(absl::StrCat(kTokenB, " read\n"));
  ASSERT_EQ(kill(forqd->pid(), SIGHUP), 0);
  // The reload happens on forqd's signal thread: await its effect.
  grpc::StatusCode b = grpc::StatusCode::UNAUTHENTICATED;
  for (int i = 0; i < 100 && b != grpc::StatusCode::OK; ++i) {
    b = get_pool(kTokenB);
    if (b != grpc::StatusCode::OK) absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_EQ(b, grpc::StatusCode::OK);
  EXPECT_EQ(get_pool(kTokenA), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(http_code(kTokenB), 200);
  EXPECT_EQ(http_code(kTokenA), 401);

  // A broken file is refused and logged; B keeps working.
  write("not a valid line at all\n");
  ASSERT_EQ(kill(forqd->pid(), SIGHUP), 0);
  bool logged = false;
  for (int i = 0; i < 100 && !logged; ++i) {
    logged = absl::StrContains(forqd->LogTail(20), "tokens not reloaded");
    if (!logged) absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_TRUE(logged) << forqd->LogTail(20);
  EXPECT_EQ(get_pool(kTokenB), grpc::StatusCode::OK);
  EXPECT_EQ(get_pool(kTokenA), grpc::StatusCode::UNAUTHENTICATED);
}

// A Watch whose client does not read holds at most 4 MiB of events in
// forqd (events carry whole tasks), then ends with RESOURCE_EXHAUSTED.
TEST(LimitsTest, AnUnreadWatchEndsAtItsBacklogBound) {
  auto forqd = Start({});
  ASSERT_NE(forqd, nullptr);
  auto channel = Channel(*forqd);
  auto stub = v1::TaskService::NewStub(channel);
  grpc::ClientContext wctx;
  wctx.set_deadline(In(std::chrono::seconds(120)));
  v1::WatchRequest watch;
  watch.set_queue("*");
  auto reader = stub->Watch(&wctx, watch);
  // ~100 MB of events (3 per task, each with a 128 KiB payload).
  auto other = v1::TaskService::NewStub(Channel(*forqd));
  for (int b = 0; b < 25; ++b) {
    grpc::ClientContext ctx;
    ctx.set_deadline(In(std::chrono::seconds(60)));
    v1::SubmitBatchRequest req;
    for (int i = 0; i < 10; ++i) {
      v1::TaskSpec* t = req.add_tasks();
      t->set_kind("echo");
      t->set_payload(std::string(128 << 10, 'p'));
    }
    v1::SubmitBatchResponse resp;
    grpc::Status s = other->SubmitBatch(&ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  v1::TaskEvent ev;
  int events = 0;
  while (reader->Read(&ev)) ++events;
  grpc::Status s = reader->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << s.error_message() << " after " << events << " events";
  EXPECT_THAT(s.error_message(), HasSubstr("event backlog full"));
  EXPECT_LT(events, 750);
}

}  // namespace
}  // namespace forq
