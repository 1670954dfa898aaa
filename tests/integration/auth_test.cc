// Token roles against a real forqd: every RPC family over gRPC and REST with
// no token, an unknown token, and each role; rejected calls never reach a
// handler; /healthz and /readyz stay open; forqd refuses to expose an
// unprotected port.
#include <sys/stat.h>

#include <fstream>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"

#include "forq/client.h"
#include "forq/v1/manager.grpc.pb.h"
#include "forq/v1/pool.grpc.pb.h"
#include "forq/v1/task.grpc.pb.h"
#include "server/http/http_test_client.h"
#include "tests/testing/await_task.h"
#include "tests/testing/forqd_process.h"

namespace forq {
namespace {

using ::forq::server::testing::HttpCall;
using ::forq::testing::AwaitResult;
using ::forq::testing::ForqdProcess;
using ::forq::testing::RunCommand;
using ::testing::HasSubstr;

constexpr char kAdmin[] = "admin-0123456789abcdef";
constexpr char kSubmit[] = "submit-0123456789abcdef";
constexpr char kRead[] = "read-0123456789abcdef";

enum class Need { kOpen, kRead, kSubmit, kAdmin };

struct Caller {
  std::string name;
  std::string token;  // empty: none sent
  int rank;           // 0 none/unknown, 1 read, 2 submit, 3 admin
};

const std::vector<Caller>& Callers() {
  static const auto* c = new std::vector<Caller>{
      {"none", "", 0},      {"unknown", "unknown-0123456789abcdef", 0},
      {"read", kRead, 1},   {"submit", kSubmit, 2},
      {"admin", kAdmin, 3},
  };
  return *c;
}

class AuthTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(forq::testing::MakeTempDir("forq-auth"));
    const std::string tokens = *dir_ + "/tokens";
    std::ofstream(tokens) << "# forq tokens\n"
                          << kAdmin << " admin\n"
                          << kSubmit << " submit\n"
                          << "sha256:" << Sha256Hex(kRead) << " read\n";
    chmod(tokens.c_str(), 0600);
    forq::testing::ForqdOptions o;
    o.workers = 1;
    o.flags = {"--auth_tokens_file=" + tokens, "--durability=none"};
    auto p = ForqdProcess::Start(o);
    ASSERT_TRUE(p.ok()) << p.status();
    forqd_ = p->release();
    channel_ = new std::shared_ptr<grpc::Channel>(grpc::CreateChannel(
        forqd_->grpc_address(), grpc::InsecureChannelCredentials()));
  }
  static void TearDownTestSuite() {
    delete channel_;
    delete forqd_;
    forqd_ = nullptr;
  }

  // SHA-256 of `s` in hex via the openssl binary, so the test does not share
  // code with the server.
  static std::string Sha256Hex(const std::string& s) {
    auto r = RunCommand({"/usr/bin/openssl", "dgst", "-sha256", "-r"}, s);
    EXPECT_TRUE(r.ok());
    return r->out.substr(0, 64);
  }

  static void Authorize(grpc::ClientContext& ctx, const Caller& c) {
    if (!c.token.empty()) ctx.AddMetadata("authorization", "Bearer " + c.token);
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::seconds(20));
  }

  // Number of tasks forqd holds, asked with the admin token.
  static int TaskCount() {
    auto stub = v1::TaskService::NewStub(*channel_);
    grpc::ClientContext ctx;
    Authorize(ctx, Callers().back());
    v1::ListTasksRequest req;
    req.set_page_size(1000);
    v1::ListTasksResponse resp;
    grpc::Status s = stub->List(&ctx, req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp.tasks_size();
  }

  static std::string* dir_;
  static ForqdProcess* forqd_;
  static std::shared_ptr<grpc::Channel>* channel_;
};

std::string* AuthTest::dir_ = nullptr;
ForqdProcess* AuthTest::forqd_ = nullptr;
std::shared_ptr<grpc::Channel>* AuthTest::channel_ = nullptr;

