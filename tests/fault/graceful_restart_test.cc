// RELIABILITY T19: SIGTERM under load. forqd stops intake (Submit answers
// UNAVAILABLE while it drains), lets running tasks finish for --drain_grace,
// re-queues the ones still running without an attempt penalty, and exits 0.
// After a restart every acknowledged task succeeds, all on attempt 1.
#include <signal.h>
#include <sys/wait.h>

#include <atomic>
#include <iostream>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/time_util.h"
#include "gtest/gtest.h"

#include "common/mutex.h"
#include "common/notification.h"
#include "forq/client.h"
#include "tests/fault/fault_util.h"
#include "tests/testing/forqd_process.h"
#include "tests/testing/status_matchers.h"

namespace forq {
namespace {

using ::forq::testing::FaultSeed;
using ::forq::testing::ForqdOptions;
using ::forq::testing::ForqdProcess;
using ::forq::testing::IsOk;
using ::forq::testing::ProcessTree;
using ::google::protobuf::util::TimeUtil;

constexpr absl::Duration kDrainGrace = absl::Seconds(2);
constexpr int kSubmitters = 4;
constexpr double kTargetRate = 1000;  // tasks/s over all submitters

absl::Time FromProto(const google::protobuf::Timestamp& ts) {
  return absl::FromUnixNanos(TimeUtil::TimestampToNanoseconds(ts));
}

// Submits outcomes seen by the load threads and the probe.
class Ledger {
 public:
  void Ack(std::string id, std::string expected, bool after_sigterm)
      ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(&mu_);
    acked_.emplace_back(std::move(id), std::move(expected));
    if (after_sigterm) ++acked_after_sigterm_;
  }
  void Refused(const absl::Status& s, bool after_sigterm)
      ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(&mu_);
    if (!after_sigterm || s.code() != absl::StatusCode::kUnavailable) {
      bad_.push_back(absl::StrCat(after_sigterm ? "after" : "before",
                                  " SIGTERM: ", s.ToString()));
    }
    if (s.code() == absl::StatusCode::kUnavailable &&
        absl::StrContains(s.message(), "shutting down")) {
      ++refused_while_draining_;
    }
    ++refused_;
  }
  std::vector<std::pair<std::string, std::string>> acked()
      ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(&mu_);
    return acked_;
  }
  int acked_after_sigterm() ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(&mu_);
    return acked_after_sigterm_;
  }
  std::vector<std::string> bad() ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(&mu_);
    return bad_;
  }
  int refused() ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(&mu_);
    return refused_;
  }
  int refused_while_draining() ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(&mu_);
    return refused_while_draining_;
  }

 private:
  Mutex mu_;
  std::vector<std::pair<std::string, std::string>> acked_ ABSL_GUARDED_BY(mu_);
  int acked_after_sigterm_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<std::string> bad_ ABSL_GUARDED_BY(mu_);
  int refused_ ABSL_GUARDED_BY(mu_) = 0;
  int refused_while_draining_ ABSL_GUARDED_BY(mu_) = 0;
};

// Submits short tasks (unary and batch) until the first refusal.
void SubmitLoop(const std::string& address, uint64_t seed,
                const std::atomic<bool>& sigterm_sent, Ledger& ledger) {
  absl::StatusOr<std::unique_ptr<Client>> client =
      Client::Connect({.address = address, .rpc_timeout = absl::Seconds(10)});
  if (!client.ok()) {
    ledger.Refused(client.status(), false);
    return;
  }
  std::mt19937_64 rng(seed);
  absl::Time next = absl::Now();
  const absl::Duration per_task = absl::Seconds(kSubmitters / kTargetRate);
  uint64_t n = 0;
  while (true) {
    const int count = rng() % 3 == 0 ? 2 + static_cast<int>(rng() % 20) : 1;
    std::vector<v1::TaskSpec> specs(count);
    for (v1::TaskSpec& spec : specs) {
      if (rng() % 4 == 0) {
        spec.set_kind("sleep");
        spec.set_payload(std::to_string(1 + rng() % 5));
      } else {
        spec.set_kind("echo");
        spec.set_payload(absl::StrCat(seed, "-", n++));
      }
    }
    absl::StatusOr<std::vector<TaskFuture>> r;
    if (count == 1) {
      absl::StatusOr<TaskFuture> f = (*client)->Submit(specs[0]);
      if (f.ok()) {
        r = std::vector<TaskFuture>{*f};
      } else {
        r = f.status();
      }
    } else {
      r = (*client)->SubmitBatch(specs);
    }
    const bool after = sigterm_sent.load();
    if (!r.ok()) {
      ledger.Refused(r.status(), after);
      return;
    }
    for (size_t i = 0; i < r->size(); ++i) {
      ledger.Ack((*r)[i].id(), specs[i].payload(), after);
    }
    next += per_task * count;
    const absl::Time now = absl::Now();
    if (next > now) {
      absl::SleepFor(next - now);
    } else {
      next = now;
    }
  }
}

