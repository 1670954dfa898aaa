// manager_bench: throughput of forqd's Manager from libforq, pipelined
// (ManagerService.Session, many operations in flight) and unary, against
// a real forqd on loopback. Prints lines in the peers' format:
//   RESULT <tab> system <tab> operation <tab> unit <tab> value
// Usage: manager_bench [--seconds S] [--inflight N] [--clients N]
//                      [--durability none|batch|sync] [--unix]
//                      [--address ADDR] [--ops N] [--only SECTION,...]
//   --unix: forqd serves gRPC on a Unix socket (--grpc_addr=unix:PATH) and
//           every client connects there instead of to 127.0.0.1
//   --address: use a running forqd (e.g. one under callgrind) instead of
//           starting one
//   --ops: run each section for exactly N operations (pairs) instead of
//           --seconds: a fixed amount of work for instruction counts
//   --only: sections to run: set, get, get1, lock1, uget, ulock, lget and
//           llock (over forqd's local Manager socket, --manager_socket),
//           clients, echo (the floor: unary calls to a bare gRPC callback
//           server, over TCP and over a Unix socket, in a child process)
//   The client processes of `clients` start together at one instant and
//   count what completes in the same window, so their sum is a rate.
//        manager_bench --child=ADDRESS --child_start_ns=NS --seconds=S
//                      --inflight=N (internal: one client process)
//        manager_bench --serve_echo=DIR (internal)
#include <signal.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include <grpcpp/grpcpp.h>

#include "common/release_build.h"
#include "forq/client.h"
#include "forq/manager.h"
#include "forq/v1/manager.grpc.pb.h"
#include "tests/testing/forqd_process.h"

ABSL_FLAG(double, seconds, 2, "length of each section's run");
ABSL_FLAG(int, inflight, 64, "operations in flight on a pipelined session");
ABSL_FLAG(int, clients, 16, "client processes of the `clients` section");
ABSL_FLAG(std::string, durability, "none", "forqd --durability");
ABSL_FLAG(bool, unix, false,
          "forqd serves gRPC on a Unix socket and clients connect there");
ABSL_FLAG(std::string, address, "",
          "a running forqd to use instead of starting one");
ABSL_FLAG(int64_t, ops, 0,
          "run each section for exactly this many operations (0: --seconds)");
ABSL_FLAG(std::string, only,
          "set,get,get1,lock1,uget,ulock,lget,llock,clients,echo",
          "sections to run, comma-separated");
ABSL_FLAG(std::string, child, "",
          "internal: run as one client process of `clients` against this "
          "address");
ABSL_FLAG(int64_t, child_start_ns, 0,
          "internal: when a client process starts counting (Unix ns)");
ABSL_FLAG(std::string, serve_echo, "",
          "internal: serve the bare gRPC echo on a socket in this directory");

