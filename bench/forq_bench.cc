// forq_bench: end-to-end figures of a real forqd (2 workers, loopback), in
// the shapes of the peer benchmarks (mp.Pool, ProcessPoolExecutor,
// mp.Manager, Celery, RQ, Dask), so the numbers can be set side by side.
//
//   forq_bench [--sections=submit,batch,e2e,rtt,map,cpu,startup,rss,manager]
//              [--reps=3] [--seconds=2] [--n=20000] [--rtt_samples=1000]
//              [--durability=sync,batch,none] [--workers=2] [--paused]
//              [--wait=stream,rpc] [--submit=unary,batch,async]
//              [--map=batched,single] [--perf=auto|off]
//              [--forqd_flag=--store=memory,...]
//
// Every section starts its own forqd (fresh data dir on $TMPDIR, free
// loopback ports) with the flags it needs, then --forqd_flag's (to measure
// another setting, e.g. --forqd_flag=--running_write_delay=100ms),
// measures, and kills it. Each measurement prints one line
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
//            unary GetPool baseline and a bare gRPC callback echo server
//            (this binary re-run as a child process, no forq code on the
//            call path), the floor of a unary call here, timed in turn
//
// e2e, rtt and map also print, per task (or call), the CPU time, system
// calls and context switches of the server's whole process tree over the
// measured stretch: CPU from /proc/PID/stat, context switches from
// /proc/PID/task/TID/status (voluntary + involuntary), system calls from
// `perf stat -e raw_syscalls:sys_enter -p PIDS` over a second, untimed pass
// of the same work (perf's tracepoint slows every system call it counts)
// (--perf=auto, when perf works; otherwise read+write calls only, from
// /proc/PID/io, marked "rw").
//   map      Map and MapUnordered over N echo inputs (default window);
//            --map=single also speaks the pre-MapBatched protocol (one input
//            and one result per message) for comparison
//   cpu      8 x primes(n) (n calibrated to ~250 ms) on 1 and 2 workers
//   startup  forqd spawn -> first echo result
//   rss      idle VmRSS and PSS of forqd and all its descendants
//   manager  Manager dict set/get and Lock acquire+release from one client

#include "bench/forq_bench.h"

#include <sys/utsname.h>

#include <cstdio>
#include <iostream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

#include "common/release_build.h"
#include "common/status_macros.h"

ABSL_FLAG(std::vector<std::string>, sections,
          std::vector<std::string>({"submit", "batch", "e2e", "rtt", "map",
                                    "cpu", "startup", "rss", "manager"}),
          "sections to run, comma-separated");
ABSL_FLAG(std::vector<std::string>, durability,
          std::vector<std::string>({"sync", "batch", "none"}),
          "forqd --durability values to measure, comma-separated");
