// forq_bench: end-to-end figures of a real forqd (2 workers, loopback), in
// the shapes of the peer benchmarks (mp.Pool, ProcessPoolExecutor,
// mp.Manager, Celery, RQ, Dask), so the numbers can be set side by side.
//
//   forq_bench [--sections=submit,batch,e2e,rtt,map,cpu,startup,rss,manager]
//              [--reps=3] [--seconds=2] [--n=20000] [--rtt_samples=1000]
//              [--durability=sync,batch,none] [--workers=2] [--paused]
//              [--wait=stream,rpc] [--submit=unary,batch,async]
//              [--map=batched,single] [--perf=auto|off]
//
// Every section starts its own forqd (fresh data dir on $TMPDIR, free
// loopback ports) with the flags it needs, measures, and kills it. Each
// measurement prints one line
//   RESULT<TAB>forq<TAB>operation<TAB>unit<TAB>value
// (one per repetition, like /work/shared/peers/common.py) and a LOAD line
// with /proc/loadavg; a min/median/max table closes the run.
//
// Sections:
//   submit   unary Submit from 1/4/64 threads for --seconds, per durability
//   batch    SubmitBatch of 100 from 4/64 threads, per durability
//            (--paused: Drain first, so workers take nothing: ingest only)
//   e2e      N x Submit(echo) from one thread, then Get() of every future
//            (apply_async x N then get all); also with SubmitBatch(100)
//            ("batch": each batch waits for its ack) and with
//            SubmitBatchAsync(100), 8 batches in flight ("async").
//            --wait: futures wait on the client's WaitStream ("stream", the
//            default) and/or with one Wait RPC each ("rpc", the old way)
//   rtt      Submit(echo) then Get(), --rtt_samples times: p50/p99; the
//            unary GetPool baseline; and a bare gRPC callback echo server
//            (this binary re-run as a child process, no forq code on the
//            call path) as the floor of a unary call here
//
// e2e, rtt and map also print, per task (or call), the CPU time, system
// calls and context switches of the server's whole process tree over the
// measured stretch: CPU from /proc/PID/stat, context switches from
// /proc/PID/task/TID/status (voluntary + involuntary), system calls from
// `perf stat -e raw_syscalls:sys_enter -p PIDS` (--perf=auto, when perf
// works; otherwise read+write calls only, from /proc/PID/io, marked "rw").
//   map      Map and MapUnordered over N echo inputs (default window);
//            --map=single also speaks the pre-MapBatched protocol (one input
//            and one result per message) for comparison
//   cpu      8 x primes(n) (n calibrated to ~250 ms) on 1 and 2 workers
//   startup  forqd spawn -> first echo result
//   rss      idle VmRSS and PSS of forqd and all its descendants
//   manager  Manager dict set/get and Lock acquire+release from one client
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/algorithm/container.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"

#include "forq/client.h"
#include "forq/manager.h"
#include "forq/map.h"
#include "forq/v1/task.grpc.pb.h"
#include "tests/testing/forqd_process.h"

extern char** environ;

namespace forq::bench {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

struct Flags {
  std::set<std::string> sections = {"submit", "batch",   "e2e", "rtt",    "map",
                                    "cpu",    "startup", "rss", "manager"};
  std::vector<std::string> durabilities = {"sync", "batch", "none"};
  int reps = 3;
  double seconds = 2.0;
  int n = 20'000;
  int rtt_samples = 1000;
  int workers = 2;
  // submit/batch: Drain first, so only ingest is measured (no dispatch).
  bool paused = false;
  // e2e: how futures wait ("stream": WaitStream; "rpc": a Wait RPC each).
  std::vector<std::string> waits = {"stream"};
  // e2e: how tasks are submitted ("unary": Submit each; "batch":
  // SubmitBatch of 100).
  std::vector<std::string> submits = {"unary", "batch", "async"};
  // map: "batched" (the client library: MapBatched, many inputs and
  // results per message) and/or "single" (one per message, the old way).
  std::vector<std::string> maps = {"batched"};
  // Count system calls with perf when it works.
  bool perf = true;
};

bool ParseFlags(int argc, char** argv, Flags* f) {
  for (int i = 1; i < argc; ++i) {
    absl::string_view a = argv[i];
    if (absl::ConsumePrefix(&a, "--sections=")) {
      f->sections.clear();
      for (absl::string_view s : absl::StrSplit(a, ',', absl::SkipEmpty())) {
        f->sections.insert(std::string(s));
      }
    } else if (absl::ConsumePrefix(&a, "--durability=")) {
      f->durabilities = absl::StrSplit(a, ',', absl::SkipEmpty());
    } else if (absl::ConsumePrefix(&a, "--reps=")) {
      if (!absl::SimpleAtoi(a, &f->reps) || f->reps < 1) return false;
    } else if (absl::ConsumePrefix(&a, "--seconds=")) {
      if (!absl::SimpleAtod(a, &f->seconds) || f->seconds <= 0) return false;
    } else if (absl::ConsumePrefix(&a, "--n=")) {
      if (!absl::SimpleAtoi(a, &f->n) || f->n < 1) return false;
    } else if (absl::ConsumePrefix(&a, "--rtt_samples=")) {
      if (!absl::SimpleAtoi(a, &f->rtt_samples) || f->rtt_samples < 1) {
        return false;
      }
    } else if (absl::ConsumePrefix(&a, "--wait=")) {
      f->waits = absl::StrSplit(a, ',', absl::SkipEmpty());
      for (const std::string& w : f->waits) {
        if (w != "stream" && w != "rpc") return false;
      }
    } else if (absl::ConsumePrefix(&a, "--submit=")) {
      f->submits = absl::StrSplit(a, ',', absl::SkipEmpty());
      for (const std::string& m : f->submits) {
        if (m != "unary" && m != "batch" && m != "async") return false;
      }
    } else if (absl::ConsumePrefix(&a, "--map=")) {
      f->maps = absl::StrSplit(a, ',', absl::SkipEmpty());
      for (const std::string& m : f->maps) {
        if (m != "batched" && m != "single") return false;
      }
    } else if (absl::ConsumePrefix(&a, "--perf=")) {
      if (a != "auto" && a != "off") return false;
      f->perf = a == "auto";
    } else if (a == "--paused") {
      f->paused = true;
    } else if (absl::ConsumePrefix(&a, "--workers=")) {
      if (!absl::SimpleAtoi(a, &f->workers) || f->workers < 1) return false;
    } else {
      return false;
    }
  }
  return true;
}

std::string LoadAvg() {
  std::ifstream in("/proc/loadavg");
  std::string a, b, c;
  in >> a >> b >> c;
  return absl::StrCat(a, " ", b, " ", c);
}

double Load1() {
  std::ifstream in("/proc/loadavg");
  double l = 0;
  in >> l;
  return l;
}

// Collects samples per (operation, unit) for the closing table.
class Results {
 public:
  void Add(const std::string& op, const std::string& unit, double value) {
    std::printf("RESULT\tforq\t%s\t%s\t%.6g\n", op.c_str(), unit.c_str(),
                value);
    std::fflush(stdout);
    auto key = std::make_pair(op, unit);
    if (samples_.find(key) == samples_.end()) order_.push_back(key);
    samples_[key].push_back(value);
    loads_[key].push_back(Load1());
  }