SubmitOptions Priority(int n) {
  SubmitOptions o;
  o.priority = n;
  return o;
}

bool AwaitRunning(Client& client, const std::string& id) {
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (absl::Now() < deadline) {
    absl::StatusOr<v1::Task> t = client.Get(id);
    if (!t.ok() || IsTerminal(t->state())) return false;
    if (t->state() == v1::RUNNING) return true;
    (void)client.Wait(id, absl::Milliseconds(10));
  }
  return false;
}

TEST(GracefulRestartTest, SigtermDrainsRefusesIntakeAndLosesNothing) {
  const uint64_t seed = FaultSeed();
  std::cout << "seed " << seed << std::endl;
  std::mt19937_64 rng(seed);
  ForqdOptions options;
  options.workers = 2;
  options.flags = {"--retry_backoff=50ms",
                   absl::StrCat("--drain_grace=",
                                absl::ToInt64Milliseconds(kDrainGrace), "ms")};
  absl::StatusOr<std::unique_ptr<ForqdProcess>> started =
      ForqdProcess::Start(options);
  ASSERT_THAT(started, IsOk());
  std::unique_ptr<ForqdProcess> forqd = std::move(*started);
  absl::StatusOr<std::unique_ptr<Client>> connected =
      Client::Connect({.address = forqd->grpc_address()});
  ASSERT_THAT(connected, IsOk());
  std::unique_ptr<Client> client = std::move(*connected);

  // Outlives the drain: interrupted and re-queued. Priority puts it ahead of
  // the load.
  absl::StatusOr<TaskFuture> interrupted =
      client->Submit("sleep", "5000", Priority(100));
  ASSERT_THAT(interrupted, IsOk());
  ASSERT_TRUE(AwaitRunning(*client, interrupted->id()));

  Ledger ledger;
  std::atomic<bool> sigterm_sent{false};
  std::vector<std::thread> threads;
  Notification go;
  // On an early ASSERT return: stop the load (a dead forqd refuses it) and
  // join, so no thread outlives what it points to.
  absl::Cleanup join_all = [&] {
    if (!go.HasBeenNotified()) go.Notify();
    bool running = false;
    for (std::thread& t : threads) running = running || t.joinable();
    if (running && forqd->pid() > 0) forqd->Kill(SIGKILL).IgnoreError();
    for (std::thread& t : threads) {
      if (t.joinable()) t.join();
    }
  };
  for (int i = 0; i < kSubmitters; ++i) {
    threads.emplace_back(SubmitLoop, forqd->grpc_address(), rng(),
                         std::cref(sigterm_sent), std::ref(ledger));
  }
  absl::SleepFor(absl::Milliseconds(300 + rng() % 700));  // some load first

  // Finishes inside the drain period.
  absl::StatusOr<TaskFuture> finishing =
      client->Submit("sleep", "500", Priority(100));
  ASSERT_THAT(finishing, IsOk());
  ASSERT_TRUE(AwaitRunning(*client, finishing->id()));

  // A probe that submits right after SIGTERM, until refused.
  threads.emplace_back([&] {
    absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(
        {.address = forqd->grpc_address(), .rpc_timeout = absl::Seconds(10)});
    if (!c.ok()) {
      ledger.Refused(c.status(), false);
      return;
    }
    go.WaitForNotification();
    for (int i = 0;; ++i) {
      absl::StatusOr<TaskFuture> f =
          (*c)->Submit("echo", absl::StrCat("probe-", i));
      if (!f.ok()) {
        ledger.Refused(f.status(), true);
        return;
      }
      ledger.Ack(f->id(), absl::StrCat("probe-", i), true);
    }
  });

  sigterm_sent.store(true);
  go.Notify();
  const absl::Time sigterm_at = absl::Now();
  absl::StatusOr<int> status = forqd->Stop(kDrainGrace + absl::Seconds(10));
  const absl::Duration stop_took = absl::Now() - sigterm_at;
  for (std::thread& t : threads) t.join();
  ASSERT_THAT(status, IsOk()) << forqd->LogTail();
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0)
      << "wait status " << *status << "\n"
      << forqd->LogTail();
  // The drain waited for the interrupted task the whole grace period, and
  // not much longer.
  EXPECT_GE(stop_took, kDrainGrace - absl::Milliseconds(100));
  EXPECT_LE(stop_took, kDrainGrace + absl::Seconds(3));
  EXPECT_THAT(ledger.bad(), ::testing::IsEmpty())
      << "Submit must answer OK or UNAVAILABLE, and only OK before SIGTERM";
  EXPECT_GE(ledger.refused_while_draining(), 1)
      << "no Submit was refused by the draining forqd";

  ASSERT_THAT(forqd->Restart(), IsOk()) << forqd->LogTail();
  connected = Client::Connect({.address = forqd->grpc_address()});
  ASSERT_THAT(connected, IsOk());
  client = std::move(*connected);

  // Re-queued without penalty: not a lost worker, attempt back to 0.
  absl::StatusOr<v1::Task> t = client->Get(interrupted->id());
  ASSERT_THAT(t, IsOk());
  EXPECT_NE(t->error().reason(), v1::WORKER_LOST) << t->DebugString();
  EXPECT_LE(t->attempt(), 1) << t->DebugString();

  // (The futures belong to the old client: wait through the new one.)
  absl::StatusOr<v1::WaitTaskResponse> done =
      client->Wait(finishing->id(), absl::Seconds(30));
  ASSERT_THAT(done, IsOk());
  ASSERT_TRUE(done->done());
  EXPECT_EQ(done->task().state(), v1::SUCCEEDED) << done->task().DebugString();
  EXPECT_EQ(done->task().attempt(), 1);
  EXPECT_LT(FromProto(done->task().finished_at()), sigterm_at + stop_took)
      << "the running task should have finished during the drain";

  done = client->Wait(interrupted->id(), absl::Seconds(60));
  ASSERT_THAT(done, IsOk());
  ASSERT_TRUE(done->done());
  EXPECT_EQ(done->task().state(), v1::SUCCEEDED) << done->task().DebugString();
  EXPECT_EQ(done->task().attempt(), 1)
      << "interrupted by the drain, not failed";
  EXPECT_GT(FromProto(done->task().started_at()), sigterm_at + stop_took)
      << "it ran to the end after the restart";

  const auto acked = ledger.acked();
  int lost = 0, wrong = 0, penalised = 0;
  for (const auto& [id, expected] : acked) {
    absl::StatusOr<v1::WaitTaskResponse> r =
        client->Wait(id, absl::Seconds(60));
    if (!r.ok() || !r->done()) {
      ++lost;
      ADD_FAILURE() << "lost " << id << ": "
                    << (r.ok() ? std::string(StateName(r->task().state()))
                               : r.status().ToString());
      continue;
    }
    if (r->task().state() != v1::SUCCEEDED || r->task().result() != expected) {
      ++wrong;
      ADD_FAILURE() << r->task().DebugString();
    }
    if (r->task().attempt() != 1) {
      ++penalised;
      ADD_FAILURE() << "attempt penalty: " << r->task().DebugString();
    }
  }
  std::cout << "graceful restart: SIGTERM -> exit status "
            << (WIFEXITED(*status) ? WEXITSTATUS(*status) : -1) << " after "
            << absl::FormatDuration(stop_took) << " (drain_grace "
            << absl::FormatDuration(kDrainGrace) << "); acknowledged "
            << acked.size() << " (" << ledger.acked_after_sigterm()
            << " after SIGTERM), lost " << lost << ", not SUCCEEDED " << wrong
            << ", attempt > 1: " << penalised << "; Submit refused "
            << ledger.refused() << " times (" << ledger.refused_while_draining()
            << " UNAVAILABLE 'shutting down' while draining)" << std::endl;
  EXPECT_EQ(lost, 0);
  if (HasFailure()) ADD_FAILURE() << "forqd log tail:\n" << forqd->LogTail();
}

