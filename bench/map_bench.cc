// map_bench: throughput of one Map stream over N echo inputs and the growth
// of forqd's resident memory while it runs (the window must bound it).
//
//   map_bench [--n=1000000] [--window=1000] [--unordered] [--workers=N]
//             [--forqd_flag=--durability=none,...]    # starts its own forqd
//   map_bench --addr=HOST:PORT --pid=FORQD_PID ...     # an existing forqd
#include <sys/utsname.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

#include "common/notification.h"
#include "forq/client.h"
#include "forq/map.h"
#include "tests/testing/forqd_process.h"

ABSL_FLAG(int64_t, n, 1'000'000, "Map inputs");
ABSL_FLAG(int, window, 1000, "Map window (inputs in flight)");
ABSL_FLAG(bool, unordered, false, "MapUnordered instead of Map");
ABSL_FLAG(int, workers, 0, "forqd --workers (0: one per core)");
ABSL_FLAG(std::string, addr, "", "a running forqd instead of starting one");
ABSL_FLAG(int, pid, 0, "with --addr: that forqd's pid, for its memory");
ABSL_FLAG(std::vector<std::string>, forqd_flag, {},
          "extra forqd flags, comma-separated (e.g. --durability=none)");

namespace forq::bench {
namespace {

struct Flags {
  int64_t n = 1'000'000;
  int window = 1000;
  bool unordered = false;
  int workers = 0;
  std::string addr;
  int pid = 0;
  std::vector<std::string> forqd_flags;
};

Flags FromCommandLine() {
  Flags f;
  f.n = absl::GetFlag(FLAGS_n);
  f.window = absl::GetFlag(FLAGS_window);
  f.unordered = absl::GetFlag(FLAGS_unordered);
  f.workers = absl::GetFlag(FLAGS_workers);
  f.addr = absl::GetFlag(FLAGS_addr);
  f.pid = absl::GetFlag(FLAGS_pid);
  f.forqd_flags = absl::GetFlag(FLAGS_forqd_flag);
  return f;
}

// VmRSS of `pid` in bytes; 0 if unreadable.
int64_t RssBytes(int pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    absl::string_view l = line;
    if (absl::ConsumePrefix(&l, "VmRSS:")) {
      int64_t kb = 0;
      std::string digits;
      for (char c : l) {
        if (c >= '0' && c <= '9') digits.push_back(c);
      }
      if (absl::SimpleAtoi(digits, &kb)) return kb * 1024;
    }
  }
  return 0;
}

double MiB(int64_t bytes) { return static_cast<double>(bytes) / (1 << 20); }

int Run(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Map throughput and forqd memory; see the top of bench/map_bench.cc");
  absl::ParseCommandLine(argc, argv);
  Flags flags = FromCommandLine();
  if (flags.n < 1 || flags.window < 1 || flags.workers < 0) {
    std::cerr << "map_bench: --n and --window must be positive\n";
    return 2;
  }
  std::unique_ptr<testing::ForqdProcess> forqd;
  if (flags.addr.empty()) {
    testing::ForqdOptions o;
    o.workers = flags.workers > 0
                    ? flags.workers
                    : static_cast<int>(std::thread::hardware_concurrency());
    o.flags = flags.forqd_flags;
    auto p = testing::ForqdProcess::Start(o);
    if (!p.ok()) {
      std::cerr << "start forqd: " << p.status() << "\n";
      return 2;
    }
    forqd = std::move(*p);
    flags.addr = forqd->grpc_address();
    flags.pid = forqd->pid();
  }
  ClientOptions co;
  co.address = flags.addr;
  auto client = Client::Connect(co);
  if (!client.ok()) {
    std::cerr << "connect: " << client.status() << "\n";
    return 2;
  }
  MapOptions mo;
  mo.window = flags.window;

  // Warm up (connections, allocator, store) so the baseline is steady.
  {
    std::vector<std::string> warm(2000, "warm");
    MapStream s = (*client)->MapUnordered("echo", warm, mo);
    while (s.Next() != nullptr) {
    }
    if (!s.status().ok()) {
      std::cerr << "warm-up: " << s.status() << "\n";
      return 2;
    }
  }

  const int64_t rss_before = flags.pid > 0 ? RssBytes(flags.pid) : 0;
  std::atomic<int64_t> rss_peak{rss_before};
  Notification done;
  std::thread sampler([&] {
    while (!done.WaitForNotificationWithTimeout(absl::Milliseconds(100))) {
      int64_t r = flags.pid > 0 ? RssBytes(flags.pid) : 0;
      if (r > rss_peak.load()) rss_peak.store(r);
    }
  });

  int64_t next = 0;
  MapSource inputs([&]() -> std::optional<MapInput> {
    if (next == flags.n) return std::nullopt;
    return MapInput(absl::StrCat("payload-", next++));
  });
  const absl::Time start = absl::Now();
  MapStream stream =
      flags.unordered ? (*client)->MapUnordered("echo", std::move(inputs), mo)
                      : (*client)->Map("echo", std::move(inputs), mo);
  int64_t got = 0, failed = 0;
  for (const MapItem& r : stream) {
    ++got;
    if (!r.ok()) ++failed;
    if (got % 100'000 == 0) {
      absl::Duration el = absl::Now() - start;
      std::fprintf(stderr, "%lld results, %.0f/s, forqd RSS %.1f MiB\n",
                   static_cast<long long>(got),
                   static_cast<double>(got) / absl::ToDoubleSeconds(el),
                   MiB(flags.pid > 0 ? RssBytes(flags.pid) : 0));
    }
  }
  const absl::Duration elapsed = absl::Now() - start;
  done.Notify();
  sampler.join();
  const int64_t rss_after = flags.pid > 0 ? RssBytes(flags.pid) : 0;
  const int64_t peak = std::max(rss_peak.load(), rss_after);

  utsname u{};
  uname(&u);
  std::printf("map_bench: %lld echo inputs, window %d, %s\n",
              static_cast<long long>(flags.n), flags.window,
              flags.unordered ? "unordered" : "ordered");
  std::printf("machine: nproc %u, %s %s\n", std::thread::hardware_concurrency(),
              u.sysname, u.release);
  std::printf("results: %lld (%lld failed), stream status: %s\n",
              static_cast<long long>(got), static_cast<long long>(failed),
              stream.status().ToString().c_str());
  std::printf("elapsed: %.2f s, throughput: %.0f items/s\n",
              absl::ToDoubleSeconds(elapsed),
              static_cast<double>(got) / absl::ToDoubleSeconds(elapsed));
  std::printf(
      "forqd RSS: before %.1f MiB, peak %.1f MiB, after %.1f MiB, growth "
      "(peak - before) %.1f MiB\n",
      MiB(rss_before), MiB(peak), MiB(rss_after), MiB(peak - rss_before));
  const bool ok = stream.status().ok() && got == flags.n && failed == 0;
  return ok ? 0 : 1;
}

}  // namespace
}  // namespace forq::bench

int main(int argc, char** argv) { return forq::bench::Run(argc, argv); }