void ExpectOutcome(const std::string& what, const Caller& c, Need need,
                   int code, bool http) {
  const int unauthenticated = http ? 401 : grpc::StatusCode::UNAUTHENTICATED;
  const int denied = http ? 403 : grpc::StatusCode::PERMISSION_DENIED;
  const std::string where = absl::StrCat(what, " as ", c.name, " -> ", code);
  if (need == Need::kOpen) {
    EXPECT_NE(code, unauthenticated) << where;
    EXPECT_NE(code, denied) << where;
    return;
  }
  if (c.rank == 0) {
    EXPECT_EQ(code, unauthenticated) << where;
  } else if (c.rank < static_cast<int>(need)) {
    EXPECT_EQ(code, denied) << where;
  } else {
    EXPECT_NE(code, unauthenticated) << where;
    EXPECT_NE(code, denied) << where;
  }
}

TEST_F(AuthTest, EveryRoleAgainstEveryGrpcFamily) {
  auto tasks = v1::TaskService::NewStub(*channel_);
  auto pool = v1::PoolService::NewStub(*channel_);
  auto manager = v1::ManagerService::NewStub(*channel_);
  using Call = std::function<grpc::Status(grpc::ClientContext*)>;
  struct Row {
    std::string name;
    Need need;
    Call call;
  };
  std::vector<Row> rows = {
      {"Health.Check", Need::kOpen,
       [&](grpc::ClientContext* ctx) {
         // No generated health stub in C++: an empty HealthCheckRequest.
         grpc::GenericStub stub(*channel_);
         grpc::Slice empty("", 0);
         grpc::ByteBuffer req(&empty, 1);
         grpc::ByteBuffer resp;
         std::promise<grpc::Status> done;
         stub.UnaryCall(
             ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &req,
             &resp, [&done](grpc::Status s) { done.set_value(std::move(s)); });
         return done.get_future().get();
       }},
      {"TaskService.Get", Need::kRead,
       [&](grpc::ClientContext* ctx) {
         v1::GetTaskRequest req;
         req.set_id("no-such-task");
         v1::Task resp;
         return tasks->Get(ctx, req, &resp);
       }},
      {"TaskService.List", Need::kRead,
       [&](grpc::ClientContext* ctx) {
         v1::ListTasksRequest req;
         v1::ListTasksResponse resp;
         return tasks->List(ctx, req, &resp);
       }},
      {"TaskService.Submit", Need::kSubmit,
       [&](grpc::ClientContext* ctx) {
         v1::SubmitRequest req;
         req.mutable_task()->set_kind("echo");
         req.mutable_task()->set_payload("x");
         v1::SubmitResponse resp;
         return tasks->Submit(ctx, req, &resp);
       }},
      {"TaskService.Cancel", Need::kSubmit,
       [&](grpc::ClientContext* ctx) {
         v1::CancelTaskRequest req;
         req.set_id("no-such-task");
         v1::Task resp;
         return tasks->Cancel(ctx, req, &resp);
       }},
      {"PoolService.GetPool", Need::kRead,
       [&](grpc::ClientContext* ctx) {
         v1::GetPoolRequest req;
         v1::PoolStatus resp;
         return pool->GetPool(ctx, req, &resp);
       }},
      {"PoolService.Resume", Need::kAdmin,
       [&](grpc::ClientContext* ctx) {
         v1::ResumeRequest req;
         v1::PoolStatus resp;
         return pool->Resume(ctx, req, &resp);
       }},
      {"ManagerService.DictGet", Need::kRead,
       [&](grpc::ClientContext* ctx) {
         v1::DictRequest req;
         req.set_name("auth-dict");
         req.set_key("k");
         v1::DictResponse resp;
         return manager->DictGet(ctx, req, &resp);
       }},
      {"ManagerService.DictSet", Need::kSubmit,
       [&](grpc::ClientContext* ctx) {
         v1::DictRequest req;
         req.set_name("auth-dict");
         req.set_key("k");
         req.set_value("v");
         v1::DictResponse resp;
         return manager->DictSet(ctx, req, &resp);
       }},
      {"ManagerService.DeleteObject", Need::kAdmin,
       [&](grpc::ClientContext* ctx) {
         v1::DeleteObjectRequest req;
         req.set_name("no-such-object");
         v1::DeleteObjectResponse resp;
         return manager->DeleteObject(ctx, req, &resp);
       }},
  };
  for (const Row& row : rows) {
    for (const Caller& c : Callers()) {
      grpc::ClientContext ctx;
      Authorize(ctx, c);
      const grpc::Status s = row.call(&ctx);
      ExpectOutcome(row.name, c, row.need, s.error_code(), false);
      if (s.error_code() == grpc::StatusCode::UNAUTHENTICATED ||
          s.error_code() == grpc::StatusCode::PERMISSION_DENIED) {
        EXPECT_FALSE(s.error_message().empty()) << row.name;
      }
    }
  }
}