  void PrintTable() const {
    std::printf(
        "\n| operation | unit | min | median | max | n | load1 min-max "
        "|\n|---|---|---:|---:|---:|---:|---|\n");
    for (const auto& key : order_) {
      std::vector<double> v = samples_.at(key);
      std::vector<double> l = loads_.at(key);
      std::sort(v.begin(), v.end());
      std::sort(l.begin(), l.end());
      std::printf("| %s | %s | %s | %s | %s | %zu | %.2f-%.2f |\n",
                  key.first.c_str(), key.second.c_str(), Fmt(v.front()).c_str(),
                  Fmt(Median(v)).c_str(), Fmt(v.back()).c_str(), v.size(),
                  l.front(), l.back());
    }
  }

 private:
  static double Median(const std::vector<double>& v) {
    const size_t n = v.size();
    return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
  }
  static std::string Fmt(double x) {
    char buf[64];
    if (std::fabs(x) >= 1000) {
      std::snprintf(buf, sizeof(buf), "%.0f", x);
    } else if (std::fabs(x) >= 10) {
      std::snprintf(buf, sizeof(buf), "%.1f", x);
    } else {
      std::snprintf(buf, sizeof(buf), "%.3g", x);
    }
    return buf;
  }

  std::vector<std::pair<std::string, std::string>> order_;
  std::map<std::pair<std::string, std::string>, std::vector<double>> samples_;
  std::map<std::pair<std::string, std::string>, std::vector<double>> loads_;
};

Results* g_results = nullptr;

void Note(const std::string& msg) {
  std::fprintf(stderr, "# %s\n", msg.c_str());
}

// A running forqd plus a connected client.
struct Server {
  std::unique_ptr<testing::ForqdProcess> forqd;
  std::unique_ptr<Client> client;
};

absl::StatusOr<Server> StartServer(int workers, const std::string& durability,
                                   bool wait_stream = true) {
  testing::ForqdOptions o;
  o.workers = workers;
  o.flags = {absl::StrCat("--durability=", durability), "--log_level=warn"};
  auto p = testing::ForqdProcess::Start(o);
  if (!p.ok()) return p.status();
  ClientOptions co;
  co.address = (*p)->grpc_address();
  co.wait_stream = wait_stream;
  auto c = Client::Connect(co);
  if (!c.ok()) return c.status();
  Server s;
  s.forqd = std::move(*p);
  s.client = std::move(*c);
  // Warm up: workers forked and idle, connections open.
  for (int i = 0; i < 50; ++i) {
    auto f = s.client->Submit("echo", "warm");
    if (!f.ok()) return f.status();
    auto r = f->Get();
    if (!r.ok()) return r.status();
  }
  return s;
}

// Nearest-rank percentile of sorted values.
double Pct(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  size_t k = static_cast<size_t>(std::ceil(p * sorted.size() / 100.0));
  k = std::max<size_t>(1, std::min(k, sorted.size()));
  return sorted[k - 1];
}

// All descendants of `pid` (children of every thread).
void Descendants(int pid, std::vector<int>* out) {
  DIR* dir = opendir(absl::StrCat("/proc/", pid, "/task").c_str());
  if (dir == nullptr) return;
  std::vector<int> kids;
  while (dirent* e = readdir(dir)) {
    if (e->d_name[0] == '.') continue;
    std::ifstream in(
        absl::StrCat("/proc/", pid, "/task/", e->d_name, "/children"));
    int k;
    while (in >> k) kids.push_back(k);
  }
  closedir(dir);
  for (int k : kids) {
    out->push_back(k);
    Descendants(k, out);
  }
}

// forqd and its descendants.
std::vector<int> Tree(int pid) {
  std::vector<int> pids = {pid};
  Descendants(pid, &pids);
  return pids;
}

// user + system CPU seconds used so far by `pids` (all threads).
double CpuSeconds(const std::vector<int>& pids) {
  static const double tick = static_cast<double>(sysconf(_SC_CLK_TCK));
  double total = 0;
  for (int pid : pids) {
    std::ifstream in(absl::StrCat("/proc/", pid, "/stat"));
    std::string stat((std::istreambuf_iterator<char>(in)),
                     std::istreambuf_iterator<char>());
    const size_t close = stat.rfind(')');
    if (close == std::string::npos) continue;
    std::vector<std::string> f =
        absl::StrSplit(stat.substr(close + 2), ' ', absl::SkipEmpty());
    // Fields after ")": state is [0], utime [11], stime [12].
    int64_t ut = 0, st = 0;
    if (f.size() > 12 && absl::SimpleAtoi(f[11], &ut) &&
        absl::SimpleAtoi(f[12], &st)) {
      total += (ut + st) / tick;
    }
  }
  return total;
}

// Sum of the numbers after `key` in /proc/PID/task/*/status of `pids`.
int64_t SumThreadStatus(const std::vector<int>& pids,
                        const std::vector<absl::string_view>& keys) {
  int64_t total = 0;
  for (int pid : pids) {
    DIR* dir = opendir(absl::StrCat("/proc/", pid, "/task").c_str());
    if (dir == nullptr) continue;
    while (dirent* e = readdir(dir)) {
      if (e->d_name[0] == '.') continue;
      std::ifstream in(
          absl::StrCat("/proc/", pid, "/task/", e->d_name, "/status"));
      std::string line;
      while (std::getline(in, line)) {
        absl::string_view l = line;
        for (absl::string_view k : keys) {
          if (!absl::ConsumePrefix(&l, k)) continue;
          int64_t v = 0;
          if (absl::SimpleAtoi(absl::StripAsciiWhitespace(l), &v)) total += v;
        }
      }
    }
    closedir(dir);
  }
  return total;
}

// read + write system calls of `pids` (/proc/PID/io, whole processes).
int64_t SumReadWriteCalls(const std::vector<int>& pids) {
  int64_t total = 0;
  for (int pid : pids) {
    std::ifstream in(absl::StrCat("/proc/", pid, "/io"));
    std::string line;
    while (std::getline(in, line)) {
      absl::string_view l = line;
      if (absl::ConsumePrefix(&l, "syscr:") ||
          absl::ConsumePrefix(&l, "syscw:")) {
        int64_t v = 0;
        if (absl::SimpleAtoi(absl::StripAsciiWhitespace(l), &v)) total += v;
      }
    }
  }
  return total;
}

// Counters of a server's process tree over one measured stretch: CPU,
// context switches and system calls (see the top of this file).
class Probe {
 public:
  Probe(int root_pid, bool use_perf) : pids_(Tree(root_pid)) {
    if (use_perf) StartPerf();
    cpu0_ = CpuSeconds(pids_);
    ctx0_ = Ctx();
    rw0_ = SumReadWriteCalls(pids_);
  }
  ~Probe() { StopPerf(); }

