// RELIABILITY T1: kill -9 of forqd under submit load. Several client threads
// submit small tasks (unary and batch) and record every acknowledged id in a
// ledger; forqd is SIGKILLed at random moments and restarted on the same data
// dir. Afterwards every acknowledged task must exist and end SUCCEEDED with
// its own result. Kill points: FORQ_FAULT_LOOPS (default 5); the seed is
// printed and FORQ_FAULT_SEED replays it.
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <iostream>
#include <map>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include "common/mutex.h"
#include "forq/client.h"
#include "tests/fault/fault_util.h"
#include "tests/testing/forqd_process.h"
#include "tests/testing/postgres_server.h"
#include "tests/testing/status_matchers.h"

namespace forq {
namespace {

using ::forq::testing::FaultLoops;
using ::forq::testing::FaultSeed;
using ::forq::testing::ForqdOptions;
using ::forq::testing::ForqdProcess;
using ::forq::testing::IsOk;
using ::forq::testing::Percentile;
using ::forq::testing::RunCommand;

constexpr int kSubmitters = 8;
// Tasks per second all submitters together aim for: well above what one
// Submit at a time would give, and low enough that the backlog left by the
// kills drains in seconds on two workers.
constexpr double kTargetRate = 1500;
constexpr absl::Duration kMinKillDelay = absl::Milliseconds(300);
constexpr absl::Duration kMaxKillDelay = absl::Milliseconds(3000);
// Generous: kill points leave thousands of tasks to run.
constexpr absl::Duration kSettleDeadline = absl::Seconds(180);
constexpr char kSqlite3[] = "/usr/bin/sqlite3";

struct Acked {
  std::string id;
  std::string expected_result;
};

// Every Submit the server acknowledged, and every error it answered with
// before it was killed (there should be none).
class Ledger {
 public:
  void Add(std::string id, std::string expected) ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(&mu_);
    acked_.push_back({std::move(id), std::move(expected)});
  }
  void UnexpectedError(const absl::Status& s) ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(&mu_);
    unexpected_.push_back(s.ToString());
  }
  void ErrorAfterKill(const absl::Status& s) ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(&mu_);
    ++after_kill_[absl::StatusCodeToString(s.code())];
  }
  std::vector<Acked> acked() ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(&mu_);
    return acked_;
  }
  std::vector<std::string> unexpected() ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(&mu_);
    return unexpected_;
  }
  std::map<std::string, int> after_kill() ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(&mu_);
    return after_kill_;
  }

 private:
  Mutex mu_;
  std::vector<Acked> acked_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> unexpected_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int> after_kill_ ABSL_GUARDED_BY(mu_);
};

// A small task and the result it must end with: echo of a unique payload, or
// a 1-5 ms sleep (whose result is its payload).
v1::TaskSpec RandomSpec(std::mt19937_64& rng, int thread, uint64_t n,
                        std::string* expected) {
  v1::TaskSpec spec;
  if (rng() % 4 == 0) {
    spec.set_kind("sleep");
    spec.set_payload(std::to_string(1 + rng() % 5));
  } else {
    spec.set_kind("echo");
    spec.set_payload(absl::StrCat("t", thread, "-", n));
  }
  // Plenty of attempts: a task caught running by every kill point must still
  // have one left; each kill costs at most one.
  spec.set_max_attempts(100);
  *expected = spec.payload();
  return spec;
}