TEST_F(AuthTest, EveryRoleAgainstEveryRestFamily) {
  struct Row {
    Need need;
    std::string method;
    std::string target;
    std::string body;
  };
  const std::vector<Row> rows = {
      {Need::kOpen, "GET", "/healthz", ""},
      {Need::kOpen, "GET", "/readyz", ""},
      {Need::kRead, "GET", "/metrics", ""},
      {Need::kRead, "GET", "/v1/tasks/no-such-task", ""},
      {Need::kRead, "GET", "/v1/tasks", ""},
      {Need::kSubmit, "POST", "/v1/tasks", R"({"kind":"echo"})"},
      {Need::kSubmit, "POST", "/v1/tasks/no-such-task:cancel", "{}"},
      {Need::kRead, "GET", "/v1/workers", ""},
      {Need::kAdmin, "POST", "/v1/pool:resume", "{}"},
      {Need::kRead, "GET", "/v1/manager/dicts/auth-http/k", ""},
      {Need::kSubmit, "POST", "/v1/manager/dicts/auth-http:set",
       R"({"key":"k","value_text":"v"})"},
      {Need::kAdmin, "POST", "/v1/manager/objects/no-such-object:delete", "{}"},
  };
  for (const Row& row : rows) {
    for (const Caller& c : Callers()) {
      std::vector<std::pair<std::string, std::string>> headers;
      if (!c.token.empty()) {
        headers.emplace_back("Authorization", "Bearer " + c.token);
      }
      auto r = HttpCall(forqd_->http_address(), row.method, row.target,
                        row.body, headers);
      ASSERT_TRUE(r.ok()) << r.status();
      ExpectOutcome(row.method + " " + row.target, c, row.need, r->status,
                    true);
      if (r->status == 401) {
        EXPECT_EQ(r->header("WWW-Authenticate"), "Bearer");
        EXPECT_THAT(r->body, HasSubstr("token"));
      }
      if (r->status == 403) {
        EXPECT_THAT(r->body, HasSubstr("role"));
      }
    }
  }
}

TEST_F(AuthTest, RejectedSubmitsNeverReachTheScheduler) {
  const int before = TaskCount();
  auto tasks = v1::TaskService::NewStub(*channel_);
  for (const Caller& c : Callers()) {
    if (c.rank >= 2) continue;
    grpc::ClientContext ctx;
    Authorize(ctx, c);
    v1::SubmitRequest req;
    req.mutable_task()->set_kind("echo");
    v1::SubmitResponse resp;
    EXPECT_FALSE(tasks->Submit(&ctx, req, &resp).ok());
    std::vector<std::pair<std::string, std::string>> headers;
    if (!c.token.empty()) {
      headers.emplace_back("Authorization", "Bearer " + c.token);
    }
    auto r = HttpCall(forqd_->http_address(), "POST", "/v1/tasks",
                      R"({"kind":"echo"})", headers);
    ASSERT_TRUE(r.ok());
    EXPECT_GE(r->status, 401);
  }
  EXPECT_EQ(TaskCount(), before);
}

