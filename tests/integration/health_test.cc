// grpc.health.v1.Health and /readyz of a real forqd agree through a drain,
// a resume and a SIGTERM stop (the table in docs/operations.md).
#include <signal.h>

#include <map>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"

#include "forq/client.h"
#include "server/http/http_test_client.h"
#include "tests/testing/forqd_process.h"
#include "tests/testing/status_matchers.h"

namespace forq {
namespace {

using ::forq::server::testing::HttpCall;
using ::forq::server::testing::HttpResponse;
using ::forq::testing::ForqdOptions;
using ::forq::testing::ForqdProcess;
using ::forq::testing::IsOk;
using ::grpc::health::v1::Health;
using ::grpc::health::v1::HealthCheckRequest;
using ::grpc::health::v1::HealthCheckResponse;
using ::testing::HasSubstr;

constexpr HealthCheckResponse::ServingStatus kServing =
    HealthCheckResponse::SERVING;
constexpr HealthCheckResponse::ServingStatus kNotServing =
    HealthCheckResponse::NOT_SERVING;

const char* const kNames[] = {"", "forq.v1.TaskService", "forq.v1.PoolService",
                              "forq.v1.ManagerService"};

class HealthTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ForqdOptions o;
    o.workers = 1;
    // Long enough that a 60 s task keeps forqd draining while the test looks.
    o.flags = {"--drain_grace=60s"};
    auto p = ForqdProcess::Start(o);
    ASSERT_THAT(p, IsOk());
    forqd_ = std::move(*p);
    auto c = Client::Connect({.address = forqd_->grpc_address()});
    ASSERT_THAT(c, IsOk());
    client_ = std::move(*c);
    health_ = Health::NewStub(client_->channel());
  }
  void TearDown() override {
    if (HasFailure() && forqd_ != nullptr) {
      ADD_FAILURE() << "forqd log tail:\n" << forqd_->LogTail();
    }
  }

  // Status of every name in kNames, by name; a failed Check records the
  // gRPC code as "code N".
  std::map<std::string, std::string> CheckAll() {
    std::map<std::string, std::string> out;
    for (const char* name : kNames) {
      out[name] = Check(name);
    }
    return out;
  }
  std::string Check(const std::string& name) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::seconds(10));
    HealthCheckRequest req;
    req.set_service(name);
    HealthCheckResponse resp;
    const grpc::Status s = health_->Check(&ctx, req, &resp);
    if (!s.ok()) return absl::StrCat("code ", s.error_code());
    return HealthCheckResponse::ServingStatus_Name(resp.status());
  }
  HttpResponse Readyz() {
    absl::StatusOr<HttpResponse> r =
        HttpCall(forqd_->http_address(), "GET", "/readyz");
    EXPECT_THAT(r, IsOk());
    return r.ok() ? *r : HttpResponse{};
  }

  std::unique_ptr<ForqdProcess> forqd_;
  std::unique_ptr<Client> client_;
  std::unique_ptr<Health::Stub> health_;
};

std::map<std::string, std::string> AllAre(const std::string& status) {
  std::map<std::string, std::string> out;
  for (const char* name : kNames) out[name] = status;
  return out;
}

TEST_F(HealthTest, EveryServiceNameServesWhenIdle) {
  EXPECT_EQ(CheckAll(), AllAre("SERVING"));
  EXPECT_EQ(Check("forq.v1.NoSuchService"),
            absl::StrCat("code ", grpc::StatusCode::NOT_FOUND));
  HttpResponse r = Readyz();
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_THAT(r.body, HasSubstr("\"ready\":true"));
}

TEST_F(HealthTest, DrainAndResumeMoveHealthAndReadyzTogether) {
  absl::StatusOr<v1::DrainResponse> d = client_->Drain(absl::ZeroDuration());
  ASSERT_THAT(d, IsOk());
  std::map<std::string, std::string> draining = {
      {"", "NOT_SERVING"},
      {"forq.v1.TaskService", "NOT_SERVING"},
      {"forq.v1.PoolService", "SERVING"},
      {"forq.v1.ManagerService", "SERVING"}};
  EXPECT_EQ(CheckAll(), draining);
  HttpResponse r = Readyz();
  EXPECT_EQ(r.status, 503) << r.body;
  EXPECT_THAT(r.body, HasSubstr("\"message\":\"draining\""));

  ASSERT_THAT(client_->Resume(), IsOk());
  EXPECT_EQ(CheckAll(), AllAre("SERVING"));
  r = Readyz();
  EXPECT_EQ(r.status, 200) << r.body;
}

TEST_F(HealthTest, SigtermTurnsEveryNameNotServingWhileTasksDrain) {
  // A running task keeps forqd in its drain after SIGTERM, so both front
  // ends can still be asked.
  absl::StatusOr<TaskFuture> f = client_->Submit("sleep", "60000");
  ASSERT_THAT(f, IsOk());
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  for (;;) {
    absl::StatusOr<v1::Task> t = client_->Get(f->id());
    ASSERT_THAT(t, IsOk());
    if (t->state() == v1::RUNNING) break;
    ASSERT_LT(absl::Now(), deadline) << "task never ran";
    (void)client_->Wait(f->id(), absl::Milliseconds(20));
  }

  // Watch the whole server's status: it must turn NOT_SERVING after SIGTERM.
  grpc::ClientContext watch_ctx;
  watch_ctx.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(30));
  HealthCheckRequest req;
  std::unique_ptr<grpc::ClientReader<HealthCheckResponse>> watch =
      health_->Watch(&watch_ctx, req);
  HealthCheckResponse update;
  ASSERT_TRUE(watch->Read(&update));
  ASSERT_EQ(update.status(), kServing);

  ASSERT_EQ(kill(forqd_->pid(), SIGTERM), 0);
  ASSERT_TRUE(watch->Read(&update));
  EXPECT_EQ(update.status(), kNotServing);
  watch_ctx.TryCancel();

  EXPECT_EQ(CheckAll(), AllAre("NOT_SERVING"));
  HttpResponse r = Readyz();
  EXPECT_EQ(r.status, 503) << r.body;
  EXPECT_THAT(r.body, HasSubstr("\"message\":\"stopping\""));
  // Still draining: the task has not been given up.
  absl::StatusOr<v1::Task> t = client_->Get(f->id());
  ASSERT_THAT(t, IsOk());
  EXPECT_EQ(t->state(), v1::RUNNING);
}

}  // namespace
}  // namespace forq