namespace forq {
namespace {

constexpr char kSystem[] = "forq Manager";

void Result(absl::string_view op, absl::string_view unit, double value) {
  std::printf("RESULT\t%s\t%s\t%s\t%.6g\n", kSystem, std::string(op).c_str(),
              std::string(unit).c_str(), value);
  std::fflush(stdout);
}

[[noreturn]] void Die(const absl::Status& s, absl::string_view what) {
  std::fprintf(stderr, "manager_bench: %s: %s\n", std::string(what).c_str(),
               s.ToString().c_str());
  std::_Exit(1);
}

// How long a section runs: until `end`, or exactly `ops` operations.
struct Limit {
  absl::Time end = absl::InfiniteFuture();
  int64_t ops = 0;  // 0 = no count limit
  bool Reached(int64_t done, int64_t mask) const {
    if (ops > 0) return done >= ops;
    // Checking the clock every op would cost more than the op itself.
    return (done & mask) == 0 && absl::Now() >= end;
  }
};

Limit For(double seconds, int64_t ops) {
  Limit l;
  l.ops = ops;
  if (ops == 0) l.end = absl::Now() + absl::Seconds(seconds);
  return l;
}

// Keeps `inflight` operations outstanding until `limit`; returns how many
// completed (their results checked).
template <typename Send>
int64_t PipelinedCount(const Limit& limit, int inflight, Send send) {
  std::deque<ManagerFuture> window;
  int64_t done = 0;
  int64_t i = 0;
  while (true) {
    while (static_cast<int>(window.size()) < inflight &&
           (limit.ops == 0 || i < limit.ops)) {
      window.push_back(send(i++));
    }
    absl::StatusOr<v1::ManagerResult> r = window.front().Get();
    window.pop_front();
    if (!r.ok()) Die(r.status(), "pipelined op");
    ++done;
    if (limit.Reached(done, 255)) break;
  }
  for (ManagerFuture& f : window) (void)f.Get();
  return done;
}

template <typename Send>
double Pipelined(double seconds, int64_t ops, int inflight, Send send) {
  const absl::Time start = absl::Now();
  const int64_t done = PipelinedCount(For(seconds, ops), inflight, send);
  return static_cast<double>(done) / absl::ToDoubleSeconds(absl::Now() - start);
}

// Runs `op` back to back; returns calls/s.
template <typename Op>
double Sequential(double seconds, int64_t ops, Op op) {
  int64_t done = 0;
  const absl::Time start = absl::Now();
  const Limit limit = For(seconds, ops);
  while (true) {
    op();
    ++done;
    if (limit.Reached(done, 63)) break;
  }
  return static_cast<double>(done) / absl::ToDoubleSeconds(absl::Now() - start);
}

std::unique_ptr<Manager> Connect(const std::string& address, bool pipelined,
                                 const std::string& local_socket = "") {
  ClientOptions co;
  co.address = address;
  absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(co);
  if (!c.ok()) Die(c.status(), "connect");
  ManagerOptions mo;
  mo.pipelined = pipelined;
  mo.client_name = "manager_bench";
  mo.local_socket = local_socket;
  return std::make_unique<Manager>((*c)->channel(), mo);
}

void Fill(Manager& m) {
  std::map<std::string, std::string> items;
  for (int k = 0; k < 1024; ++k) items[absl::StrCat(k)] = absl::StrCat(k);
  absl::Status s = m.dict("bench").Update(items);
  if (!s.ok()) Die(s, "fill dict");
}

// One of the client processes: connects, waits for the common start
// instant, then counts the gets that complete before the common end.
int Child(const std::string& address, int64_t start_ns, double seconds,
          int inflight) {
  std::unique_ptr<Manager> m = Connect(address, true);
  Dict d = m->dict("bench");
  if (!d.Get("7").ok()) Die({}, "warm-up get");  // stream open
  const absl::Time start = absl::FromUnixNanos(start_ns);
  // A start line for the benchmark's processes, not synchronisation of
  // the code under test.
  if (absl::Now() < start) absl::SleepFor(start - absl::Now());
  Limit limit;
  limit.end = start + absl::Seconds(seconds);
  const int64_t done = PipelinedCount(
      limit, inflight, [&d](int64_t) { return d.GetAsync("7"); });
  std::printf("%lld\n", static_cast<long long>(done));
  return 0;
}

// The floor of a unary call: ManagerService.Call answered at once from the
// callback thread (no interceptor, no forq code).
class EchoService final : public v1::ManagerService::CallbackService {
  grpc::ServerUnaryReactor* Call(grpc::CallbackServerContext* ctx,
                                 const v1::ManagerCall* req,
                                 v1::ManagerResult* resp) override {
    resp->set_value(req->key());
    grpc::ServerUnaryReactor* r = ctx->DefaultReactor();
    r->Finish(grpc::Status::OK);
    return r;
  }
};

// Child mode (--serve_echo=DIR): serves EchoService on a free loopback port
// and on unix:DIR/echo, prints the port and its pid, and runs until killed
// (or until its parent dies).
int ServeEcho(const std::string& dir) {
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  EchoService service;
  grpc::ServerBuilder b;
  int port = 0;
  b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  b.AddListeningPort(absl::StrCat("unix:", dir, "/echo"),
                     grpc::InsecureServerCredentials());
  b.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = b.BuildAndStart();
  if (server == nullptr || port == 0) return 1;
  std::printf("%d %d\n", port, static_cast<int>(getpid()));
  std::fflush(stdout);
  pause();
  return 0;
}

// Unary echo calls/s over TCP and over a Unix socket, one after the other,
// through channels made as forq::Client makes its channel.
void Echo(double seconds, int64_t ops) {
  const std::string dir = testing::MakeTempDir("manager-echo");
  if (dir.empty()) Die(absl::InternalError("mkdtemp"), "echo");
  const std::string cmd =
      absl::StrCat("exec /proc/", getpid(), "/exe --serve_echo=", dir);
  FILE* child = popen(cmd.c_str(), "r");
  int port = 0, pid = 0;
  if (child == nullptr || std::fscanf(child, "%d %d", &port, &pid) != 2) {
    Die(absl::InternalError("no port"), "echo server");
  }
  for (const std::string& target : {absl::StrCat("127.0.0.1:", port),
                                    absl::StrCat("unix:", dir, "/echo")}) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    auto stub = v1::ManagerService::NewStub(grpc::CreateCustomChannel(
        target, grpc::InsecureChannelCredentials(), args));
    v1::ManagerCall req = Manager::MakeCall(v1::OBJECT_TYPE_DICT, "get", "d");
    req.set_key("7");
    auto call = [&] {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(30));
      v1::ManagerResult resp;
      if (!stub->Call(&ctx, req, &resp).ok() || resp.value() != "7") {
        Die(absl::InternalError(target), "echo call");
      }
    };
    for (int i = 0; i < 200; ++i) call();  // connect and warm up
    const bool unix_socket = absl::StartsWith(target, "unix:");
    Result(unix_socket ? "bare gRPC unary echo (Unix socket)"
                       : "bare gRPC unary echo (TCP)",
           "calls/s", Sequential(seconds, ops, call));
  }
  // The child (popen's shell exec'd into it) waits in pause().
  kill(pid, SIGTERM);
  pclose(child);
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

int Main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "throughput of forqd's Manager from libforq; see the top of "
      "bench/manager_bench.cc");
  absl::ParseCommandLine(argc, argv);
  // As forqd: the client, its child clients and the echo floor.
  SkipDeadlockDetectionInReleaseBuilds();
  if (const std::string dir = absl::GetFlag(FLAGS_serve_echo); !dir.empty()) {
    return ServeEcho(dir);
  }
  const double seconds = absl::GetFlag(FLAGS_seconds);
  const int inflight = absl::GetFlag(FLAGS_inflight);
  if (const std::string parent = absl::GetFlag(FLAGS_child); !parent.empty()) {
    return Child(parent, absl::GetFlag(FLAGS_child_start_ns), seconds,
                 inflight);
  }
  const int clients = absl::GetFlag(FLAGS_clients);
  const std::string durability = absl::GetFlag(FLAGS_durability);
  const bool unix_socket = absl::GetFlag(FLAGS_unix);
  std::string address = absl::GetFlag(FLAGS_address);
  const int64_t ops = absl::GetFlag(FLAGS_ops);
  const std::string only = absl::GetFlag(FLAGS_only);
  if (seconds <= 0 || inflight < 1 || clients < 0 || ops < 0) {
    Die(absl::InvalidArgumentError(
            "--seconds and --inflight must be positive, --clients and --ops "
            "not negative"),
        "flags");
  }

  const std::set<std::string> sections = absl::StrSplit(only, ',');
  auto run = [&sections](const char* name) { return sections.count(name) > 0; };
  std::unique_ptr<testing::ForqdProcess> forqd;
  std::string socket_dir;
  std::string local_socket;
  if (address.empty()) {
    testing::ForqdOptions o;
    o.workers = 1;
    o.flags = {absl::StrCat("--durability=", durability), "--log_level=warn"};
    socket_dir = testing::MakeTempDir("manager-bench");
    if (socket_dir.empty()) Die(absl::InternalError("mkdtemp"), "sockets");
    local_socket = absl::StrCat(socket_dir, "/manager.sock");
    o.flags.push_back(absl::StrCat("--manager_socket=", local_socket));
    if (unix_socket) {
      o.flags.push_back(absl::StrCat("--grpc_addr=unix:", socket_dir, "/s"));
    }
    absl::StatusOr<std::unique_ptr<testing::ForqdProcess>> started =
        testing::ForqdProcess::Start(o);
    if (!started.ok()) Die(started.status(), "start forqd");
    forqd = *std::move(started);
    address = unix_socket ? absl::StrCat("unix:", socket_dir, "/s")
                          : forqd->grpc_address();
  }
  std::fprintf(stderr, "# forqd at %s, --durability=%s, %d in flight\n",
               address.c_str(), durability.c_str(), inflight);

  if (run("set") || run("get") || run("get1") || run("lock1")) {
    std::unique_ptr<Manager> m = Connect(address, true);
    Fill(*m);
    Dict d = m->dict("bench");
    const std::string label = absl::StrCat(" (pipelined session, 1 client, ",
                                           inflight, " in flight)");
    if (run("set")) {
      Result(absl::StrCat("dict d[k]=v", label), "ops/s",
             Pipelined(seconds, ops, inflight, [&d](int64_t i) {
               return d.SetAsync(absl::StrCat(i & 1023), absl::StrCat(i));
             }));
    }
    if (run("get")) {
      Result(absl::StrCat("dict d[k] get", label), "ops/s",
             Pipelined(seconds, ops, inflight,
                       [&d](int64_t) { return d.GetAsync("7"); }));
    }
    if (run("get1")) {
      Result("dict d[k] get (session, 1 in flight)", "ops/s",
             Sequential(seconds, ops, [&d] {
               if (!d.Get("7").ok()) Die({}, "get");
             }));
    }
    Lock lk = m->lock("bench-lock");
    if (run("lock1")) {
      Result("Lock acquire+release pair (session, 1 client)", "pairs/s",
             Sequential(seconds, ops, [&lk] {
               if (!lk.Acquire().ok() || !lk.Release().ok()) Die({}, "lock");
             }));
    }
  }
  // One blocking call at a time without the stream: unary gRPC, or the
  // local socket.
  auto one_at_a_time = [&](const std::string& socket, const char* get,
                           const char* lock, const char* how) {
    if (!run(get) && !run(lock)) return;
    std::unique_ptr<Manager> m = Connect(address, false, socket);
    Dict d = m->dict("bench");
    if (run(get)) {
      Fill(*m);
      Result(absl::StrCat("dict d[k] get (", how, ", 1 client)"), "ops/s",
             Sequential(seconds, ops, [&d] {
               if (!d.Get("7").ok()) Die({}, "get");
             }));
    }
    Lock lk = m->lock("bench-lock");
    if (run(lock)) {
      Result(absl::StrCat("Lock acquire+release pair (", how, ", 1 client)"),
             "pairs/s", Sequential(seconds, ops, [&lk] {
               if (!lk.Acquire().ok() || !lk.Release().ok()) Die({}, "lock");
             }));
    }
  };
  one_at_a_time("", "uget", "ulock", "unary");
  if (!local_socket.empty()) {
    one_at_a_time(local_socket, "lget", "llock", "local socket");
  }
  if (run("echo")) Echo(seconds, ops);
  if (clients > 0 && run("clients")) {
    // Separate processes, as Python's bench runs separate client processes;
    // all count the same window, which starts once they all could connect.
    const absl::Time start =
        absl::Now() + absl::Milliseconds(500 + 100 * clients);
    std::vector<FILE*> kids;
    const std::string cmd =
        absl::StrCat("/proc/", getpid(), "/exe --child=", address,
                     " --child_start_ns=", absl::ToUnixNanos(start),
                     " --seconds=", seconds, " --inflight=", inflight);
    for (int i = 0; i < clients; ++i) {
      FILE* f = popen(cmd.c_str(), "r");
      if (f == nullptr) Die(absl::InternalError("popen"), "spawn client");
      kids.push_back(f);
    }
    int64_t total = 0;
    for (FILE* f : kids) {
      long long done = 0;
      if (std::fscanf(f, "%lld", &done) == 1) total += done;
      pclose(f);
    }
    Result(absl::StrCat("dict d[k] get (pipelined, ", clients,
                        " client procs, total)"),
           "ops/s", static_cast<double>(total) / seconds);
  }
  forqd.reset();
  if (!socket_dir.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(socket_dir, ec);
  }
  return 0;
}

}  // namespace
}  // namespace forq

int main(int argc, char** argv) { return forq::Main(argc, argv); }
