// Worker-pool benchmarks without a server:
//   pool_bench respawn [kills]          kill -9 -> replacement ready latency
//   pool_bench speedup [n] [tasks]      `tasks` x primes(n) on 1 vs 2 workers
//   pool_bench ring [seconds]           two-process ring round trips (64 B, 4
//   KiB)
// Figures go to bench/RESULTS.md ("Worker pool").
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

#include "common/mutex.h"
#include "worker/fork_pool.h"
#include "worker/pool_recorder_testing.h"
#include "worker/shm_region.h"
#include "worker/shm_ring.h"

namespace forq::worker {
namespace {

using fork_pool_testing::Recorder;

// Waits until `pred` holds (checked under the recorder's lock); a bench
// that stalls for 30 s ends.
template <typename Pred>
void Await(Recorder& ev, Pred pred) {
  if (!ev.WaitFor(pred, absl::Seconds(30))) {
    std::fprintf(stderr, "timed out\n");
    std::_Exit(1);
  }
}

std::unique_ptr<WorkerPool> MakePool(int workers, Recorder& ev) {
  ForkPoolOptions o;
  o.workers = workers;
  auto pool = CreateForkPool(o);
  if (!pool.ok()) {
    std::fprintf(stderr, "%s\n", pool.status().ToString().c_str());
    std::_Exit(1);
  }
  if (!(*pool)->Start(ev.Callbacks()).ok()) std::_Exit(1);
  Await(ev, [&] {
    ev.mu_.AssertHeld();
    return ev.idle_events_ >= workers;
  });
  return std::move(*pool);
}

double Percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  const auto i = static_cast<size_t>(std::lround(p * (v.size() - 1)));
  return v[std::min(i, v.size() - 1)];
}

int Respawn(int kills) {
  Recorder ev;
  std::unique_ptr<WorkerPool> pool = MakePool(1, ev);
  std::vector<double> ms;
  for (int i = 0; i < kills; ++i) {
    Assignment a;
    a.task_id = absl::StrCat("victim-", i);
    a.kind = "sleep";
    a.payload = "60000";
    if (!pool->Dispatch(a).ok()) return 1;
    const int pid = pool->Workers()[0].pid;
    int idle_before;
    {
      MutexLock l(&ev.mu_);
      idle_before = ev.idle_events_;
    }
    const absl::Time t0 = absl::Now();
    kill(pid, SIGKILL);
    Await(ev, [&] {
      ev.mu_.AssertHeld();
      return ev.idle_events_ > idle_before;
    });
    absl::Time t1;
    {
      MutexLock l(&ev.mu_);
      t1 = ev.last_idle_;
    }
    ms.push_back(absl::ToDoubleMilliseconds(t1 - t0));
  }
  std::printf(
      "respawn (kill -9 -> replacement ready), %d kills: p50 %.2f ms, "
      "p99 %.2f ms, max %.2f ms\n",
      kills, Percentile(ms, 0.5), Percentile(ms, 0.99),
      *std::max_element(ms.begin(), ms.end()));
  pool->Shutdown();
  return 0;
}

double RunPrimes(int workers, const std::string& n, int tasks) {
  Recorder ev;
  std::unique_ptr<WorkerPool> pool = MakePool(workers, ev);
  const absl::Time start = absl::Now();
  int dispatched = 0;
  while (true) {
    {
      MutexLock l(&ev.mu_);
      if (static_cast<int>(ev.outcomes_.size()) == tasks) break;
    }
    while (dispatched < tasks && pool->IdleCount() > 0) {
      Assignment a;
      a.task_id = absl::StrCat("p", dispatched);
      a.kind = "primes";
      a.payload = n;
      if (!pool->Dispatch(a).ok()) break;
      ++dispatched;
    }
    size_t seen;
    {
      MutexLock l(&ev.mu_);
      seen = ev.outcomes_.size();
    }
    Await(ev, [&] {
      ev.mu_.AssertHeld();
      return ev.outcomes_.size() > seen;
    });
  }
  const double secs = absl::ToDoubleSeconds(absl::Now() - start);
  {
    MutexLock l(&ev.mu_);
    for (const Outcome& o : ev.outcomes_) {
      if (o.kind != OutcomeKind::kSucceeded) std::_Exit(1);
    }
  }
  pool->Shutdown();
  return secs;
}

int Speedup(const std::string& n, int tasks) {
  const double one = RunPrimes(1, n, tasks);
  const double two = RunPrimes(2, n, tasks);
  std::printf(
      "%d x primes(%s): 1 worker %.3f s (%.3f s/task), 2 workers "
      "%.3f s; speedup %.2fx\n",
      tasks, n.c_str(), one, one / tasks, two, one / two);
  return 0;
}

// Ping-pong between this process and a forked echo process over two rings
// in one memfd, both sides spinning (the pool's rings without wake-ups:
// the ring's own cost).
int Ring(double seconds) {
  constexpr uint64_t kRing = 1 << 20;
  for (size_t frame : {size_t{64}, size_t{4096}}) {
    auto region =
        ShmRegion::Create("bench-ring", SlotLayout::TotalBytes(kRing));
    if (!region.ok()) return 1;
    SlotView v = ViewSlot(region->data(), kRing);
    new (v.submission_control) RingControl();
    new (v.completion_control) RingControl();
    // The slot's cancel word doubles as the stop flag of the echo process.
    std::atomic<uint64_t>* stop = &v.control->cancel_seq;
    stop->store(0);
    const pid_t pid = fork();
    if (pid == 0) {
      ShmRing in(v.submission_control, v.submission_data, kRing);
      ShmRing out(v.completion_control, v.completion_data, kRing);
      while (stop->load(std::memory_order_relaxed) == 0) {
        auto f = in.Pop();
        if (!f.ok()) _exit(2);
        if (!f->has_value()) continue;
        while (!out.Push(1, 0, (*f)->body).ok()) {
        }
      }
      _exit(0);
    }
    ShmRing out(v.submission_control, v.submission_data, kRing);
    ShmRing in(v.completion_control, v.completion_data, kRing);
    const std::string body(frame, 'x');
    uint64_t trips = 0;
    const absl::Time start = absl::Now();
    const absl::Time end = start + absl::Seconds(seconds);
    while ((trips & 1023) != 0 || absl::Now() < end) {
      while (!out.Push(1, 0, body).ok()) {
      }
      while (true) {
        auto f = in.Pop();
        if (!f.ok()) return 1;
        if (f->has_value()) break;
      }
      ++trips;
    }
    const double secs = absl::ToDoubleSeconds(absl::Now() - start);
    stop->store(1);
    waitpid(pid, nullptr, 0);
    std::printf(
        "ring round trip, %zu-byte frames: %.0f round trips/s "
        "(%.2f us each)\n",
        frame, trips / secs, secs * 1e6 / trips);
  }
  return 0;
}

}  // namespace
}  // namespace forq::worker

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "respawn") {
    return forq::worker::Respawn(argc > 2 ? std::atoi(argv[2]) : 200);
  }
  if (mode == "speedup") {
    return forq::worker::Speedup(argc > 2 ? argv[2] : "3000000",
                                 argc > 3 ? std::atoi(argv[3]) : 8);
  }
  if (mode == "ring") {
    return forq::worker::Ring(argc > 2 ? std::atof(argv[2]) : 2.0);
  }
  std::fprintf(stderr,
               "usage: pool_bench respawn [kills] | speedup [n] "
               "[tasks] | ring [seconds]\n");
  return 2;
}
