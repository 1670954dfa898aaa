// The REST front end of a real forqd, driven by the real curl binary (the
// way users call it) and by a many-connection Beast client for the long-poll
// scalability check.
#include "boost/beast/http.hpp"

#include <sys/resource.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "boost/asio/connect.hpp"
#include "boost/asio/io_context.hpp"
#include "boost/asio/ip/tcp.hpp"
#include "boost/beast/core.hpp"
#include "gmock/gmock.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"

#include "forq/client.h"
#include "forq/v1/task.pb.h"
#include "server/http/http_test_client.h"
#include "tests/testing/forqd_process.h"
#include "tests/testing/status_matchers.h"

namespace forq {
namespace {

using ::forq::Client;
using ::forq::server::testing::HttpCall;
using ::forq::testing::ForqdProcess;
using ::forq::testing::IsOk;
using ::forq::testing::RunCommand;
using ::testing::HasSubstr;

// Threads of process `pid` from /proc/<pid>/status, -1 if unreadable.
int ThreadCount(int pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (absl::StartsWith(line, "Threads:")) {
      int n = -1;
      (void)absl::SimpleAtoi(absl::StripAsciiWhitespace(line.substr(8)), &n);
      return n;
    }
  }
  return -1;
}

template <typename T>
T ParseJson(const std::string& json) {
  T msg;
  google::protobuf::util::JsonParseOptions opts;
  opts.ignore_unknown_fields = true;
  EXPECT_TRUE(
      google::protobuf::util::JsonStringToMessage(json, &msg, opts).ok())
      << json;
  return msg;
}

class HttpTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // 1000 client sockets here and 1000 accepted ones in forqd (which
    // inherits this limit).
    rlimit lim;
    if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < 8192) {
      lim.rlim_cur = std::min<rlim_t>(8192, lim.rlim_max);
      setrlimit(RLIMIT_NOFILE, &lim);
    }
    forq::testing::ForqdOptions opts;
    opts.workers = 2;
    auto p = ForqdProcess::Start(opts);
    ASSERT_TRUE(p.ok()) << p.status();
    forqd_ = p->release();
    ASSERT_NE(forqd_->http_port(), 0) << "forqd reported no http_port";
  }
  static void TearDownTestSuite() {
    delete forqd_;
    forqd_ = nullptr;
  }

  struct Curl {
    int http_code = 0;
    std::string body;
  };

  // Runs curl against forqd's HTTP port; `args` go before the URL.
  Curl RunCurl(const std::string& method, const std::string& path,
               const std::string& data = "") {
    std::vector<std::string> argv = {"/usr/bin/curl", "-sS", "-X",
                                     method,          "-w",  "\n%{http_code}"};
    if (!data.empty()) {
      argv.insert(argv.end(), {"-H", "Content-Type: application/json",
                               "--data-binary", data});
    }
    argv.push_back(absl::StrCat("http://", forqd_->http_address(), path));
    auto r = RunCommand(argv);
    EXPECT_THAT(r, IsOk());
    Curl out;
    if (!r.ok()) return out;
    EXPECT_EQ(r->exit_code, 0) << r->err;
    const size_t nl = r->out.rfind('\n');
    out.body = r->out.substr(0, nl);
    (void)absl::SimpleAtoi(r->out.substr(nl + 1), &out.http_code);
    return out;
  }

  static ForqdProcess* forqd_;
};

ForqdProcess* HttpTest::forqd_ = nullptr;

// gRPC on a Unix socket (--grpc_addr=unix:PATH): clients connect to it and
// the REST gateway reaches it there too.
TEST(HttpUnixSocketTest, GrpcOnAUnixSocketServesClientsAndRest) {
  const std::string dir = forq::testing::MakeTempDir("forqd-uds");
  ASSERT_FALSE(dir.empty());
  const std::string address = absl::StrCat("unix:", dir, "/forqd.sock");
  forq::testing::ForqdOptions opts;
  opts.flags = {absl::StrCat("--grpc_addr=", address)};
  auto forqd = ForqdProcess::Start(opts);
  ASSERT_THAT(forqd, IsOk());
  absl::StatusOr<std::unique_ptr<Client>> client =
      Client::Connect({.address = address});
  ASSERT_THAT(client, IsOk());
  absl::StatusOr<std::string> echo = (*client)->Apply("echo", "over a socket");
  ASSERT_THAT(echo, IsOk());
  EXPECT_EQ(*echo, "over a socket");

  auto r = RunCommand(
      {"/usr/bin/curl", "-sS", "-H", "Content-Type: application/json",
       "--data-binary", R"({"kind":"echo","payload_text":"rest"})",
       absl::StrCat("http://", (*forqd)->http_address(), "/v1/tasks")});
  ASSERT_THAT(r, IsOk());
  // The reply is the acknowledged task (any state: an echo may be done).
  EXPECT_THAT(r->out, HasSubstr("\"kind\":\"echo\"")) << r->out << r->err;
  EXPECT_THAT(r->out, HasSubstr("\"id\":\"")) << r->out << r->err;
  std::filesystem::remove_all(dir);
}

