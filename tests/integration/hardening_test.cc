// Defects found by treating a real forqd as an attacker or a careless user
// would: deep JSON, unclear errors at the REST edge, file modes of the data
// dir, and descriptor exhaustion by idle connections.
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <array>
#include <chrono>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "boost/asio/connect.hpp"
#include "boost/asio/io_context.hpp"
#include "boost/asio/ip/tcp.hpp"
#include "gmock/gmock.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"

#include "forq/client.h"
#include "forq/v1/manager.grpc.pb.h"
#include "forq/v1/task.grpc.pb.h"
#include "server/http/http_test_client.h"
#include "tests/testing/await_task.h"
#include "tests/testing/forqd_process.h"

namespace forq {
namespace {

using ::forq::server::testing::HttpCall;
using ::forq::server::testing::HttpRaw;
using ::forq::testing::AwaitResult;
using ::forq::testing::ForqdProcess;
using ::testing::HasSubstr;

std::string Deep(int depth) {
  return absl::StrCat(R"({"kind":"echo","payload_text":)",
                      std::string(depth, '['), std::string(depth, ']'), "}");
}

std::unique_ptr<ForqdProcess> Start(std::vector<std::string> flags = {},
                                    std::string data_dir = "") {
  forq::testing::ForqdOptions o;
  o.workers = 1;
  o.flags = std::move(flags);
  o.data_dir = std::move(data_dir);
  auto p = ForqdProcess::Start(o);
  EXPECT_TRUE(p.ok()) << p.status();
  return p.ok() ? *std::move(p) : nullptr;
}

// Defect 1: a 40 KB body 20,000 levels deep cost seconds to minutes of CPU
// in protobuf's parser, blocked /healthz, and kept SIGTERM from finishing.
TEST(HardeningTest, DeeplyNestedJsonIsRejectedAtOnceAndShutdownStaysPrompt) {
  auto forqd = Start();
  ASSERT_NE(forqd, nullptr);
  const auto t0 = std::chrono::steady_clock::now();
  auto r = HttpCall(forqd->http_address(), "POST", "/v1/tasks", Deep(20000));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 400) << r->body;
  EXPECT_THAT(r->body, HasSubstr("nested deeper than"));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(2));

  // Several in flight (not read back), then SIGTERM: forqd exits promptly.
  std::vector<std::thread> senders;
  senders.reserve(4);
  for (int i = 0; i < 4; ++i) {
    senders.emplace_back([&] {
      (void)HttpCall(
          forqd->http_address(), "POST", "/v1/manager/dicts/d:set",
          absl::StrCat(R"({"key":"k","value_text":)", std::string(100000, '['),
                       std::string(100000, ']'), "}"),
          {}, std::chrono::seconds(30));
    });
  }
  auto health = HttpCall(forqd->http_address(), "GET", "/healthz", "", {},
                         std::chrono::seconds(5));
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(health->status, 200);
  for (auto& t : senders) t.join();
  const auto t1 = std::chrono::steady_clock::now();
  auto st = forqd->Stop(absl::Seconds(30));
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_TRUE(WIFEXITED(*st));
  EXPECT_LT(std::chrono::steady_clock::now() - t1, std::chrono::seconds(25));
}

// Defect 8 (REST edge): clear 400s instead of silence or a wrong code.
TEST(HardeningTest, BadRequestsGetClearErrors) {
  auto forqd = Start();
  ASSERT_NE(forqd, nullptr);
  auto r = HttpCall(forqd->http_address(), "GET", "/v1/tasks?state=99");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 400) << r->body;
  EXPECT_THAT(r->body, HasSubstr("99 is not a TaskState"));

  r = HttpCall(forqd->http_address(), "GET",
               "/v1/tasks/" + std::string(size_t{10} * 1024, 'a'));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 400) << r->body.substr(0, 300);

  // HTTP/1.0 POST without Content-Length: the body is empty by definition;
  // forqd answers instead of waiting.
  const std::string raw =
      HttpRaw(forqd->http_address(),
              "POST /v1/tasks HTTP/1.0\r\nHost: x\r\nContent-Type: "
              "application/json\r\n\r\n",
              std::chrono::seconds(10));
  EXPECT_THAT(raw, HasSubstr("HTTP/1.1 400")) << raw;
}

