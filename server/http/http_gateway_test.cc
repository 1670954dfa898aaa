#include "server/http/http_gateway.h"

#include <chrono>
#include <future>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "google/protobuf/any.pb.h"
#include "google/protobuf/duration.pb.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/server_builder.h"
#include "gtest/gtest.h"

#include "common/mutex.h"
#include "forq/v1/pool.grpc.pb.h"
#include "forq/v1/task.grpc.pb.h"
#include "server/http/http_test_client.h"
#include "server/rpc/grpc_metrics.h"
#include "tests/testing/status_matchers.h"

namespace forq::server {
namespace {

using ::forq::server::testing::HttpCall;
using ::forq::server::testing::HttpRaw;
using ::forq::server::testing::HttpResponse;
using ::forq::testing::IsOk;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

bool Terminal(forq::v1::TaskState s) {
  return s == forq::v1::SUCCEEDED || s == forq::v1::FAILED ||
         s == forq::v1::DEAD || s == forq::v1::CANCELLED;
}

// google.rpc.Status{code: RESOURCE_EXHAUSTED, details: [RetryInfo{3s}]}.
std::string RetryDetails() {
  google::protobuf::Duration d;
  d.set_seconds(3);
  const std::string dur = d.SerializeAsString();
  google::protobuf::Any any;
  any.set_type_url("type.googleapis.com/google.rpc.RetryInfo");
  any.set_value("\x0a" + std::string(1, static_cast<char>(dur.size())) + dur);
  const std::string a = any.SerializeAsString();
  return "\x08\x08\x1a" + std::string(1, static_cast<char>(a.size())) + a;
}

// An in-memory TaskService: enough behaviour to drive every kind of route
// (unary, long poll, server stream, bidi stream, errors).
// A server reactor (write or bidi) that writes `out_` in order once Next()
// is called, then finishes OK; CANCELLED when a write fails. Allocated by
// the fake service's method; deleted when gRPC is done with it.
template <class Reactor, class Message>
class WritesAll : public Reactor {
 public:
  void OnWriteDone(bool ok) override {
    if (!ok) return this->Finish(grpc::Status::CANCELLED);
    Next();
  }
  void OnDone() override { delete this; }

 protected:
  void Next() {
    if (next_ == out_.size()) return this->Finish(grpc::Status::OK);
    this->StartWrite(&out_[next_++]);
  }
  std::vector<Message> out_;