TEST_F(HttpTest, CurlSubmitWaitGetListCancel) {
  Curl c = RunCurl("POST", "/v1/tasks",
                   R"({"kind":"echo","payload_text":"hello over http"})");
  ASSERT_EQ(c.http_code, 200) << c.body;
  const std::string id =
      ParseJson<forq::v1::SubmitResponse>(c.body).task().id();
  ASSERT_FALSE(id.empty());

  c = RunCurl("GET",
              absl::StrCat("/v1/tasks/", id, ":wait?timeout=30s&text=1"));
  ASSERT_EQ(c.http_code, 200) << c.body;
  EXPECT_THAT(c.body, HasSubstr("\"done\":true"));
  EXPECT_THAT(c.body, HasSubstr("\"state\":\"SUCCEEDED\""));
  EXPECT_THAT(c.body, HasSubstr("\"result_text\":\"hello over http\""));

  c = RunCurl("GET", absl::StrCat("/v1/tasks/", id));
  ASSERT_EQ(c.http_code, 200) << c.body;
  auto task = ParseJson<forq::v1::Task>(c.body);
  EXPECT_EQ(task.state(), forq::v1::SUCCEEDED);
  EXPECT_EQ(task.result(), "hello over http");

  c = RunCurl("GET", "/v1/tasks?state=SUCCEEDED&page_size=1000");
  ASSERT_EQ(c.http_code, 200) << c.body;
  EXPECT_THAT(c.body, HasSubstr(id));

  // A task that will not finish soon, cancelled while queued or running.
  c = RunCurl("POST", "/v1/tasks",
              R"({"kind":"sleep","payload_text":"60000"})");
  ASSERT_EQ(c.http_code, 200) << c.body;
  const std::string slow =
      ParseJson<forq::v1::SubmitResponse>(c.body).task().id();
  c = RunCurl("POST", absl::StrCat("/v1/tasks/", slow, ":cancel"));
  ASSERT_EQ(c.http_code, 200) << c.body;
  c = RunCurl("GET", absl::StrCat("/v1/tasks/", slow, ":wait?timeout=30s"));
  ASSERT_EQ(c.http_code, 200) << c.body;
  EXPECT_THAT(c.body, HasSubstr("\"state\":\"CANCELLED\""));
  // Cancelling a finished task is a state conflict.
  c = RunCurl("POST", absl::StrCat("/v1/tasks/", slow, ":cancel"));
  EXPECT_EQ(c.http_code, 409) << c.body;
  EXPECT_THAT(c.body, HasSubstr("\"status\":\"FAILED_PRECONDITION\""));

  c = RunCurl("GET", "/v1/tasks/no-such-task");
  EXPECT_EQ(c.http_code, 404) << c.body;
  EXPECT_THAT(c.body, HasSubstr("\"status\":\"NOT_FOUND\""));
}

TEST_F(HttpTest, MalformedBodyIs400NamingTheProblem) {
  Curl c = RunCurl("POST", "/v1/tasks", R"({"kind": "echo",)");
  EXPECT_EQ(c.http_code, 400);
  EXPECT_THAT(c.body, HasSubstr("invalid JSON body"));
  EXPECT_THAT(c.body, HasSubstr("\"status\":\"INVALID_ARGUMENT\""));

  c = RunCurl("POST", "/v1/tasks", R"({"kind":"echo","priorty":5})");
  EXPECT_EQ(c.http_code, 400);
  EXPECT_THAT(c.body, HasSubstr("priorty"));

  c = RunCurl("GET", "/v1/tasks?state=BOGUS");
  EXPECT_EQ(c.http_code, 400);
  EXPECT_THAT(c.body, HasSubstr("'state'"));
}

