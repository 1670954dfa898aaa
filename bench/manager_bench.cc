// manager_bench: throughput of forqd's Manager from libforq, pipelined
// (ManagerService.Session, many operations in flight) and unary, against
// a real forqd on loopback. Prints lines in the peers' format:
//   RESULT <tab> system <tab> operation <tab> unit <tab> value
// Usage: manager_bench [--seconds S] [--inflight N] [--clients N]
//                      [--durability none|batch|sync] [--unix]
//   --unix: forqd serves gRPC on a Unix socket (--grpc_addr=unix:PATH) and
//           every client connects there instead of to 127.0.0.1
//        manager_bench --child ADDRESS SECONDS INFLIGHT   (internal)
#include <stdio.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

#include "forq/client.h"
#include "forq/manager.h"
#include "tests/testing/forqd_process.h"

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
  std::exit(1);
}

// Keeps `inflight` operations outstanding for `seconds`; returns ops/s.
template <typename Send>
double Pipelined(double seconds, int inflight, Send send) {
  std::deque<ManagerFuture> window;
  int64_t done = 0;
  const absl::Time start = absl::Now();
  const absl::Time end = start + absl::Seconds(seconds);
  int64_t i = 0;
  while (true) {
    while (static_cast<int>(window.size()) < inflight) {
      window.push_back(send(i++));
    }
    absl::StatusOr<v1::ManagerResult> r = window.front().Get();
    window.pop_front();
    if (!r.ok()) Die(r.status(), "pipelined op");
    ++done;
    // Checking the clock every op would cost more than the op itself.
    if ((done & 255) == 0 && absl::Now() >= end) break;
  }
  for (ManagerFuture& f : window) (void)f.Get();
  return static_cast<double>(done) / absl::ToDoubleSeconds(absl::Now() - start);
}

// Runs `op` back to back for `seconds`; returns calls/s.
template <typename Op>
double Sequential(double seconds, Op op) {
  int64_t done = 0;
  const absl::Time start = absl::Now();
  const absl::Time end = start + absl::Seconds(seconds);
  while (true) {
    op();
    ++done;
    if ((done & 63) == 0 && absl::Now() >= end) break;
  }
  return static_cast<double>(done) / absl::ToDoubleSeconds(absl::Now() - start);
}

std::unique_ptr<Manager> Connect(const std::string& address, bool pipelined) {
  ClientOptions co;
  co.address = address;
  absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(co);
  if (!c.ok()) Die(c.status(), "connect");
  ManagerOptions mo;
  mo.pipelined = pipelined;
  mo.client_name = "manager_bench";
  return std::make_unique<Manager>((*c)->channel(), mo);
}

void Fill(Manager& m) {
  std::map<std::string, std::string> items;
  for (int k = 0; k < 1024; ++k) items[absl::StrCat(k)] = absl::StrCat(k);
  absl::Status s = m.dict("bench").Update(items);
  if (!s.ok()) Die(s, "fill dict");
}

int Child(const std::string& address, double seconds, int inflight) {
  std::unique_ptr<Manager> m = Connect(address, true);
  Dict d = m->dict("bench");
  const double rate =
      Pipelined(seconds, inflight, [&d](int64_t) { return d.GetAsync("7"); });
  std::printf("%.6g\n", rate);
  return 0;
}