  // Records "<what>: <server> CPU/syscalls/context switches per <unit>".
  void Report(const std::string& what, const std::string& server, double n,
              const std::string& unit = "task") {
    const double cpu = CpuSeconds(pids_) - cpu0_;
    const double ctx = static_cast<double>(Ctx() - ctx0_);
    const int64_t rw = SumReadWriteCalls(pids_) - rw0_;
    const int64_t sys = StopPerf();
    g_results->Add(absl::StrCat(what, ": ", server, " CPU per ", unit), "us",
                   cpu * 1e6 / n);
    g_results->Add(
        absl::StrCat(what, ": ", server, " context switches per ", unit),
        "switches", ctx / n);
    if (sys >= 0) {
      g_results->Add(absl::StrCat(what, ": ", server, " syscalls per ", unit),
                     "calls", sys / n);
    } else {
      g_results->Add(
          absl::StrCat(what, ": ", server, " read+write syscalls per ", unit,
                       " (rw: no perf)"),
          "calls", rw / n);
    }
  }

 private:
  int64_t Ctx() const {
    return SumThreadStatus(
        pids_, {"voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:"});
  }

  void StartPerf() {
    out_ = absl::StrCat(getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp",
                        "/forq_bench_perf.", getpid(), ".txt");
    std::vector<std::string> args = {"perf", "stat",
                                     "-x",   ",",
                                     "-e",   "raw_syscalls:sys_enter",
                                     "-o",   out_,
                                     "-p",   absl::StrJoin(pids_, ",")};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    pid_t pid = -1;
    if (posix_spawnp(&pid, "perf", &fa, nullptr, argv.data(), environ) == 0) {
      perf_pid_ = pid;
      // perf attaches to every thread before it counts; there is no
      // handshake to wait for, so give it a moment.
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
    }
    posix_spawn_file_actions_destroy(&fa);
  }

  // Stops perf; the syscall count, or -1 without perf.
  int64_t StopPerf() {
    if (perf_pid_ <= 0) return -1;
    kill(perf_pid_, SIGINT);
    int status = 0;
    waitpid(perf_pid_, &status, 0);
    perf_pid_ = -1;
    std::ifstream in(out_);
    std::string line;
    int64_t count = -1;
    while (std::getline(in, line)) {
      std::vector<absl::string_view> cols = absl::StrSplit(line, ',');
      if (cols.size() > 2 && cols[2] == "raw_syscalls:sys_enter") {
        if (!absl::SimpleAtoi(cols[0], &count)) count = -1;
      }
    }
    unlink(out_.c_str());
    return count;
  }