TEST_F(AuthTest, LibforqAndCliSendTheirToken) {
  ClientOptions o;
  o.address = forqd_->grpc_address();
  o.token = kSubmit;
  auto client = Client::Connect(o);
  ASSERT_TRUE(client.ok()) << client.status();
  auto fut = (*client)->Submit("echo", "with a token");
  ASSERT_TRUE(fut.ok()) << fut.status();
  auto result = AwaitResult(*fut, absl::Seconds(30));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(*result, "with a token");

  o.token = "";
  auto anonymous = Client::Connect(o);
  ASSERT_TRUE(anonymous.ok());
  auto denied = (*anonymous)->Submit("echo", "x");
  EXPECT_EQ(denied.status().code(), absl::StatusCode::kUnauthenticated);

  auto cli = RunCommand({forq::testing::ForqBinary(), "--addr",
                         forqd_->grpc_address(), "submit", "echo", "hi"});
  ASSERT_TRUE(cli.ok());
  EXPECT_NE(cli->exit_code, 0);
  EXPECT_THAT(cli->err, HasSubstr("UNAUTHENTICATED"));
  cli = RunCommand({"/usr/bin/env", std::string("FORQ_TOKEN=") + kRead,
                    forq::testing::ForqBinary(), "--addr",
                    forqd_->grpc_address(), "submit", "echo", "hi"});
  ASSERT_TRUE(cli.ok());
  EXPECT_THAT(cli->err, HasSubstr("PERMISSION_DENIED"));
  cli =
      RunCommand({forq::testing::ForqBinary(), "--addr", forqd_->grpc_address(),
                  "--token", kSubmit, "submit", "--wait", "echo", "hi"});
  ASSERT_TRUE(cli.ok());
  EXPECT_EQ(cli->exit_code, 0) << cli->err;
}

// forqd must not expose an unprotected port by accident.
TEST(AuthStartupTest, RefusesNonLoopbackWithoutTokensOrTls) {
  const std::string dir = forq::testing::MakeTempDir("forq-auth-start");
  auto r = RunCommand(
      {forq::testing::ForqdBinary(), "--grpc_addr=0.0.0.0:0",
       "--http_addr=127.0.0.1:0", "--workers=1", "--data_dir=" + dir + "/data"},
      "", absl::Seconds(30));
  ASSERT_TRUE(r.ok());
  EXPECT_NE(r->exit_code, 0);
  EXPECT_THAT(r->err + r->out, HasSubstr("refusing to listen on 0.0.0.0:0"));
  EXPECT_THAT(r->err + r->out, HasSubstr("--insecure"));

  r = RunCommand(
      {forq::testing::ForqdBinary(), "--http_addr=[::]:0",
       "--grpc_addr=127.0.0.1:0", "--workers=1", "--data_dir=" + dir + "/data"},
      "", absl::Seconds(30));
  ASSERT_TRUE(r.ok());
  EXPECT_NE(r->exit_code, 0);
  EXPECT_THAT(r->err + r->out, HasSubstr("--http_addr"));

  // --insecure is the explicit way out: forqd then starts.
  forq::testing::ForqdOptions o;
  o.workers = 1;
  o.flags = {"--insecure", "--grpc_addr=0.0.0.0:0"};
  auto p = ForqdProcess::Start(o);
  EXPECT_TRUE(p.ok()) << p.status();
}

TEST(AuthStartupTest, BadTokensFileStopsStartupNamingTheLine) {
  const std::string dir = forq::testing::MakeTempDir("forq-auth-bad");
  std::ofstream(dir + "/tokens") << kAdmin << " admin\nshort read\n";
  auto r = RunCommand(
      {forq::testing::ForqdBinary(), "--workers=1", "--grpc_addr=127.0.0.1:0",
       "--http_addr=127.0.0.1:0", "--auth_tokens_file=" + dir + "/tokens",
       "--data_dir=" + dir + "/data"},
      "", absl::Seconds(30));
  ASSERT_TRUE(r.ok());
  EXPECT_NE(r->exit_code, 0);
  EXPECT_THAT(r->err + r->out, HasSubstr("tokens:2: tokens must have"));
}

}  // namespace
}  // namespace forq