// Defect 9: the data dir is the owner's alone, even if it existed as 0755.
TEST(HardeningTest, DataDirIsPrivate) {
  const std::string dir = forq::testing::MakeTempDir("forq-perm");
  ASSERT_EQ(mkdir((dir + "/data").c_str(), 0755), 0);
  chmod((dir + "/data").c_str(), 0755);
  auto forqd = Start({}, dir);
  ASSERT_NE(forqd, nullptr);
  ClientOptions o;
  o.address = forqd->grpc_address();
  auto c = Client::Connect(o);
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE((*c)->Submit("echo", "x").ok());
  struct stat st;
  ASSERT_EQ(stat((dir + "/data").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  int files = 0;
  for (const char* f : {"forq.db", "forq.db-wal", "forq.db-shm"}) {
    if (stat((dir + "/data/" + f).c_str(), &st) != 0) continue;
    ++files;
    EXPECT_EQ(st.st_mode & 0077, 0u)
        << f << " mode " << std::oct << (st.st_mode & 0777);
  }
  EXPECT_GE(files, 1);
}

// Defect 5: with the common soft limit of 1024, ~1,000 idle HTTP
// connections made forqd refuse every new connection on both ports.
TEST(HardeningTest, IdleConnectionsDoNotExhaustDescriptors) {
  rlimit lim;
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &lim), 0);
  if (lim.rlim_max < 4096) GTEST_SKIP() << "hard fd limit too low here";
  const rlimit saved = lim;
  lim.rlim_cur = 1024;  // forqd inherits this soft limit
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &lim), 0);
  auto forqd = Start({"--http_max_connections_per_client=5000"});
  lim.rlim_cur = std::min<rlim_t>(lim.rlim_max, 8192);
  setrlimit(RLIMIT_NOFILE, &lim);
  ASSERT_NE(forqd, nullptr);

  namespace net = boost::asio;
  net::io_context ioc;
  std::vector<std::unique_ptr<net::ip::tcp::socket>> idle;
  net::ip::tcp::endpoint ep(net::ip::make_address("127.0.0.1"),
                            static_cast<uint16_t>(forqd->http_port()));
  for (int i = 0; i < 1100; ++i) {
    auto s = std::make_unique<net::ip::tcp::socket>(ioc);
    boost::system::error_code ec;
    s->connect(ep, ec);
    ASSERT_FALSE(ec) << i << ": " << ec.message();
    idle.push_back(std::move(s));
  }
  auto r = HttpCall(forqd->http_address(), "GET", "/healthz", "", {},
                    std::chrono::seconds(10));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);
  ClientOptions o;
  o.address = forqd->grpc_address();
  auto c = Client::Connect(o);
  ASSERT_TRUE(c.ok()) << c.status();
  auto f = (*c)->Submit("echo", "still serving");
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(*AwaitResult(*f, absl::Seconds(30)), "still serving");
  std::ifstream limits(absl::StrCat("/proc/", forqd->pid(), "/limits"));
  std::string line;
  while (std::getline(limits, line)) {
    if (absl::StartsWith(line, "Max open files")) {
      EXPECT_THAT(line, ::testing::Not(HasSubstr(" 1024 "))) << line;
    }
  }
  EXPECT_THAT(forqd->LogTail(200),
              ::testing::Not(HasSubstr("Too many open files")));
  idle.clear();
  setrlimit(RLIMIT_NOFILE, &saved);
}

