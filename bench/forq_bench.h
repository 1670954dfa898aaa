// Shared parts of forq_bench (see bench/forq_bench.cc): its flags, the
// results table, a forqd under test with its client, counters of a process
// tree, and the bare gRPC echo server used as the floor of a unary call.
#ifndef FORQ_BENCH_FORQ_BENCH_H_
#define FORQ_BENCH_FORQ_BENCH_H_

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
#include <filesystem>
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

using Clock = std::chrono::steady_clock;

inline double SecondsSince(Clock::time_point t0) {
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
  // Added to every forqd's command line (--forqd_flag).
  std::vector<std::string> forqd_flags;
  // Count system calls with perf when it works.
  bool perf = true;
  // rtt, e2e, map: how the client reaches forqd ("tcp": 127.0.0.1;
  // "unix": forqd --grpc_addr=unix:PATH, the same-host option).
  std::vector<std::string> transports = {"tcp"};
};

// " (Unix socket)" for the unix transport: the suffix of its result names.
inline std::string TransportLabel(const std::string& transport) {
  return transport == "unix" ? " (Unix socket)" : "";
}

inline std::string LoadAvg() {
  std::ifstream in("/proc/loadavg");
  std::string a, b, c;
  in >> a >> b >> c;
  return absl::StrCat(a, " ", b, " ", c);
}

