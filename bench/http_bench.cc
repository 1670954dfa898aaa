// REST front end benchmark: submit+wait round trips through forqd's HTTP
// gateway, next to the same loop over gRPC, against a real forqd.
//
//   http_bench [--tasks=N] [--latency_tasks=N] [--conns=C] [--workers=W]
//              [--addr=host:http_port --grpc=host:grpc_port]
//
// Without --addr it starts its own forqd (loopback, private data dir).
// Latency: one client, sequential `POST /v1/tasks` + `GET :wait` of an echo
// task on a keep-alive connection. Throughput: C connections (threads), each
// looping submit+wait, N tasks in total.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "boost/asio/connect.hpp"
#include "boost/asio/io_context.hpp"
#include "boost/asio/ip/tcp.hpp"
#include "boost/beast/core.hpp"
#include "boost/beast/http.hpp"
#include "grpcpp/grpcpp.h"

#include "forq/v1/task.grpc.pb.h"
#include "tests/testing/forqd_process.h"

ABSL_FLAG(int, tasks, 4000, "tasks in the throughput run");
ABSL_FLAG(int, latency_tasks, 1000, "tasks in the latency run");
ABSL_FLAG(int, conns, 16, "client connections in the throughput run");
ABSL_FLAG(int, workers, 2, "forqd --workers (when this starts forqd)");
ABSL_FLAG(std::string, addr, "",
          "HTTP address of a running forqd (empty: start one)");
ABSL_FLAG(std::string, grpc, "", "its gRPC address (with --addr)");

namespace {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using Clock = std::chrono::steady_clock;

struct Flags {
  int tasks = 4000;
  int latency_tasks = 1000;
  int conns = 16;
  int workers = 2;
  std::string addr;
  std::string grpc;
};

// One keep-alive HTTP/1.1 connection.
class HttpConn {
 public:
  explicit HttpConn(const std::string& addr) : stream_(ioc_) {
    const size_t colon = addr.rfind(':');
    net::ip::tcp::resolver r(ioc_);
    stream_.connect(r.resolve(addr.substr(0, colon), addr.substr(colon + 1)));
    stream_.socket().set_option(net::ip::tcp::no_delay(true));
  }

  std::string Call(http::verb verb, const std::string& target,
                   const std::string& body) {
    http::request<http::string_body> req{verb, target, 11};
    req.set(http::field::host, "bench");
    if (!body.empty()) {
      req.body() = body;
      req.set(http::field::content_type, "application/json");
    }
    req.prepare_payload();
    http::write(stream_, req);
    http::response<http::string_body> res;
    http::read(stream_, buffer_, res);
    if (res.result_int() != 200) {
      std::fprintf(stderr, "HTTP %u: %s\n", res.result_int(),
                   res.body().c_str());
      std::abort();
    }
    return std::move(res.body());
  }

  // submit + wait of one echo task.
  void SubmitWait() {
    const std::string r = Call(http::verb::post, "/v1/tasks",
                               R"({"kind":"echo","payload_text":"x"})");
    const size_t at = r.find("\"id\":\"") + 6;
    const std::string id = r.substr(at, r.find('"', at) - at);
    const std::string w =
        Call(http::verb::get,
             absl::StrCat("/v1/tasks/", id, ":wait?timeout=60s"), "");
    if (!absl::StrContains(w, "\"done\":true")) std::abort();
  }

 private:
  net::io_context ioc_;
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
};

class GrpcConn {
 public:
  explicit GrpcConn(const std::shared_ptr<grpc::Channel>& ch)
      : stub_(forq::v1::TaskService::NewStub(ch)) {}
  void SubmitWait() {
    forq::v1::SubmitRequest req;
    req.mutable_task()->set_kind("echo");
    req.mutable_task()->set_payload("x");
    forq::v1::SubmitResponse resp;
    grpc::ClientContext c1;
    if (!stub_->Submit(&c1, req, &resp).ok()) std::abort();
    forq::v1::WaitTaskRequest wreq;
    wreq.set_id(resp.task().id());
    wreq.mutable_timeout()->set_seconds(60);
    forq::v1::WaitTaskResponse wresp;
    grpc::ClientContext c2;
    if (!stub_->Wait(&c2, wreq, &wresp).ok() || !wresp.done()) std::abort();
  }

 private:
  std::unique_ptr<forq::v1::TaskService::Stub> stub_;
};

double Percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v[static_cast<size_t>(p * (v.size() - 1))];
}

template <typename Conn, typename Make>
void Run(const char* name, const Flags& f, Make make) {
  {
    auto c = make();
    for (int i = 0; i < 50; ++i) c->SubmitWait();  // warm-up
    std::vector<double> us;
    for (int i = 0; i < f.latency_tasks; ++i) {
      const auto t0 = Clock::now();
      c->SubmitWait();
      us.push_back(
          std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    }
    std::printf(
        "%s submit+wait latency (1 client, %d tasks): p50 %.0f us, "
        "p99 %.0f us\n",
        name, f.latency_tasks, Percentile(us, 0.5), Percentile(us, 0.99));
  }
  std::atomic<int> left{f.tasks};
  std::vector<std::thread> threads;
  threads.reserve(f.conns);
  const auto t0 = Clock::now();
  for (int i = 0; i < f.conns; ++i) {
    threads.emplace_back([&] {
      auto c = make();
      while (left.fetch_sub(1) > 0) c->SubmitWait();
    });
  }
  for (auto& t : threads) t.join();
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  std::printf(
      "%s submit+wait throughput (%d clients, %d tasks): %.0f "
      "tasks/s (%.2f s)\n",
      name, f.conns, f.tasks, f.tasks / secs, secs);
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "REST submit+wait against gRPC on a real forqd (or --addr's)");
  absl::ParseCommandLine(argc, argv);
  Flags f;
  f.tasks = absl::GetFlag(FLAGS_tasks);
  f.latency_tasks = absl::GetFlag(FLAGS_latency_tasks);
  f.conns = absl::GetFlag(FLAGS_conns);
  f.workers = absl::GetFlag(FLAGS_workers);
  f.addr = absl::GetFlag(FLAGS_addr);
  f.grpc = absl::GetFlag(FLAGS_grpc);
  if (f.tasks < 1 || f.latency_tasks < 1 || f.conns < 1 || f.workers < 1) {
    std::fprintf(stderr,
                 "http_bench: --tasks, --latency_tasks, --conns and --workers "
                 "must be positive\n");
    return 2;
  }
  std::unique_ptr<forq::testing::ForqdProcess> forqd;
  if (f.addr.empty()) {
    forq::testing::ForqdOptions o;
    o.workers = f.workers;
    auto p = forq::testing::ForqdProcess::Start(o);
    if (!p.ok()) {
      std::fprintf(stderr, "%s\n", p.status().ToString().c_str());
      return 1;
    }
    forqd = *std::move(p);
    f.addr = forqd->http_address();
    f.grpc = forqd->grpc_address();
  }
  Run<HttpConn>("REST", f, [&] { return std::make_unique<HttpConn>(f.addr); });
  if (!f.grpc.empty()) {
    auto ch = grpc::CreateChannel(f.grpc, grpc::InsecureChannelCredentials());
    Run<GrpcConn>("gRPC", f, [&] { return std::make_unique<GrpcConn>(ch); });
  }
  return 0;
}