// Connection caps answer with a clear error instead of silence.
TEST(HardeningTest, ConnectionsBeyondThePerClientCapGetAClearError) {
  auto forqd = Start({"--http_max_connections_per_client=20"});
  ASSERT_NE(forqd, nullptr);
  namespace net = boost::asio;
  net::io_context ioc;
  std::vector<std::unique_ptr<net::ip::tcp::socket>> held;
  net::ip::tcp::endpoint ep(net::ip::make_address("127.0.0.1"),
                            static_cast<uint16_t>(forqd->http_port()));
  for (int i = 0; i < 20; ++i) {
    auto s = std::make_unique<net::ip::tcp::socket>(ioc);
    s->connect(ep);
    held.push_back(std::move(s));
  }
  // The gateway counts a connection once it has accepted it; await that.
  std::string raw;
  for (int i = 0; i < 50; ++i) {
    raw = HttpRaw(forqd->http_address(),
                  "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: "
                  "close\r\n\r\n");
    if (absl::StrContains(raw, "503")) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_THAT(raw, HasSubstr("HTTP/1.1 503"));
  EXPECT_THAT(raw, HasSubstr("too many HTTP connections from 127.0.0.1"));
  held.clear();
  // Capacity returns once they close.
  absl::StatusOr<server::testing::HttpResponse> r;
  for (int i = 0; i < 50; ++i) {
    r = HttpCall(forqd->http_address(), "GET", "/healthz");
    if (r.ok() && r->status == 200) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 200);
}

// Defect 8, gRPC side: what REST refuses with 400, gRPC refuses too, naming
// the field (before: a 10 KB id answered NOT_FOUND, state=99 an empty list,
// a Duration of {1s, -5ns} was accepted, Watch of "" watched nothing).
TEST(HardeningTest, GrpcRequestsWithInvalidFieldsGetInvalidArgument) {
  auto forqd = Start({"--durability=none"});
  ASSERT_NE(forqd, nullptr);
  auto channel = grpc::CreateChannel(forqd->grpc_address(),
                                     grpc::InsecureChannelCredentials());
  auto tasks = v1::TaskService::NewStub(channel);
  auto deadline = [] {
    return std::chrono::system_clock::now() + std::chrono::seconds(20);
  };
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(deadline());
    v1::GetTaskRequest req;
    req.set_id(std::string(10240, 'x'));
    v1::Task resp;
    grpc::Status s = tasks->Get(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(s.error_message(), HasSubstr("'id' is 10240 bytes"));
  }
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(deadline());
    v1::ListTasksRequest req;
    req.set_state(static_cast<v1::TaskState>(99));
    v1::ListTasksResponse resp;
    grpc::Status s = tasks->List(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(s.error_message(), HasSubstr("'state': 99 is not a TaskState"));
  }
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(deadline());
    v1::SubmitRequest req;
    req.mutable_task()->set_kind("echo");
    req.mutable_task()->mutable_timeout()->set_seconds(1);
    req.mutable_task()->mutable_timeout()->set_nanos(-5);
    v1::SubmitResponse resp;
    grpc::Status s = tasks->Submit(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(s.error_message(),
                HasSubstr("'task.timeout' is not a valid Duration"));
  }
  {
    // A Map header with the same bad Duration ends the stream at once.
    grpc::ClientContext ctx;
    ctx.set_deadline(deadline());
    auto stream = tasks->Map(&ctx);
    v1::MapRequest header;
    header.mutable_header()->set_kind("echo");
    header.mutable_header()->mutable_timeout()->set_seconds(-1);
    header.mutable_header()->mutable_timeout()->set_nanos(5);
    stream->Write(header);
    stream->WritesDone();
    v1::MapResult r;
    while (stream->Read(&r)) {
    }
    grpc::Status s = stream->Finish();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(s.error_message(), HasSubstr("not a valid Duration"));
  }
  {
    auto manager = v1::ManagerService::NewStub(channel);
    grpc::ClientContext ctx;
    ctx.set_deadline(deadline());
    v1::ManagerWatchRequest req;  // name ""
    auto reader = manager->Watch(&ctx, req);
    v1::ManagerEvent ev;
    EXPECT_FALSE(reader->Read(&ev));
    grpc::Status s = reader->Finish();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(s.error_message(), HasSubstr("must be named"));
  }
  // Valid requests still work.
  grpc::ClientContext ctx;
  ctx.set_deadline(deadline());
  v1::SubmitRequest req;
  req.mutable_task()->set_kind("echo");
  req.mutable_task()->mutable_timeout()->set_seconds(10);
  req.mutable_task()->mutable_timeout()->set_nanos(5);
  v1::SubmitResponse resp;
  grpc::Status s = tasks->Submit(&ctx, req, &resp);
  EXPECT_TRUE(s.ok()) << s.error_message();
}

// Defect 8: a Map stream with one message that does not parse answered OK
// and silently dropped the inputs after it.
TEST(HardeningTest, MapStreamWithAGarbageMessageFailsClearly) {
  auto forqd = Start({"--durability=none"});
  ASSERT_NE(forqd, nullptr);
  auto channel = grpc::CreateChannel(forqd->grpc_address(),
                                     grpc::InsecureChannelCredentials());
  auto bytes = [](const std::string& s) {
    grpc::Slice slice(s);
    return grpc::ByteBuffer(&slice, 1);
  };
  v1::MapRequest header;
  header.mutable_header()->set_kind("echo");
  v1::MapRequest input;
  input.mutable_input()->set_payload("after the garbage");

  grpc::GenericStub stub(channel);
  grpc::CompletionQueue cq;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  auto call = stub.PrepareCall(&ctx, "/forq.v1.TaskService/Map", &cq);
  // Completion-queue tags: the addresses of the elements of `tags`.
  std::array<char, 8> tags{};
  auto tag = [&tags](int t) -> void* { return &tags[t]; };
  auto step = [&](int t) {
    void* got = nullptr;
    bool ok = false;
    EXPECT_TRUE(cq.Next(&got, &ok));
    EXPECT_EQ(got, tag(t));
    return ok;
  };
  call->StartCall(tag(1));
  ASSERT_TRUE(step(1));
  call->Write(bytes(header.SerializeAsString()), tag(2));
  step(2);
  call->Write(bytes("\xff\xff\xff\xff garbage"), tag(3));
  step(3);
  call->Write(bytes(input.SerializeAsString()), tag(4));
  step(4);
  call->WritesDone(tag(5));
  step(5);
  grpc::ByteBuffer result;
  int results = 0;
  while (true) {
    call->Read(&result, tag(6));
    if (!step(6)) break;
    ++results;
  }
  grpc::Status status;
  call->Finish(&status, tag(7));
  step(7);
  EXPECT_EQ(results, 0);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
      << status.error_message();
  EXPECT_THAT(status.error_message(),
              HasSubstr("Map message 2 is not a forq.v1.MapRequest"));
  cq.Shutdown();
  void* got;
  bool ok;
  while (cq.Next(&got, &ok)) {
  }
  // Well-formed streams still work through the raw handler.
  ClientOptions o;
  o.address = forqd->grpc_address();
  auto c = Client::Connect(o);
  ASSERT_TRUE(c.ok()) << c.status();
  auto f = (*c)->Submit("echo", "still serving");
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(*AwaitResult(*f, absl::Seconds(30)), "still serving");
}

}  // namespace
}  // namespace forq
