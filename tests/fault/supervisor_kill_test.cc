// kill -9 of the worker pool's supervisor under submit load. forqd cannot
// replace its supervisor safely (it would have to fork a threaded process),
// so it stops as on SIGTERM and exits with status 3 for its service manager
// to restart it. The test plays the service manager: it waits for the exit,
// restarts forqd on the same data dir and checks that every acknowledged
// task ends SUCCEEDED with its own result. Loops: FORQ_FAULT_LOOPS (default
// 2); the seed is printed and FORQ_FAULT_SEED replays it.
#include <signal.h>
#include <sys/wait.h>

#include <atomic>
#include <iostream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include "common/mutex.h"
#include "forq/client.h"
#include "tests/fault/fault_util.h"
#include "tests/testing/forqd_process.h"
#include "tests/testing/status_matchers.h"

namespace forq {
namespace {

using ::forq::testing::FaultLoops;
using ::forq::testing::FaultSeed;
using ::forq::testing::ForqdProcess;
using ::forq::testing::IsOk;
using ::forq::testing::Percentile;

// forqd's exit status when its worker pool is lost (see forqd_main.cc).
constexpr int kPoolLostExit = 3;
// From the kill to a restarted forqd with every worker live again: the
// drain after the loss, the exit, a restart and the first workers.
constexpr absl::Duration kWorkersBackBound = absl::Seconds(10);

struct Acked {
  std::string id;
  std::string expected;
};

class Ledger {
 public:
  void Add(std::string id, std::string expected) ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(&mu_);
    acked_.push_back({std::move(id), std::move(expected)});
  }
  std::vector<Acked> acked() ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(&mu_);
    return acked_;
  }

 private:
  Mutex mu_;
  std::vector<Acked> acked_ ABSL_GUARDED_BY(mu_);
};

// Submits batches of small tasks until forqd stops answering.
void SubmitUntilRefused(const std::string& address, uint64_t seed,
                        Ledger& ledger) {
  absl::StatusOr<std::unique_ptr<Client>> client =
      Client::Connect({.address = address, .rpc_timeout = absl::Seconds(5)});
  if (!client.ok()) return;
  std::mt19937_64 rng(seed);
  for (uint64_t n = 0;; ++n) {
    std::vector<v1::TaskSpec> specs(1 + rng() % 20);
    std::vector<std::string> expected;
    for (v1::TaskSpec& spec : specs) {
      if (rng() % 4 == 0) {
        spec.set_kind("sleep");
        spec.set_payload(std::to_string(1 + rng() % 5));
        expected.push_back("");
      } else {
        spec.set_kind("echo");
        spec.set_payload(absl::StrCat(seed, "-", n, "-", expected.size()));
        expected.push_back(spec.payload());
      }
    }
    absl::StatusOr<std::vector<TaskFuture>> r = (*client)->SubmitBatch(specs);
    if (!r.ok()) return;  // forqd is stopping: nothing was acknowledged
    for (size_t i = 0; i < r->size(); ++i) {
      ledger.Add((*r)[i].id(), expected[i]);
    }
    absl::SleepFor(absl::Milliseconds(rng() % 20));  // pacing, not sync
  }
}

// All workers of `client`'s forqd are live (idle or busy).
bool AllWorkersLive(Client& client) {
  absl::StatusOr<v1::PoolStatus> pool = client.GetPool();
  if (!pool.ok() || pool->workers_size() == 0) return false;
  for (const v1::Worker& w : pool->workers()) {
    if (w.state() != v1::IDLE && w.state() != v1::BUSY) {
      return false;
    }
  }
  return true;
}

TEST(SupervisorKillTest, ForqdExitsForRestartAndLosesNothing) {
  const uint64_t seed = FaultSeed();
  std::cout << "seed " << seed << std::endl;
  std::mt19937_64 rng(seed);
  const int loops = FaultLoops(2);
  auto started = ForqdProcess::Start({.workers = 2});
  ASSERT_THAT(started, IsOk());
  ForqdProcess& forqd = **started;

  Ledger ledger;
  std::vector<absl::Duration> workers_back;
  for (int loop = 0; loop < loops; ++loop) {
    std::vector<std::thread> submitters;
    submitters.reserve(4);
    for (int i = 0; i < 4; ++i) {
      submitters.emplace_back(SubmitUntilRefused, forqd.grpc_address(), rng(),
                              std::ref(ledger));
    }
    absl::StatusOr<std::unique_ptr<Client>> client =
        Client::Connect({.address = forqd.grpc_address()});
    ASSERT_THAT(client, IsOk());
    absl::StatusOr<v1::PoolStatus> pool = (*client)->GetPool();
    ASSERT_THAT(pool, IsOk());
    const int supervisor = pool->supervisor_pid();
    ASSERT_GT(supervisor, 0);
    absl::SleepFor(absl::Milliseconds(200 + rng() % 800));  // under load

    const absl::Time killed_at = absl::Now();
    ASSERT_EQ(kill(supervisor, SIGKILL), 0);
    absl::StatusOr<int> status = forqd.AwaitExit(absl::Seconds(60));
    for (std::thread& t : submitters) t.join();
    ASSERT_THAT(status, IsOk()) << "forqd kept running without a supervisor\n"
                                << forqd.LogTail();
    EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == kPoolLostExit)
        << "wait status " << *status << "\n"
        << forqd.LogTail();

    ASSERT_THAT(forqd.Restart(), IsOk()) << forqd.LogTail();
    client = Client::Connect({.address = forqd.grpc_address()});
    ASSERT_THAT(client, IsOk());
    const absl::Time deadline = absl::Now() + kWorkersBackBound * 3;
    while (!AllWorkersLive(**client) && absl::Now() < deadline) {
      (void)(*client)->GetPool();  // each call is a round trip to forqd
    }
    ASSERT_TRUE(AllWorkersLive(**client)) << forqd.LogTail();
    workers_back.push_back(absl::Now() - killed_at);
  }

  absl::StatusOr<std::unique_ptr<Client>> client =
      Client::Connect({.address = forqd.grpc_address()});
  ASSERT_THAT(client, IsOk());
  const std::vector<Acked> acked = ledger.acked();
  int lost = 0, wrong = 0;
  for (const Acked& a : acked) {
    absl::StatusOr<v1::WaitTaskResponse> r =
        (*client)->Wait(a.id, absl::Seconds(60));
    if (!r.ok() || !r->done()) {
      ++lost;
      continue;
    }
    if (r->task().state() != v1::SUCCEEDED ||
        (!a.expected.empty() && r->task().result() != a.expected)) {
      ++wrong;
      ADD_FAILURE() << r->task().DebugString();
    }
  }
  const absl::Duration worst = Percentile(workers_back, 100);
  std::cout << "supervisor kill: " << loops << " kills, acknowledged "
            << acked.size() << ", lost " << lost << ", not SUCCEEDED " << wrong
            << "; kill -> workers back p50 "
            << absl::FormatDuration(Percentile(workers_back, 50)) << ", max "
            << absl::FormatDuration(worst) << std::endl;
  EXPECT_GT(acked.size(), 0u);
  EXPECT_EQ(lost, 0);
  EXPECT_EQ(wrong, 0);
  EXPECT_LE(worst, kWorkersBackBound);
}

}  // namespace
}  // namespace forq