// Submits until told to stop, or until the first error once forqd was killed.
void SubmitLoop(const std::string& address, int thread, uint64_t seed,
                const std::atomic<bool>& killed, Ledger& ledger) {
  absl::StatusOr<std::unique_ptr<Client>> client =
      Client::Connect({.address = address, .rpc_timeout = absl::Seconds(10)});
  if (!client.ok()) {
    ledger.UnexpectedError(client.status());
    return;
  }
  std::mt19937_64 rng(seed);
  uint64_t n = 0;
  absl::Time next = absl::Now();
  const absl::Duration per_task = absl::Seconds(kSubmitters / kTargetRate);
  while (true) {
    std::vector<v1::TaskSpec> specs;
    std::vector<std::string> expected;
    const bool batch = rng() % 3 == 0;
    const int count = batch ? 2 + static_cast<int>(rng() % 30) : 1;
    for (int i = 0; i < count; ++i) {
      expected.emplace_back();
      specs.push_back(RandomSpec(rng, thread, n++, &expected.back()));
    }
    absl::Status status;
    if (batch) {
      absl::StatusOr<std::vector<TaskFuture>> r = (*client)->SubmitBatch(specs);
      status = r.status();
      if (r.ok()) {
        for (size_t i = 0; i < r->size(); ++i) {
          ledger.Add((*r)[i].id(), expected[i]);
        }
      }
    } else {
      absl::StatusOr<TaskFuture> r = (*client)->Submit(specs[0]);
      status = r.status();
      if (r.ok()) ledger.Add(r->id(), expected[0]);
    }
    if (!status.ok()) {
      // An RPC that fails only after the kill was sent may have been cut by
      // it; its tasks were never acknowledged, so they are not in the ledger.
      if (killed.load()) {
        ledger.ErrorAfterKill(status);
        return;
      }
      ledger.UnexpectedError(status);
      return;
    }
    if (killed.load()) return;
    // Pacing, not synchronisation: keeps the backlog the kills leave small.
    next += per_task * count;
    const absl::Time now = absl::Now();
    if (next > now) {
      absl::SleepFor(next - now);
    } else {
      next = now;
    }
  }
}

// Runs PRAGMA integrity_check on a copy of the store (database + WAL) as it
// was left by the kill: the copy keeps the sqlite3 CLI from checkpointing the
// real WAL that the next forqd start must recover by itself.
absl::StatusOr<std::string> IntegrityCheckCopy(const std::string& data_dir,
                                               const std::string& scratch) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::remove_all(scratch, ec);
  fs::create_directories(scratch, ec);
  if (ec) return absl::InternalError("cannot create " + scratch);
  for (const char* suffix : {"", "-wal"}) {
    const fs::path from = data_dir + "/forq.db" + suffix;
    if (!fs::exists(from)) continue;
    fs::copy_file(from, scratch + "/forq.db" + suffix,
                  fs::copy_options::overwrite_existing, ec);
    if (ec) return absl::InternalError("cannot copy " + from.string());
  }
  absl::StatusOr<forq::testing::CommandResult> r =
      RunCommand({kSqlite3, scratch + "/forq.db", "PRAGMA integrity_check;"});
  if (!r.ok()) return r.status();
  if (r->exit_code != 0) {
    return absl::InternalError(
        absl::StrCat("sqlite3 exited ", r->exit_code, ": ", r->err));
  }
  std::string out = r->out;
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) {
    out.pop_back();
  }
  return out;
}

struct Verdict {
  int64_t succeeded = 0;
  int64_t re_executed = 0;  // succeeded on attempt > 1
  int max_attempt = 0;
  std::vector<std::string> lost;          // missing or not terminal in time
  std::vector<std::string> wrong_state;   // terminal but not SUCCEEDED
  std::vector<std::string> wrong_result;  // SUCCEEDED with another result
};