  const std::vector<int> pids_;
  double cpu0_ = 0;
  int64_t ctx0_ = 0;
  int64_t rw0_ = 0;
  pid_t perf_pid_ = -1;
  std::string out_;
};

// The bare echo server: TaskService.Get answering {id} at once from the
// callback thread, nothing else (no interceptor, no forq code).
class EchoService final : public v1::TaskService::CallbackService {
  grpc::ServerUnaryReactor* Get(grpc::CallbackServerContext* ctx,
                                const v1::GetTaskRequest* req,
                                v1::Task* resp) override {
    resp->set_id(req->id());
    grpc::ServerUnaryReactor* r = ctx->DefaultReactor();
    r->Finish(grpc::Status::OK);
    return r;
  }
};

// Child mode (--serve_echo): serves EchoService on a free loopback port,
// prints "port=N" and runs until stdin closes.
int ServeEcho() {
  EchoService service;
  grpc::ServerBuilder b;
  int port = 0;
  b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  b.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = b.BuildAndStart();
  if (server == nullptr || port == 0) return 1;
  std::printf("port=%d\n", port);
  std::fflush(stdout);
  char c;
  while (read(0, &c, 1) > 0) {
  }
  server->Shutdown();
  return 0;
}

// A bare echo server in a child process (this binary, --serve_echo).
class EchoServer {
 public:
  static absl::StatusOr<std::unique_ptr<EchoServer>> Start() {
    int in[2], out[2];
    if (pipe(in) != 0 || pipe(out) != 0) {
      return absl::InternalError("pipe failed");
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in[0], 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_addclose(&fa, in[1]);
    posix_spawn_file_actions_addclose(&fa, out[0]);
    std::string self = "/proc/self/exe", flag = "--serve_echo";
    char* argv[] = {self.data(), flag.data(), nullptr};
    auto e = std::unique_ptr<EchoServer>(new EchoServer());
    const int rc =
        posix_spawn(&e->pid_, self.c_str(), &fa, nullptr, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(in[0]);
    close(out[1]);
    e->stdin_ = in[1];
    if (rc != 0) {
      close(out[0]);
      return absl::InternalError("cannot start the echo server");
    }
    std::string line;
    char c;
    while (read(out[0], &c, 1) == 1 && c != '\n') line += c;
    close(out[0]);
    int port = 0;
    absl::string_view l = line;
    if (!absl::ConsumePrefix(&l, "port=") || !absl::SimpleAtoi(l, &port)) {
      return absl::InternalError("echo server did not start");
    }
    e->address_ = absl::StrCat("127.0.0.1:", port);
    return e;
  }
  ~EchoServer() {
    if (stdin_ >= 0) close(stdin_);
    if (pid_ > 0) waitpid(pid_, nullptr, 0);
  }
  const std::string& address() const { return address_; }
  int pid() const { return pid_; }

 private:
  EchoServer() = default;
  pid_t pid_ = -1;
  int stdin_ = -1;
  std::string address_;
};

// Runs `threads` threads calling `op` (returns tasks done, or -1 on error)
// until `seconds` passed; returns tasks/s.
template <typename Op>
double RunTimed(int threads, double seconds, Op op, int64_t* errors) {
  std::atomic<int64_t> total{0}, errs{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> ts;
  const auto t0 = Clock::now();
  const auto deadline = t0 + std::chrono::duration_cast<Clock::duration>(
                                 std::chrono::duration<double>(seconds));
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&] {
      while (!go.load()) std::this_thread::yield();
      int64_t mine = 0, bad = 0;
      while (Clock::now() < deadline) {
        int n = op();
        if (n < 0) {
          ++bad;
        } else {
          mine += n;
        }
      }
      total += mine;
      errs += bad;
    });
  }
  const auto start = Clock::now();
  go.store(true);
  for (auto& t : ts) t.join();
  *errors = errs.load();
  return static_cast<double>(total.load()) / SecondsSince(start);
}

int SectionSubmit(const Flags& f, bool batch) {
  // Batches start at 4 threads (the batch targets); unary also runs 1.
  const std::vector<int> thread_counts =
      batch ? std::vector<int>{4, 64} : std::vector<int>{1, 4, 64};
  std::vector<v1::TaskSpec> specs(100);
  for (auto& s : specs) {
    s.set_kind("echo");
    s.set_payload("x");
  }
  for (const std::string& d : f.durabilities) {
    for (int threads : thread_counts) {
      for (int rep = 0; rep < f.reps; ++rep) {
        auto s = StartServer(f.workers, d);
        if (!s.ok()) {
          std::cerr << "start forqd: " << s.status() << "\n";
          return 1;
        }
        Client* c = s->client.get();
        if (f.paused) {
          auto dr = c->Drain(absl::Seconds(5));
          if (!dr.ok()) {
            std::cerr << "Drain: " << dr.status() << "\n";
            return 1;
          }
        }
        const std::string paused = f.paused ? ", dispatch paused" : "";
        int64_t errors = 0;
        double rate;
        std::string op;
        if (batch) {
          rate = RunTimed(
              threads, f.seconds,
              [&]() -> int {
                auto r = c->SubmitBatch(specs);
                return r.ok() ? static_cast<int>(r->size()) : -1;
              },
              &errors);
          op = absl::StrCat("SubmitBatch(100) ", d, ", ", threads, " threads",
                            paused);
        } else {
          rate = RunTimed(
              threads, f.seconds,
              [&]() -> int { return c->Submit("echo", "x").ok() ? 1 : -1; },
              &errors);
          op = absl::StrCat("unary Submit ", d, ", ", threads, " threads",
                            paused);
        }
        g_results->Add(op, "tasks/s", rate);
        if (errors > 0) {
          Note(absl::StrCat(op, ": ", errors, " failed calls"));
          g_results->Add(op + " failed calls", "calls", errors);
        }
      }
    }
  }
  return 0;
}

// apply_async x N then get all: one thread submits N echo tasks back to back
// (unary, or SubmitBatch of 100), then waits for every result in order.
bool Wanted(const Flags& f, const std::string& durability) {
  return std::find(f.durabilities.begin(), f.durabilities.end(), durability) !=
         f.durabilities.end();
}

int SectionE2E(const Flags& f) {
  for (const std::string& d : {std::string("sync"), std::string("none")}) {
    if (!Wanted(f, d)) continue;
    for (const std::string mode : {"unary", "batch", "async"}) {
      if (!absl::c_linear_search(f.submits, mode)) continue;
      const bool batched = mode != "unary";
      const bool async = mode == "async";
      for (const std::string& wait : f.waits) {
        for (int rep = 0; rep < f.reps; ++rep) {
          auto s = StartServer(f.workers, d, wait == "stream");
          if (!s.ok()) {
            std::cerr << "start forqd: " << s.status() << "\n";
            return 1;
          }
          Client* c = s->client.get();
          std::vector<TaskFuture> futs;
          futs.reserve(f.n);
          Probe probe(s->forqd->pid(), f.perf);
          const double self0 = CpuSeconds({getpid()});
          const auto t0 = Clock::now();
          if (batched) {
            // "async": up to 8 batches of 100 travel at once (apply_async
            // does not wait for each task either); "batch": each waits for
            // its acknowledgement before the next is sent.
            std::vector<v1::TaskSpec> specs(f.n);
            for (int i = 0; i < f.n; ++i) {
              specs[i].set_kind("echo");
              specs[i].set_payload(absl::StrCat(i));
            }
            Client::ManyOptions many;
            many.in_flight = async ? 8 : 1;
            auto submitted = c->SubmitMany(specs, many);
            if (!submitted.ok()) {
              std::cerr << "SubmitBatch: " << submitted.status() << "\n";
              return 1;
            }
            futs = *std::move(submitted);
          } else {
            for (int i = 0; i < f.n; ++i) {
              auto r = c->Submit("echo", absl::StrCat(i));
              if (!r.ok()) {
                std::cerr << "Submit: " << r.status() << "\n";
                return 1;
              }
              futs.push_back(std::move(*r));
            }
          }
          const double submit_s = SecondsSince(t0);
          int bad = 0;
          for (int i = 0; i < f.n; ++i) {
            auto r = futs[i].Get();
            if (!r.ok() || *r != absl::StrCat(i)) ++bad;
          }
          const double total_s = SecondsSince(t0);
          const double self = CpuSeconds({getpid()}) - self0;
          if (bad > 0) {
            std::cerr << "e2e: " << bad << " wrong or failed results\n";
            return 1;
          }
          const std::string how =
              absl::StrCat(!batched ? "Submit x N"
                           : async  ? "SubmitBatchAsync(100) x N/100 (8 in "
                                      "flight)"
                                    : "SubmitBatch(100) x N/100",
                           wait == "rpc" ? " (Wait RPC per task)" : "");
          const std::string op = absl::StrCat(f.n, " echo: ", how, ", ", d);
          g_results->Add(absl::StrCat(f.n, " echo: ", how, " then Get all, ", d,
                                      ", end to end"),
                         "tasks/s", f.n / total_s);
          g_results->Add(op + ", submit only", "tasks/s", f.n / submit_s);
          probe.Report(op, "forqd tree", f.n);
          g_results->Add(op + ": client CPU per task", "us", self * 1e6 / f.n);
        }
      }
    }
  }
  return 0;
}

// RTT p50/p99 of `op` over `samples` calls after 100 warm-up calls; false
// if a call failed.
template <typename Op>
bool Rtt(int samples, Op op, std::vector<double>* us) {
  us->clear();
  us->reserve(samples);
  for (int i = 0; i < samples + 100; ++i) {
    const auto t0 = Clock::now();
    if (!op()) return false;
    if (i >= 100) us->push_back(SecondsSince(t0) * 1e6);
  }
  std::sort(us->begin(), us->end());
  return true;
}

int SectionRtt(const Flags& f) {
  for (const std::string& d : {std::string("sync"), std::string("none")}) {
    if (!Wanted(f, d)) continue;
    for (int rep = 0; rep < f.reps; ++rep) {
      auto s = StartServer(f.workers, d);
      if (!s.ok()) {
        std::cerr << "start forqd: " << s.status() << "\n";
        return 1;
      }
      Client* c = s->client.get();
      std::vector<double> us;
      const std::string op = absl::StrCat("Submit().Get() echo RTT ", d);
      {
        Probe probe(s->forqd->pid(), f.perf);
        if (!Rtt(
                f.rtt_samples,
                [&] {
                  auto fu = c->Submit("echo", "x");
                  return fu.ok() && fu->Get().ok();
                },
                &us)) {
          std::cerr << "Submit+Get failed\n";
          return 1;
        }
        probe.Report(op, "forqd tree", f.rtt_samples + 100);
      }
      g_results->Add(op + " p50", "us", Pct(us, 50));
      g_results->Add(op + " p99", "us", Pct(us, 99));
      // The same round trip as one call (Submit with wait: pool.apply).
      const std::string aop = absl::StrCat("Apply() echo RTT ", d);
      {
        Probe probe(s->forqd->pid(), f.perf);
        if (!Rtt(
                f.rtt_samples, [&] { return c->Apply("echo", "x").ok(); },
                &us)) {
          std::cerr << "Apply failed\n";
          return 1;
        }
        probe.Report(aop, "forqd tree", f.rtt_samples + 100);
      }
      g_results->Add(aop + " p50", "us", Pct(us, 50));
      g_results->Add(aop + " p99", "us", Pct(us, 99));
      // Baseline: a unary call that touches neither store nor workers.
      const std::string bop =
          absl::StrCat("GetPool() RTT (unary baseline) ", d);
      {
        Probe probe(s->forqd->pid(), f.perf);
        if (!Rtt(
                f.rtt_samples, [&] { return c->GetPool().ok(); }, &us)) {
          std::cerr << "GetPool failed\n";
          return 1;
        }
        probe.Report(bop, "forqd tree", f.rtt_samples + 100, "call");
      }
      g_results->Add(bop + " p50", "us", Pct(us, 50));
      g_results->Add(bop + " p99", "us", Pct(us, 99));
      const double getpool_p50 = Pct(us, 50);
      // Floor: a bare gRPC callback server (child process) answering
      // TaskService.Get with the request's id, same machine, same moment.
      auto echo = EchoServer::Start();
      if (!echo.ok()) {
        std::cerr << "echo server: " << echo.status() << "\n";
        return 1;
      }
      auto stub = v1::TaskService::NewStub(grpc::CreateChannel(
          (*echo)->address(), grpc::InsecureChannelCredentials()));
      const std::string eop = "bare gRPC callback echo RTT";
      {
        Probe probe((*echo)->pid(), f.perf);
        if (!Rtt(
                f.rtt_samples,
                [&] {
                  grpc::ClientContext ctx;
                  ctx.set_deadline(
                      absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
                  v1::GetTaskRequest req;
                  req.set_id("echo");
                  v1::Task resp;
                  return stub->Get(&ctx, req, &resp).ok() &&
                         resp.id() == "echo";
                },
                &us)) {
          std::cerr << "echo call failed\n";
          return 1;
        }
        probe.Report(eop, "echo server", f.rtt_samples + 100, "call");
      }
      g_results->Add(eop + " p50", "us", Pct(us, 50));
      g_results->Add(eop + " p99", "us", Pct(us, 99));
      g_results->Add(absl::StrCat("GetPool p50 / bare echo p50, ", d), "ratio",
                     getpool_p50 / Pct(us, 50));
    }
  }
  return 0;
}

// The Map protocol before MapBatched, as the client library spoke it: one
// input per request message, one result per response message, the window
// topped up before each Read. Returns results read, failed ones in *bad.
absl::StatusOr<int64_t> MapOneByOne(const std::string& address, int n,
                                    bool ordered, int64_t* bad) {
  auto stub = v1::TaskService::NewStub(
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  auto rpc = stub->Map(&ctx);
  v1::MapRequest req;
  req.mutable_header()->set_kind("echo");
  req.mutable_header()->set_ordered(ordered);
  req.mutable_header()->set_window(kDefaultMapWindow);
  if (!rpc->Write(req)) return absl::UnavailableError("Map header");
  int sent = 0, in_flight = 0;
  int64_t got = 0;
  v1::MapResult r;
  while (true) {
    while (sent < n && in_flight < kDefaultMapWindow) {
      req.mutable_input()->set_payload(absl::StrCat(sent));
      if (!rpc->Write(req)) return absl::UnavailableError("Map write");
      ++sent;
      ++in_flight;
      if (sent == n) rpc->WritesDone();
    }
    if (in_flight == 0) break;
    if (!rpc->Read(&r)) break;
    --in_flight;
    ++got;
    if (r.state() != v1::SUCCEEDED) ++*bad;
  }
  grpc::Status st = rpc->Finish();
  if (!st.ok()) return FromGrpcStatus(st);
  return got;
}

int SectionMap(const Flags& f) {
  for (const std::string& d : {std::string("sync"), std::string("none")}) {
    if (!Wanted(f, d)) continue;
    for (bool ordered : {true, false}) {
      for (const std::string& how : f.maps) {
        for (int rep = 0; rep < f.reps; ++rep) {
          auto s = StartServer(f.workers, d);
          if (!s.ok()) {
            std::cerr << "start forqd: " << s.status() << "\n";
            return 1;
          }
          std::vector<std::string> inputs;
          inputs.reserve(f.n);
          for (int i = 0; i < f.n; ++i) inputs.push_back(absl::StrCat(i));
          Probe probe(s->forqd->pid(), f.perf);
          const auto t0 = Clock::now();
          int64_t got = 0, bad = 0;
          absl::Status status;
          if (how == "batched") {
            MapStream stream =
                ordered ? s->client->Map("echo", std::move(inputs))
                        : s->client->MapUnordered("echo", std::move(inputs));
            for (const MapItem& r : stream) {
              ++got;
              if (!r.ok()) ++bad;
            }
            status = stream.status();
          } else {
            absl::StatusOr<int64_t> r =
                MapOneByOne(s->forqd->grpc_address(), f.n, ordered, &bad);
            status = r.status();
            if (r.ok()) got = *r;
          }
          const double secs = SecondsSince(t0);
          if (!status.ok() || got != f.n || bad != 0) {
            std::cerr << "map: status " << status << ", " << got << " results, "
                      << bad << " failed\n";
            return 1;
          }
          const std::string name = absl::StrCat(
              ordered ? "Map (ordered)" : "MapUnordered",
              how == "single" ? " one input/result per message" : "");
          g_results->Add(absl::StrCat(name, " ", f.n, " echo, window ",
                                      kDefaultMapWindow, ", ", d),
                         "tasks/s", f.n / secs);
          probe.Report(absl::StrCat(name, " ", d), "forqd tree", f.n);
        }
      }
    }
  }
  return 0;
}

// Wall time of `count` primes(n) tasks submitted together, then all awaited.
absl::StatusOr<double> PrimesWall(Client* c, int64_t n, int count) {
  std::vector<v1::TaskSpec> specs(count);
  for (auto& s : specs) {
    s.set_kind("primes");
    s.set_payload(absl::StrCat(n));
  }
  const auto t0 = Clock::now();
  auto futs = c->SubmitBatch(specs);
  if (!futs.ok()) return futs.status();
  for (auto& fu : *futs) {
    auto r = fu.Get();
    if (!r.ok()) return r.status();
  }
  return SecondsSince(t0);
}

int SectionCpu(const Flags& f) {
  // Calibrate n so one task takes ~250 ms (trial division: ~n^1.5).
  int64_t n = 1'000'000;
  {
    auto s = StartServer(1, "sync");
    if (!s.ok()) {
      std::cerr << "start forqd: " << s.status() << "\n";
      return 1;
    }
    for (int i = 0; i < 3; ++i) {
      auto t = PrimesWall(s->client.get(), n, 1);
      if (!t.ok()) {
        std::cerr << "primes: " << t.status() << "\n";
        return 1;
      }
      n = static_cast<int64_t>(n * std::pow(0.25 / *t, 1 / 1.5));
    }
    Note(absl::StrCat("cpu: primes n = ", n));
  }
  for (int rep = 0; rep < f.reps; ++rep) {
    double walls[3] = {0, 0, 0};
    for (int w : {1, 2}) {
      auto s = StartServer(w, "sync");
      if (!s.ok()) {
        std::cerr << "start forqd: " << s.status() << "\n";
        return 1;
      }
      if (w == 1) {
        auto one = PrimesWall(s->client.get(), n, 1);
        if (!one.ok()) {
          std::cerr << "primes: " << one.status() << "\n";
          return 1;
        }
        walls[0] = *one;
      }
      auto t = PrimesWall(s->client.get(), n, 8);
      if (!t.ok()) {
        std::cerr << "primes: " << t.status() << "\n";
        return 1;
      }
      walls[w] = *t;
    }
    g_results->Add("CPU 8x~250ms primes: one task, submit to result", "s",
                   walls[0]);
    g_results->Add("CPU 8x~250ms primes: --workers 1 wall", "s", walls[1]);
    g_results->Add("CPU 8x~250ms primes: --workers 2 wall", "s", walls[2]);
    g_results->Add("CPU 8x~250ms primes: speedup 2 vs 1 workers", "x",
                   walls[1] / walls[2]);
  }
  return 0;
}

int SectionStartup(const Flags& f) {
  for (int rep = 0; rep < f.reps; ++rep) {
    const auto t0 = Clock::now();
    testing::ForqdOptions o;
    o.workers = f.workers;
    o.flags = {"--log_level=warn"};
    auto p = testing::ForqdProcess::Start(o);
    if (!p.ok()) {
      std::cerr << "start forqd: " << p.status() << "\n";
      return 1;
    }
    const double ready_s = SecondsSince(t0);
    ClientOptions co;
    co.address = (*p)->grpc_address();
    auto c = Client::Connect(co);
    if (!c.ok()) {
      std::cerr << "connect: " << c.status() << "\n";
      return 1;
    }
    auto fu = (*c)->Submit("echo", "first");
    if (!fu.ok()) {
      std::cerr << "Submit: " << fu.status() << "\n";
      return 1;
    }
    auto r = fu->Get();
    if (!r.ok()) {
      std::cerr << "Get: " << r.status() << "\n";
      return 1;
    }
    const double first_s = SecondsSince(t0);
    g_results->Add("startup: forqd spawn to ready handshake", "ms",
                   ready_s * 1e3);
    g_results->Add("startup: forqd spawn to first echo result", "ms",
                   first_s * 1e3);
  }
  return 0;
}

// Sum of the `field` ("VmRSS:" in status, "Pss:" in smaps_rollup), KiB.
int64_t SumKib(const std::vector<int>& pids, const char* file,
               absl::string_view field) {
  int64_t total = 0;
  for (int pid : pids) {
    std::ifstream in(absl::StrCat("/proc/", pid, "/", file));
    std::string line;
    while (std::getline(in, line)) {
      absl::string_view l = line;
      if (absl::ConsumePrefix(&l, field)) {
        int64_t kb = 0;
        if (absl::SimpleAtoi(
                absl::StripSuffix(absl::StripAsciiWhitespace(l), " kB"), &kb)) {
          total += kb;
        }
        break;
      }
    }
  }
  return total;
}

int SectionRss(const Flags& f) {
  for (int rep = 0; rep < f.reps; ++rep) {
    auto s = StartServer(f.workers, "sync");
    if (!s.ok()) {
      std::cerr << "start forqd: " << s.status() << "\n";
      return 1;
    }
    // Warm-up beyond StartServer's: 1000 tasks through both workers.
    std::vector<v1::TaskSpec> specs(100);
    for (auto& sp : specs) {
      sp.set_kind("echo");
      sp.set_payload("warm");
    }
    for (int i = 0; i < 10; ++i) {
      auto r = s->client->SubmitBatch(specs);
      if (!r.ok()) {
        std::cerr << "SubmitBatch: " << r.status() << "\n";
        return 1;
      }
      for (auto& fu : *r) (void)fu.Get();
    }
    std::this_thread::sleep_for(std::chrono::seconds(1));
    const std::vector<int> pids = Tree(s->forqd->pid());
    const int64_t rss = SumKib(pids, "status", "VmRSS:");
    const int64_t pss = SumKib(pids, "smaps_rollup", "Pss:");
    const int64_t rss_forqd = SumKib({s->forqd->pid()}, "status", "VmRSS:");
    const std::string procs = absl::StrCat(pids.size(), " procs");
    g_results->Add(
        absl::StrCat("idle RSS forqd + supervisor + workers (", procs, ")"),
        "MiB", rss / 1024.0);
    g_results->Add(absl::StrCat("idle PSS same tree (", procs, ")"), "MiB",
                   pss / 1024.0);
    g_results->Add("idle RSS forqd process alone", "MiB", rss_forqd / 1024.0);
  }
  return 0;
}

int SectionManager(const Flags& f) {
  for (const std::string& d : {std::string("none"), std::string("sync")}) {
    for (int rep = 0; rep < f.reps; ++rep) {
      auto s = StartServer(f.workers, d);
      if (!s.ok()) {
        std::cerr << "start forqd: " << s.status() << "\n";
        return 1;
      }
      Manager m(*s->client);
      Dict dict = m.dict("bench");
      std::vector<std::string> keys;
      for (int i = 0; i < 1000; ++i) keys.push_back(absl::StrCat("k", i));
      for (const auto& k : keys) {
        if (!dict.Set(k, "v").ok()) {
          std::cerr << "dict set failed\n";
          return 1;
        }
      }
      const double window = std::min(f.seconds, 1.5);
      auto timed = [&](auto op) -> double {
        int64_t ops = 0;
        const auto t0 = Clock::now();
        while (SecondsSince(t0) < window) {
          if (!op(ops)) return -1;
          ++ops;
        }
        return ops / SecondsSince(t0);
      };
      const double set_rate = timed([&](int64_t i) {
        return dict.Set(keys[i % keys.size()], "value").ok();
      });
      std::vector<double> us;
      const double get_rate = timed([&](int64_t i) {
        const auto t0 = Clock::now();
        bool ok = dict.Get(keys[i % keys.size()]).ok();
        us.push_back(SecondsSince(t0) * 1e6);
        return ok;
      });
      Lock lock = m.lock("bench-lock");
      const double lock_rate = timed([&](int64_t) {
        auto g = lock.Acquire();
        return g.ok() && g->acquired && lock.Release().ok();
      });
      if (set_rate < 0 || get_rate < 0 || lock_rate < 0) {
        std::cerr << "manager: an operation failed\n";
        return 1;
      }
      std::sort(us.begin(), us.end());
      const std::string sfx = absl::StrCat(" (1 client, --durability=", d, ")");
      g_results->Add("Manager dict set" + sfx, "ops/s", set_rate);
      g_results->Add("Manager dict get" + sfx, "ops/s", get_rate);
      g_results->Add("Manager dict get RTT p50" + sfx, "us", Pct(us, 50));
      g_results->Add("Manager dict get RTT p99" + sfx, "us", Pct(us, 99));
      g_results->Add("Manager Lock acquire+release pair" + sfx, "pairs/s",
                     lock_rate);
    }
  }
  return 0;
}

int Run(int argc, char** argv) {
  if (argc == 2 && absl::string_view(argv[1]) == "--serve_echo") {
    return ServeEcho();
  }
  Flags f;
  if (!ParseFlags(argc, argv, &f)) {
    std::cerr << "usage: see the top of bench/forq_bench.cc\n";
    return 2;
  }
  Results results;
  g_results = &results;
  utsname u{};
  uname(&u);
  std::printf("# forq_bench: nproc %u, %s %s, workers %d, reps %d\n",
              std::thread::hardware_concurrency(), u.sysname, u.release,
              f.workers, f.reps);
  struct Section {
    const char* name;
    int (*fn)(const Flags&);
  };
  const Section sections[] = {
      {"startup", SectionStartup},
      {"rss", SectionRss},
      {"cpu", SectionCpu},
      {"rtt", SectionRtt},
      {"e2e", SectionE2E},
      {"map", SectionMap},
      {"manager", SectionManager},
      {"submit", [](const Flags& fl) { return SectionSubmit(fl, false); }},
      {"batch", [](const Flags& fl) { return SectionSubmit(fl, true); }},
  };
  int rc = 0;
  for (const Section& s : sections) {
    if (f.sections.count(s.name) == 0) continue;
    std::printf("LOAD\t%s\tstart\t%s\n", s.name, LoadAvg().c_str());
    std::fflush(stdout);
    const auto t0 = Clock::now();
    if (s.fn(f) != 0) {
      std::cerr << "section " << s.name << " failed\n";
      rc = 1;
    }
    std::printf("LOAD\t%s\tend\t%s\t(%.1f s)\n", s.name, LoadAvg().c_str(),
                SecondsSince(t0));
    std::fflush(stdout);
  }
  results.PrintTable();
  return rc;
}

}  // namespace
}  // namespace forq::bench

int main(int argc, char** argv) { return forq::bench::Run(argc, argv); }