 private:
  size_t next_ = 0;
};

class FakeTaskService final : public forq::v1::TaskService::CallbackService {
 public:
  grpc::ServerUnaryReactor* Submit(grpc::CallbackServerContext* ctx,
                                   const forq::v1::SubmitRequest* req,
                                   forq::v1::SubmitResponse* resp) override {
    auto* r = ctx->DefaultReactor();
    if (req->task().kind() == "full") {
      r->Finish(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                             "queue default is full", RetryDetails()));
      return r;
    }
    if (req->task().kind().empty()) {
      r->Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                             "task.kind is required"));
      return r;
    }
    MutexLock lock(&mu_);
    forq::v1::Task t;
    t.set_id(absl::StrCat("t", ++next_id_));
    t.set_kind(req->task().kind());
    t.set_queue("default");
    t.set_payload(req->task().payload_text().empty()
                      ? req->task().payload()
                      : req->task().payload_text());
    t.set_state(forq::v1::QUEUED);
    tasks_[t.id()] = t;
    *resp->mutable_task() = t;
    r->Finish(grpc::Status::OK);
    return r;
  }

  grpc::ServerUnaryReactor* Get(grpc::CallbackServerContext* ctx,
                                const forq::v1::GetTaskRequest* req,
                                forq::v1::Task* resp) override {
    auto* r = ctx->DefaultReactor();
    MutexLock lock(&mu_);
    auto it = tasks_.find(req->id());
    if (it == tasks_.end()) {
      r->Finish(grpc::Status(grpc::StatusCode::NOT_FOUND,
                             absl::StrCat("task ", req->id(), " not found")));
    } else {
      *resp = it->second;
      r->Finish(grpc::Status::OK);
    }
    return r;
  }

  // Parks until Complete()/Cancel() or the client cancels.
  class WaitReactor final : public grpc::ServerUnaryReactor {
   public:
    WaitReactor(FakeTaskService* svc, forq::v1::WaitTaskResponse* resp)
        : svc_(svc), resp_(resp) {}
    void Deliver(const forq::v1::Task& t) {
      *resp_->mutable_task() = t;
      resp_->set_done(true);
      Finish(grpc::Status::OK);
    }
    void OnCancel() override {
      if (svc_->Unpark(this)) Finish(grpc::Status::CANCELLED);
    }
    // gRPC is done with the reactor; it was allocated by Wait().
    void OnDone() override { delete this; }

   private:
    FakeTaskService* const svc_;
    forq::v1::WaitTaskResponse* const resp_;
  };

  grpc::ServerUnaryReactor* Wait(grpc::CallbackServerContext* ctx,
                                 const forq::v1::WaitTaskRequest* req,
                                 forq::v1::WaitTaskResponse* resp) override {
    MutexLock lock(&mu_);
    auto it = tasks_.find(req->id());
    if (it == tasks_.end() || Terminal(it->second.state())) {
      auto* r = ctx->DefaultReactor();
      if (it == tasks_.end()) {
        r->Finish(grpc::Status(grpc::StatusCode::NOT_FOUND, "no such task"));
      } else {
        *resp->mutable_task() = it->second;
        resp->set_done(true);
        r->Finish(grpc::Status::OK);
      }
      return r;
    }
    auto* w = new WaitReactor(this, resp);
    waiters_[req->id()].push_back(w);
    ++parked_;
    cv_.SignalAll();
    return w;
  }

  grpc::ServerUnaryReactor* Cancel(grpc::CallbackServerContext* ctx,
                                   const forq::v1::CancelTaskRequest* req,
                                   forq::v1::Task* resp) override {
    auto* r = ctx->DefaultReactor();
    {
      MutexLock lock(&mu_);
      auto it = tasks_.find(req->id());
      if (it == tasks_.end()) {
        r->Finish(grpc::Status(grpc::StatusCode::NOT_FOUND, "no such task"));
        return r;
      }
      if (Terminal(it->second.state())) {
        r->Finish(grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                               "task already finished"));
        return r;
      }
    }
    Finish(req->id(), forq::v1::CANCELLED, "");
    MutexLock lock(&mu_);
    *resp = tasks_[req->id()];
    r->Finish(grpc::Status::OK);
    return r;
  }

  grpc::ServerUnaryReactor* List(grpc::CallbackServerContext* ctx,
                                 const forq::v1::ListTasksRequest* req,
                                 forq::v1::ListTasksResponse* resp) override {
    MutexLock lock(&mu_);
    for (const auto& [id, t] : tasks_) {
      if (req->state() == forq::v1::TASK_STATE_UNSPECIFIED ||
          req->state() == t.state()) {
        *resp->add_tasks() = t;
      }
    }
    auto* r = ctx->DefaultReactor();
    r->Finish(grpc::Status::OK);
    return r;
  }

  // Three events of the task, then the end of the stream.
  class WatchReactor final
      : public WritesAll<grpc::ServerWriteReactor<forq::v1::TaskEvent>,
                         forq::v1::TaskEvent> {
   public:
    explicit WatchReactor(const forq::v1::Task& t) {
      for (int i = 0; i < 3; ++i) {
        forq::v1::TaskEvent e;
        e.set_type(forq::v1::TaskEvent::PROGRESS);
        *e.mutable_task() = t;
        e.mutable_task()->set_progress(i / 2.0);
        out_.push_back(e);
      }
      Next();
    }
  };

  grpc::ServerWriteReactor<forq::v1::TaskEvent>* Watch(
      grpc::CallbackServerContext* ctx,
      const forq::v1::WatchRequest* req) override {
    forq::v1::Task t;
    {
      MutexLock lock(&mu_);
      auto it = tasks_.find(req->task_id());
      if (it == tasks_.end()) {
        struct Fail : grpc::ServerWriteReactor<forq::v1::TaskEvent> {
          Fail() {
            Finish(grpc::Status(grpc::StatusCode::NOT_FOUND, "no such task"));
          }
          void OnDone() override { delete this; }
        };
        return new Fail();
      }
      t = it->second;
    }
    return new WatchReactor(t);
  }

  // Reads the whole input stream, then echoes each input's payload.
  class MapReactor final
      : public WritesAll<
            grpc::ServerBidiReactor<forq::v1::MapRequest, forq::v1::MapResult>,
            forq::v1::MapResult> {
   public:
    MapReactor() { StartRead(&in_); }
    void OnReadDone(bool ok) override {
      if (ok) {
        if (in_.has_input()) {
          forq::v1::MapResult r;
          r.set_index(out_.size());
          r.set_state(forq::v1::SUCCEEDED);
          r.set_result(in_.input().payload_text());
          out_.push_back(r);
        }
        StartRead(&in_);
        return;
      }
      Next();
    }

   private:
    forq::v1::MapRequest in_;
  };

  grpc::ServerBidiReactor<forq::v1::MapRequest, forq::v1::MapResult>* Map(
      grpc::CallbackServerContext* ctx) override {
    return new MapReactor();
  }

  // Test hooks.
  void Finish(const std::string& id, forq::v1::TaskState state,
              const std::string& result) {
    std::vector<WaitReactor*> waiters;
    forq::v1::Task t;
    {
      MutexLock lock(&mu_);
      t = tasks_[id];
      t.set_state(state);
      t.set_result(result);
      tasks_[id] = t;
      waiters.swap(waiters_[id]);
      parked_ -= static_cast<int>(waiters.size());
      cv_.SignalAll();
    }
    for (WaitReactor* w : waiters) w->Deliver(t);
  }

  // Blocks until exactly `n` waits are parked.
  void AwaitParked(int n) {
    MutexLock lock(&mu_);
    while (parked_ != n) cv_.Wait(&mu_);
  }

 private:
  bool Unpark(WaitReactor* w) {
    MutexLock lock(&mu_);
    for (auto& [id, list] : waiters_) {
      for (auto it = list.begin(); it != list.end(); ++it) {
        if (*it == w) {
          list.erase(it);
          --parked_;
          cv_.SignalAll();
          return true;
        }
      }
    }
    return false;
  }

  Mutex mu_;
  CondVar cv_;
  int next_id_ ABSL_GUARDED_BY(mu_) = 0;
  int parked_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, forq::v1::Task> tasks_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::vector<WaitReactor*>> waiters_
      ABSL_GUARDED_BY(mu_);
};

class HttpGatewayTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    int grpc_port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                             &grpc_port);
    builder.RegisterService(&tasks_);
    std::vector<
        std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
        interceptors;
    interceptors.push_back(MakeGrpcMetricsInterceptorFactory(&metrics_));
    builder.experimental().SetInterceptorCreators(std::move(interceptors));
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);

    HttpGatewayOptions opts;
    opts.listen = "127.0.0.1:0";
    opts.grpc_target = absl::StrCat("127.0.0.1:", grpc_port);
    opts.metrics = &metrics_;
    opts.max_body_bytes = size_t{64} * 1024;
    opts.readiness = [this] {
      ReadyState s;
      s.ready = ready_.load();
      s.store_open = true;
      s.live_workers = ready_.load() ? 2 : 0;
      s.message = ready_.load() ? "" : "no live workers";
      return s;
    };
    gateway_ = std::make_unique<HttpGateway>(opts);
    auto port = gateway_->Start();
    ASSERT_THAT(port, IsOk());
    addr_ = absl::StrCat("127.0.0.1:", *port);
  }

  void TearDown() override {
    gateway_->Stop();
    server_->Shutdown(std::chrono::system_clock::now() +
                      std::chrono::seconds(2));
  }

  HttpResponse Call(
      const std::string& method, const std::string& target,
      const std::string& body = "",
      const std::vector<std::pair<std::string, std::string>>& headers = {}) {
    auto r = HttpCall(addr_, method, target, body, headers);
    EXPECT_THAT(r, IsOk());
    return r.ok() ? *r : HttpResponse{};
  }

  std::string SubmitEcho(const std::string& text) {
    HttpResponse r =
        Call("POST", "/v1/tasks",
             absl::StrCat(R"({"kind":"echo","payload_text":")", text, "\"}"));
    EXPECT_EQ(r.status, 200) << r.body;
    // {"task":{"id":"tN",...
    const size_t at = r.body.find("\"id\":\"");
    if (at == std::string::npos) return "";
    const size_t start = at + 6;
    return r.body.substr(start, r.body.find('"', start) - start);
  }

  Metrics metrics_;
  FakeTaskService tasks_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<HttpGateway> gateway_;
  std::string addr_;
  std::atomic<bool> ready_{true};
};