// Waits for every acknowledged task; splits the ledger over a few threads so
// long polls on unfinished tasks overlap.
Verdict Settle(const std::string& address, const std::vector<Acked>& acked,
               absl::Time deadline) {
  constexpr int kCheckers = 4;
  std::vector<Verdict> parts(kCheckers);
  std::vector<std::thread> threads;
  threads.reserve(kCheckers);
  for (int c = 0; c < kCheckers; ++c) {
    threads.emplace_back([&, c] {
      Verdict& v = parts[c];
      absl::StatusOr<std::unique_ptr<Client>> client =
          Client::Connect({.address = address});
      for (size_t i = c; i < acked.size(); i += kCheckers) {
        const Acked& a = acked[i];
        if (!client.ok()) {
          v.lost.push_back(a.id + " (no client)");
          continue;
        }
        absl::StatusOr<v1::WaitTaskResponse> r = (*client)->Wait(
            a.id, std::max(deadline - absl::Now(), absl::Milliseconds(1)));
        if (!r.ok()) {
          v.lost.push_back(
              absl::StrCat(a.id, " (", r.status().ToString(), ")"));
          continue;
        }
        const v1::Task& t = r->task();
        if (!r->done()) {
          v.lost.push_back(
              absl::StrCat(a.id, " (still ", StateName(t.state()), ")"));
          continue;
        }
        if (t.state() != v1::SUCCEEDED) {
          v.wrong_state.push_back(absl::StrCat(a.id, " ", StateName(t.state()),
                                               " attempt ", t.attempt(), ": ",
                                               t.error().message()));
          continue;
        }
        if (t.result() != a.expected_result) {
          v.wrong_result.push_back(absl::StrCat(a.id, " result '", t.result(),
                                                "' want '", a.expected_result,
                                                "'"));
          continue;
        }
        ++v.succeeded;
        if (t.attempt() > 1) ++v.re_executed;
        v.max_attempt = std::max(v.max_attempt, t.attempt());
      }
    });
  }
  for (std::thread& t : threads) t.join();
  Verdict all;
  for (Verdict& v : parts) {
    all.succeeded += v.succeeded;
    all.re_executed += v.re_executed;
    all.max_attempt = std::max(all.max_attempt, v.max_attempt);
    auto append = [](std::vector<std::string>& to,
                     const std::vector<std::string>& from) {
      to.insert(to.end(), from.begin(), from.end());
    };
    append(all.lost, v.lost);
    append(all.wrong_state, v.wrong_state);
    append(all.wrong_result, v.wrong_result);
  }
  return all;
}

std::string FirstFew(const std::vector<std::string>& v) {
  std::vector<std::string> head(v.begin(),
                                v.begin() + std::min<size_t>(v.size(), 10));
  return absl::StrJoin(head, "\n  ");
}