TEST_F(HttpTest, CurlManagerDictAndLock) {
  Curl c = RunCurl("POST", "/v1/manager/dicts/http-test:set",
                   R"({"key":"colour","value_text":"blue"})");
  ASSERT_EQ(c.http_code, 200) << c.body;
  c = RunCurl("GET", "/v1/manager/dicts/http-test/colour?text=true");
  ASSERT_EQ(c.http_code, 200) << c.body;
  EXPECT_THAT(c.body, HasSubstr("\"value_text\":\"blue\""));

  c = RunCurl("POST", "/v1/manager/sessions", R"({"ttl":"30s"})");
  ASSERT_EQ(c.http_code, 200) << c.body;
  const size_t at = c.body.find("\"session\":\"");
  ASSERT_NE(at, std::string::npos) << c.body;
  const std::string session =
      c.body.substr(at + 11, c.body.find('"', at + 11) - at - 11);
  const std::string lock_body =
      absl::StrCat(R"({"session":")", session, R"(","timeout":"5s"})");
  c = RunCurl("POST", "/v1/manager/locks/http-lock:acquire", lock_body);
  ASSERT_EQ(c.http_code, 200) << c.body;
  EXPECT_THAT(c.body, HasSubstr("\"acquired\":true"));
  c = RunCurl("POST", "/v1/manager/locks/http-lock:release", lock_body);
  EXPECT_EQ(c.http_code, 200) << c.body;
}

TEST_F(HttpTest, ThousandConcurrentWaitsUseFewThreads) {
  constexpr int kWaiters = 1000;
  auto submit = HttpCall(forqd_->http_address(), "POST", "/v1/tasks",
                         R"({"kind":"sleep","payload_text":"4000"})");
  ASSERT_THAT(submit, IsOk());
  ASSERT_EQ(submit->status, 200) << submit->body;
  const std::string id =
      ParseJson<forq::v1::SubmitResponse>(submit->body).task().id();

  namespace net = boost::asio;
  namespace beast = boost::beast;
  namespace http = beast::http;
  net::io_context ioc;
  struct Conn {
    explicit Conn(net::io_context& ioc) : stream(ioc) {}
    beast::tcp_stream stream;
    http::request<http::empty_body> req;
    beast::flat_buffer buffer;
    http::response<http::string_body> res;
  };
  auto [host, port] = server::testing::SplitHostPort(forqd_->http_address());
  const net::ip::tcp::endpoint ep(net::ip::make_address(host),
                                  static_cast<uint16_t>(std::stoi(port)));
  std::vector<std::unique_ptr<Conn>> conns;
  std::atomic<int> ok{0}, failed{0};
  for (int i = 0; i < kWaiters; ++i) {
    auto c = std::make_unique<Conn>(ioc);
    Conn* raw = c.get();
    raw->req = {http::verb::get,
                absl::StrCat("/v1/tasks/", id, ":wait?timeout=60s"), 11};
    raw->req.set(http::field::host, host);
    raw->stream.expires_after(std::chrono::seconds(90));
    raw->stream.async_connect(ep, [raw, &ok, &failed](beast::error_code ec) {
      if (ec) {
        ++failed;
        return;
      }
      http::async_write(
          raw->stream, raw->req,
          [raw, &ok, &failed](beast::error_code ec, size_t) {
            if (ec) {
              ++failed;
              return;
            }
            http::async_read(
                raw->stream, raw->buffer, raw->res,
                [raw, &ok, &failed](beast::error_code ec, size_t) {
                  if (!ec && raw->res.result_int() == 200 &&
                      absl::StrContains(raw->res.body(), "\"done\":true")) {
                    ++ok;
                  } else {
                    ++failed;
                  }
                });
          });
    });
    conns.push_back(std::move(c));
  }
  std::atomic<bool> running{true};
  std::atomic<int> max_threads{0};
  std::thread sampler([&] {
    while (running.load()) {
      max_threads = std::max(max_threads.load(), ThreadCount(forqd_->pid()));
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  });
  ioc.run();  // returns when every exchange has finished
  running = false;
  sampler.join();
  EXPECT_EQ(ok.load(), kWaiters) << "failed: " << failed.load();
  EXPECT_GT(max_threads.load(), 0);
  EXPECT_LT(max_threads.load(), 64);
  std::cout << "forqd max threads with " << kWaiters
            << " waiters: " << max_threads.load() << "\n";
}

TEST_F(HttpTest, HealthReadyMetricsAndOpenApi) {
  Curl c = RunCurl("GET", "/healthz");
  EXPECT_EQ(c.http_code, 200);
  EXPECT_EQ(c.body, R"({"status":"ok"})");
  c = RunCurl("GET", "/readyz");
  EXPECT_EQ(c.http_code, 200) << c.body;
  c = RunCurl("GET", "/metrics");
  EXPECT_EQ(c.http_code, 200);
  EXPECT_THAT(c.body, HasSubstr("forq_http_requests_total"));
  c = RunCurl("GET", "/openapi.yaml");
  EXPECT_EQ(c.http_code, 200);
  EXPECT_THAT(c.body, HasSubstr("TaskService_Submit"));
}

}  // namespace
}  // namespace forq