int Main(int argc, char** argv) {
  double seconds = 2;
  int inflight = 64;
  int clients = 16;
  std::string durability = "none";
  bool unix_socket = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) Die(absl::InvalidArgumentError(a), "missing value");
      return argv[++i];
    };
    if (a == "--child" && i + 3 < argc) {
      double s = 0;
      int n = 0;
      if (!absl::SimpleAtod(argv[i + 2], &s) ||
          !absl::SimpleAtoi(argv[i + 3], &n)) {
        Die(absl::InvalidArgumentError("--child ADDRESS SECONDS INFLIGHT"),
            "usage");
      }
      return Child(argv[i + 1], s, n);
    } else if (a == "--seconds") {
      if (!absl::SimpleAtod(next(), &seconds)) Die({}, "--seconds");
    } else if (a == "--inflight") {
      if (!absl::SimpleAtoi(next(), &inflight)) Die({}, "--inflight");
    } else if (a == "--clients") {
      if (!absl::SimpleAtoi(next(), &clients)) Die({}, "--clients");
    } else if (a == "--durability") {
      durability = next();
    } else if (a == "--unix") {
      unix_socket = true;
    } else {
      Die(absl::InvalidArgumentError(a), "unknown flag");
    }
  }

  testing::ForqdOptions o;
  o.workers = 1;
  o.flags = {absl::StrCat("--durability=", durability), "--log_level=warn"};
  std::string socket_dir;
  if (unix_socket) {
    socket_dir = testing::MakeTempDir("manager-bench");
    if (socket_dir.empty()) Die(absl::InternalError("mkdtemp"), "--unix");
    o.flags.push_back(absl::StrCat("--grpc_addr=unix:", socket_dir, "/s"));
  }
  absl::StatusOr<std::unique_ptr<testing::ForqdProcess>> forqd =
      testing::ForqdProcess::Start(o);
  if (!forqd.ok()) Die(forqd.status(), "start forqd");
  const std::string address = unix_socket
                                  ? absl::StrCat("unix:", socket_dir, "/s")
                                  : (*forqd)->grpc_address();
  std::fprintf(stderr, "# forqd at %s, --durability=%s, %d in flight\n",
               address.c_str(), durability.c_str(), inflight);

  {
    std::unique_ptr<Manager> m = Connect(address, true);
    Fill(*m);
    Dict d = m->dict("bench");
    const std::string label = absl::StrCat(" (pipelined session, 1 client, ",
                                           inflight, " in flight)");
    Result(absl::StrCat("dict d[k]=v", label), "ops/s",
           Pipelined(seconds, inflight, [&d](int64_t i) {
             return d.SetAsync(absl::StrCat(i & 1023), absl::StrCat(i));
           }));
    Result(absl::StrCat("dict d[k] get", label), "ops/s",
           Pipelined(seconds, inflight,
                     [&d](int64_t) { return d.GetAsync("7"); }));
    Result("dict d[k] get (session, 1 in flight)", "ops/s",
           Sequential(seconds, [&d] {
             if (!d.Get("7").ok()) Die({}, "get");
           }));
    Lock lk = m->lock("bench-lock");
    Result("Lock acquire+release pair (session, 1 client)", "pairs/s",
           Sequential(seconds, [&lk] {
             if (!lk.Acquire().ok() || !lk.Release().ok()) Die({}, "lock");
           }));
  }
  {
    std::unique_ptr<Manager> m = Connect(address, false);
    Dict d = m->dict("bench");
    Result("dict d[k] get (unary, 1 client)", "ops/s",
           Sequential(seconds, [&d] {
             if (!d.Get("7").ok()) Die({}, "get");
           }));
    Lock lk = m->lock("bench-lock");
    Result("Lock acquire+release pair (unary, 1 client)", "pairs/s",
           Sequential(seconds, [&lk] {
             if (!lk.Acquire().ok() || !lk.Release().ok()) Die({}, "lock");
           }));
  }
  if (clients > 0) {
    // Separate processes, as Python's bench runs separate client processes.
    std::vector<FILE*> kids;
    const std::string cmd = absl::StrCat("/proc/", getpid(), "/exe --child ",
                                         address, " ", seconds, " ", inflight);
    for (int i = 0; i < clients; ++i) {
      FILE* f = popen(cmd.c_str(), "r");
      if (f == nullptr) Die(absl::InternalError("popen"), "spawn client");
      kids.push_back(f);
    }
    double total = 0;
    for (FILE* f : kids) {
      double rate = 0;
      if (std::fscanf(f, "%lf", &rate) == 1) total += rate;
      pclose(f);
    }
    Result(absl::StrCat("dict d[k] get (pipelined, ", clients,
                        " client procs, total)"),
           "ops/s", total);
  }
  forqd->reset();
  if (!socket_dir.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(socket_dir, ec);
  }
  return 0;
}

}  // namespace
}  // namespace forq

int main(int argc, char** argv) { return forq::Main(argc, argv); }