TEST(ServerKillTest, AcknowledgedTasksSurviveKillNineUnderLoad) {
  const int kill_points = FaultLoops(5);
  const uint64_t seed = FaultSeed();
  std::cout << "ServerKillTest seed " << seed << " (FORQ_FAULT_SEED=" << seed
            << " replays it), kill points " << kill_points << std::endl;
  std::mt19937_64 rng(seed);
  ForqdOptions options;
  options.workers = 2;
  options.flags = {"--retry_backoff=50ms"};
#ifdef FORQ_TEST_POSTGRES
  // postgres_server_kill_test: the same kills with the tasks in PostgreSQL
  // (no SQLite file to check).
  const bool have_sqlite3 = false;
  absl::StatusOr<std::string> store = forq::testing::PostgresStoreFlag("kill");
  ASSERT_THAT(store, IsOk());
  options.flags.push_back(*store);
#else
  const bool have_sqlite3 = access(kSqlite3, X_OK) == 0;
#endif
  absl::StatusOr<std::unique_ptr<ForqdProcess>> started =
      ForqdProcess::Start(options);
  ASSERT_THAT(started, IsOk());
  std::unique_ptr<ForqdProcess> forqd = std::move(*started);
  const std::string db_dir = forqd->data_dir() + "/data";
  const std::string scratch = forqd->data_dir() + "/integrity-copy";

  Ledger ledger;
  std::vector<absl::Duration> restart_times;
  int integrity_ok = 0;
  for (int k = 0; k < kill_points; ++k) {
    if (k > 0) {
      const absl::Time t0 = absl::Now();
      absl::Status s = forqd->Restart();
      ASSERT_THAT(s, IsOk()) << "restart " << k << "\n" << forqd->LogTail();
      restart_times.push_back(absl::Now() - t0);
    }
    std::atomic<bool> killed{false};
    std::vector<std::thread> submitters;
    submitters.reserve(kSubmitters);
    for (int i = 0; i < kSubmitters; ++i) {
      submitters.emplace_back(SubmitLoop, forqd->grpc_address(), i, rng(),
                              std::cref(killed), std::ref(ledger));
    }
    // The random kill moment (not a synchronisation sleep).
    const absl::Duration delay =
        kMinKillDelay +
        absl::Milliseconds(
            rng() % absl::ToInt64Milliseconds(kMaxKillDelay - kMinKillDelay));
    absl::SleepFor(delay);
    killed.store(true);
    absl::StatusOr<int> status = forqd->Kill(SIGKILL);
    for (std::thread& t : submitters) t.join();
    ASSERT_THAT(status, IsOk());
    EXPECT_TRUE(WIFSIGNALED(*status) && WTERMSIG(*status) == SIGKILL)
        << "forqd was not killed by our SIGKILL: wait status " << *status
        << "\n"
        << forqd->LogTail();
    std::cout << "kill point " << k + 1 << " after "
              << absl::FormatDuration(delay) << ", acknowledged so far "
              << ledger.acked().size() << std::endl;
    if (have_sqlite3) {
      absl::StatusOr<std::string> check = IntegrityCheckCopy(db_dir, scratch);
      ASSERT_THAT(check, IsOk());
      EXPECT_EQ(*check, "ok") << "integrity_check after kill point " << k + 1;
      if (*check == "ok") ++integrity_ok;
    }
  }

  const absl::Time t0 = absl::Now();
  ASSERT_THAT(forqd->Restart(), IsOk()) << forqd->LogTail();
  restart_times.push_back(absl::Now() - t0);

  const std::vector<Acked> acked = ledger.acked();
  std::set<std::string> unique;
  for (const Acked& a : acked) unique.insert(a.id);
  EXPECT_EQ(unique.size(), acked.size()) << "an id was acknowledged twice";
  EXPECT_GT(acked.size(), 0u);
  EXPECT_THAT(ledger.unexpected(), ::testing::IsEmpty())
      << "Submit failed while forqd was up";

  const Verdict v =
      Settle(forqd->grpc_address(), acked, absl::Now() + kSettleDeadline);
  std::cout << "acknowledged " << acked.size() << ", lost " << v.lost.size()
            << ", kill points " << kill_points << std::endl;
  std::cout << "succeeded " << v.succeeded << ", other terminal state "
            << v.wrong_state.size() << ", wrong result "
            << v.wrong_result.size() << ", re-executed after a kill "
            << v.re_executed << ", max attempt " << v.max_attempt
            << "; restart-to-ready p50 "
            << absl::FormatDuration(Percentile(restart_times, 50)) << " max "
            << absl::FormatDuration(Percentile(restart_times, 100))
            << "; integrity_check ok " << integrity_ok << "/"
            << (have_sqlite3 ? kill_points : 0) << "; errors after kill";
  for (const auto& [code, n] : ledger.after_kill()) {
    std::cout << " " << code << "=" << n;
  }
  std::cout << "; seed " << seed << std::endl;

  EXPECT_EQ(v.lost.size(), 0u) << "lost:\n  " << FirstFew(v.lost);
  EXPECT_EQ(v.wrong_state.size(), 0u)
      << "not SUCCEEDED:\n  " << FirstFew(v.wrong_state);
  EXPECT_EQ(v.wrong_result.size(), 0u)
      << "wrong result:\n  " << FirstFew(v.wrong_result);
  EXPECT_EQ(v.succeeded, static_cast<int64_t>(acked.size()));
  // Each kill costs a task at most one attempt.
  EXPECT_LE(v.max_attempt, kill_points + 1);

  // The store after the run, with forqd stopped cleanly.
  absl::StatusOr<int> stopped = forqd->Stop();
  ASSERT_THAT(stopped, IsOk());
  EXPECT_TRUE(WIFEXITED(*stopped) && WEXITSTATUS(*stopped) == 0)
      << "wait status " << *stopped << "\n"
      << forqd->LogTail();
  if (have_sqlite3) {
    absl::StatusOr<forq::testing::CommandResult> r =
        RunCommand({kSqlite3, db_dir + "/forq.db", "PRAGMA integrity_check;"});
    ASSERT_THAT(r, IsOk());
    EXPECT_EQ(r->exit_code, 0) << r->err;
    EXPECT_EQ(r->out, "ok\n");
  }
  if (HasFailure()) ADD_FAILURE() << "forqd log tail:\n" << forqd->LogTail();
}

}  // namespace
}  // namespace forq