TEST_F(HttpGatewayTest, SubmitGetWaitFlow) {
  const std::string id = SubmitEcho("hi");
  ASSERT_FALSE(id.empty());

  HttpResponse got = Call("GET", "/v1/tasks/" + id);
  EXPECT_EQ(got.status, 200);
  EXPECT_EQ(got.header("content-type"), "application/json");
  EXPECT_THAT(got.body, HasSubstr("\"state\":\"QUEUED\""));
  EXPECT_THAT(got.body, HasSubstr("\"payload\":\"aGk=\""));

  auto wait = std::async(std::launch::async, [&] {
    return HttpCall(addr_, "GET", "/v1/tasks/" + id + ":wait?text=true");
  });
  tasks_.AwaitParked(1);
  tasks_.Finish(id, forq::v1::SUCCEEDED, "done!");
  auto w = wait.get();
  ASSERT_THAT(w, IsOk());
  EXPECT_EQ(w->status, 200);
  EXPECT_THAT(w->body, HasSubstr("\"done\":true"));
  EXPECT_THAT(w->body, HasSubstr("\"result_text\":\"done!\""));
  EXPECT_THAT(w->body, HasSubstr("\"payload_text\":\"hi\""));

  HttpResponse list = Call("GET", "/v1/tasks?state=SUCCEEDED");
  EXPECT_EQ(list.status, 200);
  EXPECT_THAT(list.body, HasSubstr(id));
}

TEST_F(HttpGatewayTest, GrpcErrorsMapToHttpStatusAndJson) {
  HttpResponse r = Call("GET", "/v1/tasks/nope");
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(r.body,
            R"({"code":5,"status":"NOT_FOUND","message":"task nope not )"
            R"(found","details":[]})");

  r = Call("POST", "/v1/tasks:batch", R"({"tasks":[]})");
  EXPECT_EQ(r.status, 501);
  EXPECT_THAT(r.body, HasSubstr("\"status\":\"UNIMPLEMENTED\""));
  EXPECT_THAT(r.body, HasSubstr("forq.v1.TaskService/SubmitBatch failed with "
                                "UNIMPLEMENTED"));

  r = Call("POST", "/v1/tasks", R"({"kind":"full"})");
  EXPECT_EQ(r.status, 429);
  EXPECT_EQ(r.header("retry-after"), "3");
  EXPECT_THAT(r.body, HasSubstr("google.rpc.RetryInfo"));

  r = Call("POST", "/v1/tasks", "{}");
  EXPECT_EQ(r.status, 400);
  EXPECT_THAT(r.body, HasSubstr("task.kind is required"));

  const std::string id = SubmitEcho("x");
  EXPECT_EQ(Call("POST", "/v1/tasks/" + id + ":cancel").status, 200);
  r = Call("POST", "/v1/tasks/" + id + ":cancel");
  EXPECT_EQ(r.status, 409);
  EXPECT_THAT(r.body, HasSubstr("FAILED_PRECONDITION"));
}

TEST_F(HttpGatewayTest, MalformedRequestsAnswerWithTheProblem) {
  HttpResponse r = Call("POST", "/v1/tasks", R"({"kind": "echo",)");
  EXPECT_EQ(r.status, 400);
  EXPECT_THAT(r.body, HasSubstr("invalid JSON body"));

  r = Call("POST", "/v1/tasks", R"({"kind":"echo","colour":"red"})");
  EXPECT_EQ(r.status, 400);
  EXPECT_THAT(r.body, HasSubstr("colour"));

  r = Call("POST", "/v1/tasks", R"({"kind":"echo","priority":"high"})");
  EXPECT_EQ(r.status, 400);
  EXPECT_THAT(r.body, HasSubstr("priority"));

  r = Call("GET", "/v1/tasks/x:wait?timeout=soon");
  EXPECT_EQ(r.status, 400);
  EXPECT_THAT(r.body, HasSubstr("query parameter 'timeout'"));

  r = Call("GET", "/v1/nothing/here");
  EXPECT_EQ(r.status, 404);
  EXPECT_THAT(r.body, HasSubstr("no route for GET /v1/nothing/here"));

  r = Call("DELETE", "/v1/tasks");
  EXPECT_EQ(r.status, 405);
  EXPECT_EQ(r.header("allow"), "GET, POST");

  r = Call("POST", "/v1/tasks",
           absl::StrCat(R"({"kind":"echo","payload_text":")",
                        std::string(size_t{100} * 1024, 'a'), "\"}"));
  EXPECT_EQ(r.status, 413);
  EXPECT_THAT(r.body, HasSubstr("exceeds the limit of 65536 bytes"));

  EXPECT_EQ(Call("GET", "/healthz").status, 200);
}