inline double Load1() {
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

inline Results* g_results = nullptr;

// --forqd_flag: added to every forqd this run starts, after the flags the
// section sets (so they win: --forqd_flag=--durability=sync overrides).
inline std::vector<std::string> g_forqd_flags;

// `flags` followed by --forqd_flag's.
inline std::vector<std::string> WithExtraForqdFlags(
    std::vector<std::string> flags) {
  flags.insert(flags.end(), g_forqd_flags.begin(), g_forqd_flags.end());
  return flags;
}

inline void Note(const std::string& msg) {
  std::fprintf(stderr, "# %s\n", msg.c_str());
}

// A fresh temporary directory (MakeTempDir; path() empty if that failed),
// removed with its contents at the end. (tests/testing/temp_dir.h's TempDir
// reports through gtest, which this binary does not link.)
class ScopedDir {
 public:
  explicit ScopedDir(const std::string& prefix)
      : path_(testing::MakeTempDir(prefix)) {}
  ScopedDir(const ScopedDir&) = delete;
  ScopedDir& operator=(const ScopedDir&) = delete;
  ~ScopedDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A running forqd plus a connected client. Members end in reverse order:
// the client, then forqd, then the socket's directory.
struct Server {
  std::unique_ptr<ScopedDir> socket_dir;  // unix transport only
  std::unique_ptr<testing::ForqdProcess> forqd;
  std::unique_ptr<Client> client;
  std::string address;  // the client's: 127.0.0.1:PORT or unix:PATH
  // unix transport: forqd's local Manager socket (--manager_socket).
  std::string manager_socket;
};

inline absl::StatusOr<Server> StartServer(
    int workers, const std::string& durability, bool wait_stream = true,
    const std::string& transport = "tcp") {
  Server s;
  testing::ForqdOptions o;
  o.workers = workers;
  o.flags = {absl::StrCat("--durability=", durability), "--log_level=warn"};
  std::string unix_address;
  if (transport == "unix") {
    s.socket_dir = std::make_unique<ScopedDir>("bench");
    if (s.socket_dir->path().empty()) {
      return absl::InternalError("mkdtemp failed");
    }
    unix_address = absl::StrCat("unix:", s.socket_dir->path(), "/grpc.sock");
    o.flags.push_back(absl::StrCat("--grpc_addr=", unix_address));
    s.manager_socket = absl::StrCat(s.socket_dir->path(), "/manager.sock");
    o.flags.push_back(absl::StrCat("--manager_socket=", s.manager_socket));
  }
  o.flags = WithExtraForqdFlags(std::move(o.flags));
  auto p = testing::ForqdProcess::Start(o);
  if (!p.ok()) return p.status();
  ClientOptions co;
  co.address = unix_address.empty() ? (*p)->grpc_address() : unix_address;
  co.wait_stream = wait_stream;
  auto c = Client::Connect(co);
  if (!c.ok()) return c.status();
  s.address = co.address;
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
inline double Pct(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  size_t k = static_cast<size_t>(std::ceil(p * sorted.size() / 100.0));
  k = std::max<size_t>(1, std::min(k, sorted.size()));
  return sorted[k - 1];
}

// All descendants of `pid` (children of every thread).
inline void Descendants(int pid, std::vector<int>* out) {
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
inline std::vector<int> Tree(int pid) {
  std::vector<int> pids = {pid};
  Descendants(pid, &pids);
  return pids;
}

// user + system CPU seconds used so far by `pids` (all threads).
inline double CpuSeconds(const std::vector<int>& pids) {
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
inline int64_t SumThreadStatus(const std::vector<int>& pids,
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
inline int64_t SumReadWriteCalls(const std::vector<int>& pids) {
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

// CPU, context switches and read+write calls of a server's process tree
// over one timed stretch (see forq_bench.cc). Never runs perf: perf's
// system call tracepoint slows every system call of the tree it counts
// (+20-85 µs on a Submit().Get() round trip here, and Python's peers are not
// traced), so system calls are counted in a pass of their own
// (SyscallCount).
class Probe {
 public:
  explicit Probe(int root_pid) : pids_(Tree(root_pid)) {
    cpu0_ = CpuSeconds(pids_);
    ctx0_ = Ctx();
    rw0_ = SumReadWriteCalls(pids_);
  }

  // Ends the timed stretch (Report ends it if this was not called).
  void Stop() {
    if (stopped_) return;
    stopped_ = true;
    cpu_ = CpuSeconds(pids_) - cpu0_;
    ctx_ = static_cast<double>(Ctx() - ctx0_);
    rw_ = SumReadWriteCalls(pids_) - rw0_;
  }

  // Records "<what>: <server> CPU/syscalls/context switches per <unit>" over
  // `n` units; `syscalls_per_unit` from a SyscallCount pass, or < 0 without
  // perf (then read+write calls of the timed stretch, marked "rw").
  void Report(const std::string& what, const std::string& server, double n,
              const std::string& unit, double syscalls_per_unit) {
    Stop();
    g_results->Add(absl::StrCat(what, ": ", server, " CPU per ", unit), "us",
                   cpu_ * 1e6 / n);
    g_results->Add(
        absl::StrCat(what, ": ", server, " context switches per ", unit),
        "switches", ctx_ / n);
    if (syscalls_per_unit >= 0) {
      g_results->Add(absl::StrCat(what, ": ", server, " syscalls per ", unit),
                     "calls", syscalls_per_unit);
    } else {
      g_results->Add(
          absl::StrCat(what, ": ", server, " read+write syscalls per ", unit,
                       " (rw: no perf)"),
          "calls", rw_ / n);
    }
  }

 private:
  int64_t Ctx() const {
    return SumThreadStatus(
        pids_, {"voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:"});
  }

  const std::vector<int> pids_;
  double cpu0_ = 0;
  int64_t ctx0_ = 0;
  int64_t rw0_ = 0;
  bool stopped_ = false;
  double cpu_ = 0;
  double ctx_ = 0;
  double rw_ = 0;
};

// System calls of a server's process tree while it lives, from
// `perf stat -e raw_syscalls:sys_enter -p PIDS`: for a pass that is not
// timed (see Probe).
class SyscallCount {
 public:
  explicit SyscallCount(int root_pid) {
    const std::vector<int> pids = Tree(root_pid);
    out_ = absl::StrCat(getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp",
                        "/forq_bench_perf.", getpid(), ".txt");
    std::vector<std::string> args = {"perf", "stat",
                                     "-x",   ",",
                                     "-e",   "raw_syscalls:sys_enter",
                                     "-o",   out_,
                                     "-p",   absl::StrJoin(pids, ",")};
    std::vector<char*> argv;
    argv.reserve(args.size() + 1);
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
  ~SyscallCount() { Stop(); }
  SyscallCount(const SyscallCount&) = delete;
  SyscallCount& operator=(const SyscallCount&) = delete;

  // Stops perf; the system calls counted, or -1 without perf.
  int64_t Stop() {
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

 private:
  pid_t perf_pid_ = -1;
  std::string out_;
};

// With --perf, runs `pass` (false: it failed) once more under SyscallCount
// and stores its system calls per unit (`n` units a pass) in *per_unit;
// -1 there without --perf or when perf does not run here.
template <typename Pass>
bool CountSyscalls(const Flags& f, int root_pid, double n, Pass pass,
                   double* per_unit) {
  *per_unit = -1;
  if (!f.perf) return true;
  SyscallCount count(root_pid);
  if (!pass()) return false;
  const int64_t calls = count.Stop();
  if (calls >= 0) *per_unit = static_cast<double>(calls) / n;
  return true;
}

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

// Child mode (--serve_echo): serves EchoService on a free loopback port
// (and on `unix_address` unless empty), prints "port=N" and runs until stdin
// closes.
inline int ServeEcho(const std::string& unix_address) {
  EchoService service;
  grpc::ServerBuilder b;
  int port = 0;
  b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  if (!unix_address.empty()) {
    b.AddListeningPort(unix_address, grpc::InsecureServerCredentials());
  }
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

// A bare echo server in a child process (this binary, --serve_echo), on
// 127.0.0.1 or (transport "unix") on a Unix socket.
class EchoServer {
 public:
  static absl::StatusOr<std::unique_ptr<EchoServer>> Start(
      const std::string& transport = "tcp") {
    auto e = std::unique_ptr<EchoServer>(new EchoServer());
    std::string unix_flag = "--echo_unix=";
    if (transport == "unix") {
      e->socket_dir_ = std::make_unique<ScopedDir>("echo");
      if (e->socket_dir_->path().empty()) {
        return absl::InternalError("mkdtemp failed");
      }
      e->address_ = absl::StrCat("unix:", e->socket_dir_->path(), "/echo");
      unix_flag += e->address_;
    }
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
    char* argv[] = {self.data(), flag.data(), unix_flag.data(), nullptr};
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
    if (e->address_.empty()) e->address_ = absl::StrCat("127.0.0.1:", port);
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
  std::unique_ptr<ScopedDir> socket_dir_;
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
  ts.reserve(threads);
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

// True when `durability` is among --durability's.
inline bool Wanted(const Flags& f, const std::string& durability) {
  return std::find(f.durabilities.begin(), f.durabilities.end(), durability) !=
         f.durabilities.end();
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

// The sections (forq_bench_tasks.cc, forq_bench_system.cc); each returns 0
// when it measured what it should.
int SectionSubmit(const Flags& f, bool batch);
int SectionE2E(const Flags& f);
int SectionRtt(const Flags& f);
int SectionMap(const Flags& f);
int SectionCpu(const Flags& f);
int SectionStartup(const Flags& f);
int SectionRss(const Flags& f);
int SectionManager(const Flags& f);

}  // namespace forq::bench

#endif  // FORQ_BENCH_FORQ_BENCH_H_
