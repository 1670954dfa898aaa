// forq_bench sections about the machine and the process: cpu, startup, rss
// and manager (see bench/forq_bench.cc).
#include "bench/forq_bench.h"

namespace forq::bench {

namespace {

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

}  // namespace

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
    o.flags = WithExtraForqdFlags({"--log_level=warn"});
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

namespace {

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

}  // namespace

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

namespace {

// Dict set and get, and Lock pairs, from one client through `m`; results
// named with `sfx`. False once something failed (said on stderr).
bool MeasureManagerCalls(const Flags& f, Manager& m, const std::string& sfx) {
  Dict dict = m.dict("bench");
  std::vector<std::string> keys;
  keys.reserve(1000);
  for (int i = 0; i < 1000; ++i) keys.push_back(absl::StrCat("k", i));
  for (const auto& k : keys) {
    if (!dict.Set(k, "v").ok()) {
      std::cerr << "dict set failed\n";
      return false;
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
  const double set_rate = timed(
      [&](int64_t i) { return dict.Set(keys[i % keys.size()], "value").ok(); });
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
    return false;
  }
  std::sort(us.begin(), us.end());
  g_results->Add("Manager dict set" + sfx, "ops/s", set_rate);
  g_results->Add("Manager dict get" + sfx, "ops/s", get_rate);
  g_results->Add("Manager dict get RTT p50" + sfx, "us", Pct(us, 50));
  g_results->Add("Manager dict get RTT p99" + sfx, "us", Pct(us, 99));
  g_results->Add("Manager Lock acquire+release pair" + sfx, "pairs/s",
                 lock_rate);
  return true;
}

// One forqd with durability `d` on transport `tr`: the Manager's calls
// over gRPC and, on the unix transport, over the local Manager socket.
bool MeasureManager(const Flags& f, const std::string& d,
                    const std::string& tr) {
  auto s = StartServer(f.workers, d, /*wait_stream=*/true, tr);
  if (!s.ok()) {
    std::cerr << "start forqd: " << s.status() << "\n";
    return false;
  }
  const std::string sfx = absl::StrCat(" (1 client, --durability=", d, ")");
  {
    Manager m(*s->client);
    if (!MeasureManagerCalls(f, m, sfx + TransportLabel(tr))) return false;
  }
  if (s->manager_socket.empty()) return true;
  ManagerOptions local;
  local.local_socket = s->manager_socket;
  Manager m(*s->client, local);
  return MeasureManagerCalls(f, m, sfx + " (local socket)");
}

}  // namespace

// mp.Manager listens on a Unix socket (multiprocessing's default family on
// Linux): --transport=unix measures forq on the same transport.
int SectionManager(const Flags& f) {
  for (const std::string& d : {std::string("none"), std::string("sync")}) {
    for (const std::string& tr : f.transports) {
      for (int rep = 0; rep < f.reps; ++rep) {
        if (!MeasureManager(f, d, tr)) return 1;
      }
    }
  }
  return 0;
}

}  // namespace forq::bench