TEST_F(HttpGatewayTest, WatchStreamsNdjson) {
  const std::string id = SubmitEcho("w");
  HttpResponse r = Call("GET", "/v1/watch?task_id=" + id);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.header("content-type"), "application/x-ndjson");
  EXPECT_EQ(r.header("transfer-encoding"), "chunked");
  std::vector<std::string> lines =
      absl::StrSplit(r.body, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 3u) << r.body;
  EXPECT_THAT(lines[2], StartsWith("{\"type\":\"PROGRESS\""));
  EXPECT_THAT(lines[2], HasSubstr("\"progress\":1"));

  r = Call("GET", "/v1/watch?task_id=missing");
  EXPECT_EQ(r.status, 404);
  EXPECT_THAT(r.body, HasSubstr("NOT_FOUND"));
}

TEST_F(HttpGatewayTest, MapTakesAndStreamsNdjson) {
  HttpResponse r = Call("POST", "/v1/map?text=1",
                        "{\"header\":{\"kind\":\"echo\"}}\n"
                        "{\"input\":{\"payload_text\":\"a\"}}\n"
                        "{\"input\":{\"payload_text\":\"b\"}}\n");
  EXPECT_EQ(r.status, 200);
  std::vector<std::string> lines =
      absl::StrSplit(r.body, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 2u) << r.body;
  EXPECT_THAT(lines[0], HasSubstr("\"result_text\":\"a\""));
  EXPECT_THAT(lines[1], HasSubstr("\"index\":\"1\""));
}

TEST_F(HttpGatewayTest, HealthReadinessAndMetrics) {
  HttpResponse r = Call("GET", "/healthz");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, R"({"status":"ok"})");

  r = Call("GET", "/readyz");
  EXPECT_EQ(r.status, 200);
  EXPECT_THAT(r.body, HasSubstr("\"live_workers\":2"));
  ready_ = false;
  r = Call("GET", "/readyz");
  EXPECT_EQ(r.status, 503);
  EXPECT_THAT(r.body, HasSubstr("\"message\":\"no live workers\""));

  SubmitEcho("m");
  Call("GET", "/v1/tasks/some-unknown-id");
  r = Call("GET", "/metrics");
  EXPECT_EQ(r.status, 200);
  EXPECT_THAT(r.header("content-type"),
              StartsWith("text/plain; version=0.0.4"));
  EXPECT_THAT(r.body, HasSubstr("forq_http_requests_total{code=\"404\","
                                "route=\"GET /v1/tasks/{id}\"} 1"));
  EXPECT_THAT(r.body, Not(HasSubstr("some-unknown-id")));
  EXPECT_THAT(r.body, HasSubstr("forq_grpc_requests_total{code=\"OK\","
                                "method=\"forq.v1.TaskService/Submit\"} 1"));
  EXPECT_THAT(r.body, HasSubstr("forq_grpc_requests_total{code=\"NOT_FOUND\","
                                "method=\"forq.v1.TaskService/Get\"} 1"));
  EXPECT_EQ(Call("POST", "/metrics").status, 405);
  r = Call("GET", "/openapi.yaml");
  EXPECT_EQ(r.status, 200);
  EXPECT_THAT(r.body, HasSubstr("operationId: \"TaskService_Wait\""));
}