// What systemd does by default (KillMode=control-group): SIGTERM to every
// process of forqd at once. The pool's processes ignore it, so forqd still
// drains: the running task finishes and forqd exits 0, not 3 ("pool lost").
TEST(GracefulRestartTest, SigtermToEveryProcessOfForqdStillDrains) {
  ForqdOptions options;
  options.workers = 2;
  options.flags = {"--drain_grace=20s"};
  FORQ_ASSERT_OK_AND_ASSIGN(std::unique_ptr<ForqdProcess> forqd,
                            ForqdProcess::Start(options));
  FORQ_ASSERT_OK_AND_ASSIGN(
      std::unique_ptr<Client> client,
      Client::Connect({.address = forqd->grpc_address()}));
  FORQ_ASSERT_OK_AND_ASSIGN(TaskFuture running, client->Submit("sleep", "500"));
  ASSERT_TRUE(AwaitRunning(*client, running.id()));

  const std::vector<int> tree = ProcessTree(forqd->pid());
  ASSERT_GE(tree.size(), 4u) << "forqd, its supervisor and two workers";
  for (int pid : tree) kill(pid, SIGTERM);
  absl::StatusOr<int> status = forqd->AwaitExit(absl::Seconds(60));
  ASSERT_THAT(status, IsOk());
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0)
      << "wait status " << *status << "\n"
      << forqd->LogTail();

  client.reset();
  ASSERT_THAT(forqd->Restart(), IsOk());
  FORQ_ASSERT_OK_AND_ASSIGN(
      client, Client::Connect({.address = forqd->grpc_address()}));
  FORQ_ASSERT_OK_AND_ASSIGN(v1::Task task, client->Get(running.id()));
  EXPECT_EQ(task.state(), v1::SUCCEEDED);
  EXPECT_EQ(task.attempt(), 1) << "finished in the drain, not run again";
}

}  // namespace
}  // namespace forq