ABSL_FLAG(int, reps, 3, "repetitions of each measurement");
ABSL_FLAG(double, seconds, 2.0, "length of each timed run (submit, batch)");
ABSL_FLAG(int, n, 20'000, "tasks per e2e and map run");
ABSL_FLAG(int, rtt_samples, 1000, "round trips per rtt measurement");
ABSL_FLAG(int, workers, 2, "forqd --workers");
ABSL_FLAG(bool, paused, false,
          "submit/batch: drain first, so only ingest is measured");
ABSL_FLAG(std::vector<std::string>, wait, std::vector<std::string>({"stream"}),
          "e2e: how futures wait: stream (WaitStream) and/or rpc (Wait each)");
ABSL_FLAG(std::vector<std::string>, submit,
          std::vector<std::string>({"unary", "batch", "async"}),
          "e2e: unary Submit, SubmitBatch(100), SubmitBatchAsync(100)");
ABSL_FLAG(std::vector<std::string>, map, std::vector<std::string>({"batched"}),
          "map: batched (MapBatched) and/or single (one input per message)");
ABSL_FLAG(std::string, perf, "auto",
          "auto: count system calls with `perf stat` when it works; off");
ABSL_FLAG(std::vector<std::string>, transport,
          std::vector<std::string>({"tcp"}),
          "rtt, e2e, map, manager: tcp (127.0.0.1) and/or unix (forqd on a "
          "Unix socket, --grpc_addr=unix:PATH)");
ABSL_FLAG(std::vector<std::string>, forqd_flag, {},
          "extra flags for every forqd started, comma-separated; after the "
          "section's own, so they win (e.g. --forqd_flag=--store=memory)");
ABSL_FLAG(bool, serve_echo, false,
          "internal: serve the bare gRPC echo (the rtt section's floor)");
ABSL_FLAG(std::string, echo_unix, "",
          "internal: with --serve_echo, also listen on this unix: address");

namespace forq::bench {
namespace {

// Each of `values` must be one of `allowed`.
absl::Status OneOf(absl::string_view flag,
                   const std::vector<std::string>& values,
                   const std::set<std::string>& allowed) {
  for (const std::string& v : values) {
    if (allowed.count(v) == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", flag, ": '", v, "' is not one of ",
                       absl::StrJoin(allowed, ", ")));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Flags> FlagsFromCommandLine() {
  Flags f;
  const std::vector<std::string> sections = absl::GetFlag(FLAGS_sections);
  FORQ_RETURN_IF_ERROR(OneOf("sections", sections, f.sections));
  f.sections = std::set<std::string>(sections.begin(), sections.end());
  f.durabilities = absl::GetFlag(FLAGS_durability);
  FORQ_RETURN_IF_ERROR(
      OneOf("durability", f.durabilities, {"sync", "batch", "none"}));
  f.waits = absl::GetFlag(FLAGS_wait);
  FORQ_RETURN_IF_ERROR(OneOf("wait", f.waits, {"stream", "rpc"}));
  f.submits = absl::GetFlag(FLAGS_submit);
  FORQ_RETURN_IF_ERROR(OneOf("submit", f.submits, {"unary", "batch", "async"}));
  f.maps = absl::GetFlag(FLAGS_map);
  FORQ_RETURN_IF_ERROR(OneOf("map", f.maps, {"batched", "single"}));
  f.transports = absl::GetFlag(FLAGS_transport);
  FORQ_RETURN_IF_ERROR(OneOf("transport", f.transports, {"tcp", "unix"}));
  const std::string perf = absl::GetFlag(FLAGS_perf);
  FORQ_RETURN_IF_ERROR(OneOf("perf", {perf}, {"auto", "off"}));
  f.perf = perf == "auto";
  f.reps = absl::GetFlag(FLAGS_reps);
  f.seconds = absl::GetFlag(FLAGS_seconds);
  f.n = absl::GetFlag(FLAGS_n);
  f.rtt_samples = absl::GetFlag(FLAGS_rtt_samples);
  f.workers = absl::GetFlag(FLAGS_workers);
  f.paused = absl::GetFlag(FLAGS_paused);
  f.forqd_flags = absl::GetFlag(FLAGS_forqd_flag);
  for (const std::string& flag : f.forqd_flags) {
    if (!absl::StartsWith(flag, "--")) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--forqd_flag: '", flag, "' is not a flag (want --name=value)"));
    }
  }
  if (f.reps < 1 || f.seconds <= 0 || f.n < 1 || f.rtt_samples < 1 ||
      f.workers < 1) {
    return absl::InvalidArgumentError(
        "--reps, --seconds, --n, --rtt_samples and --workers must be "
        "positive");
  }
  return f;
}

int Run(int argc, char** argv) {
  // As forqd: the client and the bare echo floor (--serve_echo).
  SkipDeadlockDetectionInReleaseBuilds();
  absl::SetProgramUsageMessage(
      "end-to-end figures of a real forqd; see the top of "
      "bench/forq_bench.cc for the sections and what they measure");
  absl::ParseCommandLine(argc, argv);
  if (absl::GetFlag(FLAGS_serve_echo)) {
    return ServeEcho(absl::GetFlag(FLAGS_echo_unix));
  }
  absl::StatusOr<Flags> parsed = FlagsFromCommandLine();
  if (!parsed.ok()) {
    std::cerr << "forq_bench: " << parsed.status().message() << "\n";
    return 2;
  }
  const Flags& f = *parsed;
  Results results;
  g_results = &results;
  g_forqd_flags = f.forqd_flags;
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