TEST_F(HttpGatewayTest, GarbageRequestsNeverCrashTheServer) {
  std::vector<std::string> inputs = {
      "\r\n\r\n",
      "GARBAGE\r\n\r\n",
      "GET\r\n\r\n",
      "GET / HTTP/9.9\r\n\r\n",
      "GET /v1/tasks HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
      "POST /v1/tasks HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
      "POST /v1/tasks HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
      "GET /v1/tasks/%ZZ HTTP/1.1\r\nConnection: close\r\n\r\n",
      "GET /v1/tasks?%%%=1 HTTP/1.1\r\nConnection: close\r\n\r\n",
      absl::StrCat("GET /", std::string(40000, 'a'), " HTTP/1.1\r\n\r\n"),
      absl::StrCat("GET / HTTP/1.1\r\nX: ", std::string(40000, 'b'),
                   "\r\n\r\n"),
      absl::StrCat("POST /v1/tasks HTTP/1.1\r\nContent-Length: 4\r\n"
                   "Connection: close\r\n\r\n",
                   std::string("\xff\xfe\x00\x01", 4)),
      absl::StrCat("POST /v1/map HTTP/1.1\r\nContent-Length: 3\r\n",
                   "Connection: close\r\n\r\n{\n}"),
  };
  std::mt19937 rng(42);
  for (int i = 0; i < 30; ++i) {
    std::string junk(rng() % 300, '\0');
    for (char& c : junk) c = static_cast<char>(rng());
    inputs.push_back(i % 2 ? "POST /v1/tasks HTTP/1.1\r\n" + junk : junk);
  }
  for (const std::string& in : inputs) {
    const std::string out =
        HttpRaw(addr_, in, std::chrono::seconds(10), /*half_close=*/true);
    if (!out.empty()) {
      EXPECT_THAT(out, StartsWith("HTTP/1.1 4")) << in.substr(0, 80);
    }
  }
  EXPECT_EQ(Call("GET", "/healthz").status, 200);
}

TEST_F(HttpGatewayTest, ClientDisconnectCancelsTheWait) {
  const std::string id = SubmitEcho("d");
  {
    namespace net = boost::asio;
    net::io_context ioc;
    net::ip::tcp::socket s(ioc);
    auto [host, port] = testing::SplitHostPort(addr_);
    s.connect(net::ip::tcp::endpoint(net::ip::make_address(host),
                                     static_cast<uint16_t>(std::stoi(port))));
    const std::string req =
        absl::StrCat("GET /v1/tasks/", id, ":wait HTTP/1.1\r\nHost: x\r\n\r\n");
    net::write(s, net::buffer(req));
    tasks_.AwaitParked(1);
  }  // socket closed here
  tasks_.AwaitParked(0);
}

TEST_F(HttpGatewayTest, StopCancelsInflightCalls) {
  const std::string id = SubmitEcho("s");
  std::vector<std::future<absl::StatusOr<HttpResponse>>> waits;
  waits.reserve(20);
  for (int i = 0; i < 20; ++i) {
    waits.push_back(std::async(std::launch::async, [&] {
      return HttpCall(addr_, "GET", "/v1/tasks/" + id + ":wait");
    }));
  }
  tasks_.AwaitParked(20);
  gateway_->Stop();
  tasks_.AwaitParked(0);
  for (auto& w : waits) {
    auto r = w.get();
    // Either the connection closed or a 499/503 answer made it out.
    if (r.ok()) {
      EXPECT_NE(r->status, 200);
    }
  }
}

TEST(HttpGatewayStartTest, RejectsBadOptions) {
  HttpGatewayOptions opts;
  opts.listen = "127.0.0.1:0";
  EXPECT_FALSE(HttpGateway(opts).Start().ok());  // no grpc_target
  opts.grpc_target = "127.0.0.1:1";
  opts.listen = "nonsense";
  EXPECT_FALSE(HttpGateway(opts).Start().ok());
  opts.listen = "127.0.0.1:99999";
  EXPECT_FALSE(HttpGateway(opts).Start().ok());
}

TEST(HttpGatewayStartTest, UnreachableBackendIs503) {
  HttpGatewayOptions opts;
  opts.listen = "127.0.0.1:0";
  opts.grpc_target = "127.0.0.1:1";  // nothing listens on port 1
  HttpGateway gw(opts);
  auto port = gw.Start();
  ASSERT_THAT(port, IsOk());
  auto r = HttpCall(absl::StrCat("127.0.0.1:", *port), "GET", "/v1/tasks/x");
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->status, 503);
  EXPECT_THAT(r->body, HasSubstr("UNAVAILABLE"));
}

}  // namespace
}  // namespace forq::server
