// kill -9 of forqd under pipelined Manager writes. One client keeps 64
// operations in flight on a Session stream: dict sets over 61 keys and list
// appends, each value naming its operation. forqd is SIGKILLed at a random
// moment and restarted on the same data dir, several times. Every other
// round forqd's disk is squeezed now and then (its file-size limit,
// RLIMIT_FSIZE with SIGXFSZ ignored, drops to 1 MiB for up to a few ms), so its
// store fails for a moment as on a full disk: a batch fails, and one
// behind it may still be written (the row log's gap). After each round
// forqd restarts with room, and what is read back must be
// exactly the operations sent in order, up to some point, less those
// answered with an error: none acknowledged missing, none failed applied,
// none applied out of order. The store keeps a prefix of the group commits
// and replay of the row log stops at the first missing record
// (docs/manager.md, "Persistence"); records of earlier generations stay in
// their recycled slots and must never come back. Kill points:
// FORQ_FAULT_LOOPS (default 4); the seed is printed and FORQ_FAULT_SEED
// replays it.
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <deque>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include "common/status_macros.h"
#include "forq/client.h"
#include "forq/manager.h"
#include "tests/fault/fault_util.h"
#include "tests/testing/forqd_process.h"
#include "tests/testing/status_matchers.h"

namespace forq {
namespace {

using ::forq::testing::FaultLoops;
using ::forq::testing::FaultSeed;
using ::forq::testing::ForqdOptions;
using ::forq::testing::ForqdProcess;
using ::forq::testing::IsOk;
using ::forq::testing::RunCommand;

constexpr int kInFlight = 64;
constexpr int kKeys = 61;
constexpr absl::Duration kMinKillDelay = absl::Milliseconds(300);
constexpr absl::Duration kMaxKillDelay = absl::Milliseconds(1500);
constexpr char kDict[] = "kill-dict";
constexpr char kList[] = "kill-list";
constexpr char kSqlite3[] = "/usr/bin/sqlite3";

// Operation i of round r: every fourth appends to the list, the others set
// key i % kKeys of the dict; the value is "r:i".
bool IsAppend(int64_t i) { return i % 4 == 3; }
std::string KeyOf(int64_t i) { return absl::StrCat("k", i % kKeys); }
std::string ValueOf(int round, int64_t i) {
  return absl::StrCat(round, ":", i);
}

// The operation index of a value written in `round`, or -1.
int64_t IndexIn(int round, const std::string& value) {
  std::vector<std::string> parts = absl::StrSplit(value, ':');
  int r = 0;
  int64_t i = 0;
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &r) || r != round ||
      !absl::SimpleAtoi(parts[1], &i)) {
    return -1;
  }
  return i;
}

struct Contents {
  std::map<std::string, std::string> dict;
  std::vector<std::string> list;
  bool operator==(const Contents& o) const {
    return dict == o.dict && list == o.list;
  }
};

// What the writer of one round saw.
struct Round {
  int64_t sent = 0;
  std::vector<int64_t> acked;
  // Answered with an error while forqd was up (before the kill was sent).
  std::set<int64_t> failed;
  std::vector<std::string> errors;  // the first few of them
};

// Sends operations, kInFlight at a time, until one is cut off by the kill;
// then collects the rest of the window.
void Write(const std::string& address, int round,
           const std::atomic<bool>& kill_sent, Round& out) {
  absl::StatusOr<std::unique_ptr<Client>> client =
      Client::Connect({.address = address});
  if (!client.ok()) {
    out.errors.push_back(client.status().ToString());
    return;
  }
  Manager m(**client);
  Dict d = m.dict(kDict);
  std::deque<std::pair<int64_t, ManagerFuture>> window;
  auto settle = [&](std::pair<int64_t, ManagerFuture>& op) {
    absl::StatusOr<v1::ManagerResult> r = op.second.Get();
    if (r.ok()) {
      out.acked.push_back(op.first);
      return true;
    }
    // Refused by the server (its store failed): never applied, whenever
    // the answer came. Any other error after the kill: cut by it, unknown.
    const bool refused =
        absl::StrContains(r.status().message(), "not persisted");
    if (kill_sent.load() && !refused) return false;
    out.failed.insert(op.first);
    if (out.errors.size() < 3) {
      out.errors.push_back(
          absl::StrCat("op ", op.first, ": ", r.status().ToString()));
    }
    return true;
  };
  while (true) {
    while (static_cast<int>(window.size()) < kInFlight) {
      const int64_t i = out.sent++;
      if (IsAppend(i)) {
        v1::ManagerCall c =
            Manager::MakeCall(v1::OBJECT_TYPE_LIST, "append", kList);
        c.set_value(ValueOf(round, i));
        window.emplace_back(i, m.Async(c));
      } else {
        window.emplace_back(i, d.SetAsync(KeyOf(i), ValueOf(round, i)));
      }
    }
    const bool ok = settle(window.front());
    window.pop_front();
    if (!ok) break;
  }
  for (auto& op : window) settle(op);
}

absl::StatusOr<Contents> Read(const std::string& address) {
  FORQ_ASSIGN_OR_RETURN(std::unique_ptr<Client> client,
                        Client::Connect({.address = address}));
  Manager m(*client);
  Contents c;
  FORQ_ASSIGN_OR_RETURN(auto items, m.dict(kDict).Items());
  for (auto& [k, v] : items) c.dict[k] = v;
  FORQ_ASSIGN_OR_RETURN(c.list, m.list(kList).Slice());
  return c;
}

// The contents after the operations of `round` before `cut` but `failed`
// on `before`.
Contents Apply(Contents before, int round, int64_t cut,
               const std::set<int64_t>& failed) {
  for (int64_t i = 0; i < cut; ++i) {
    if (failed.count(i) > 0) continue;
    if (IsAppend(i)) {
      before.list.push_back(ValueOf(round, i));
    } else {
      before.dict[KeyOf(i)] = ValueOf(round, i);
    }
  }
  return before;
}

// One past the last operation of `round` that `after` shows.
int64_t Cut(const Contents& before, const Contents& after, int round) {
  int64_t last = -1;
  for (const auto& [k, v] : after.dict) {
    last = std::max(last, IndexIn(round, v));
  }
  for (size_t j = before.list.size(); j < after.list.size(); ++j) {
    last = std::max(last, IndexIn(round, after.list[j]));
  }
  return last + 1;
}

// What an operation's value says about it: its index and how it was
// answered.
std::string Describe(const std::string& value, int round, const Round& r) {
  const int64_t i = IndexIn(round, value);
  if (i < 0) return value.empty() ? "(none)" : value;
  const char* how =
      r.failed.count(i) > 0 ? "failed"
      : std::find(r.acked.begin(), r.acked.end(), i) != r.acked.end()
          ? "acknowledged"
          : "unanswered";
  return absl::StrCat(value, " (", how, ")");
}

// The first few differences between `want` and `got`.
std::string Differences(const Contents& want, const Contents& got, int round,
                        const Round& r) {
  std::string out;
  int n = 0;
  for (const auto& [k, v] : want.dict) {
    auto it = got.dict.find(k);
    const std::string g = it == got.dict.end() ? "" : it->second;
    if (g != v && n++ < 5) {
      absl::StrAppend(&out, "  dict ", k, ": want ", Describe(v, round, r),
                      " got ", Describe(g, round, r), "\n");
    }
  }
  absl::StrAppend(&out, "  list: want ", want.list.size(), " items, got ",
                  got.list.size(), "\n");
  for (size_t j = 0; j < std::max(want.list.size(), got.list.size()); ++j) {
    const std::string w = j < want.list.size() ? want.list[j] : "";
    const std::string g = j < got.list.size() ? got.list[j] : "";
    if (w != g) {
      absl::StrAppend(&out, "  list[", j, "]: want ", Describe(w, round, r),
                      " got ", Describe(g, round, r), "\n");
      break;
    }
  }
  return out;
}

// Log rows in the store (records in their slots and the log's start).
absl::StatusOr<int> LogRows(const std::string& db) {
  FORQ_ASSIGN_OR_RETURN(
      forq::testing::CommandResult r,
      RunCommand({kSqlite3, db,
                  "SELECT count(*) FROM objects WHERE name LIKE "
                  "'manager/log/%';"}));
  int n = 0;
  if (r.exit_code != 0 || !absl::SimpleAtoi(r.out, &n)) {
    return absl::InternalError(absl::StrCat("sqlite3: ", r.out, r.err));
  }
  return n;
}

// Ignores SIGXFSZ while it lives, so that a forqd started meanwhile
// inherits that: a write past its file-size limit fails with EFBIG.
class IgnoreFileSizeSignal {
 public:
  IgnoreFileSizeSignal() {
    struct sigaction ignore = {};
    ignore.sa_handler = SIG_IGN;
    ok_ = sigaction(SIGXFSZ, &ignore, &old_) == 0;
  }
  ~IgnoreFileSizeSignal() { sigaction(SIGXFSZ, &old_, nullptr); }
  IgnoreFileSizeSignal(const IgnoreFileSizeSignal&) = delete;
  IgnoreFileSizeSignal& operator=(const IgnoreFileSizeSignal&) = delete;
  bool ok() const { return ok_; }

 private:
  bool ok_ = false;
  struct sigaction old_ = {};
};

// Squeezes forqd's disk until `stop`: up to a few ms with no room past
// 1 MiB in any file (its store writes fail, as on a full disk), then some
// ms with room. Returns how many squeezes there were.
int Squeeze(int pid, uint64_t seed, const std::atomic<bool>& stop) {
  std::mt19937_64 rng(seed);
  rlimit room = {};
  if (getrlimit(RLIMIT_FSIZE, &room) != 0) return 0;
  rlimit tight = room;
  tight.rlim_cur = 1 << 20;
  int n = 0;
  while (!stop.load()) {
    if (prlimit(pid, RLIMIT_FSIZE, &tight, nullptr) != 0) break;
    ++n;
    // Fault timing, not synchronisation. A squeeze shorter than a commit
    // fails one batch and lets the one behind it through.
    absl::SleepFor(rng() % 4 == 0 ? absl::Milliseconds(1 + rng() % 5)
                                  : absl::Microseconds(rng() % 200));
    if (prlimit(pid, RLIMIT_FSIZE, &room, nullptr) != 0) break;
    absl::SleepFor(absl::Milliseconds(5 + rng() % 20));
  }
  return n;
}

// Lines of forqd's log (every start appends to it) that contain `text`.
int LogLines(const std::string& path, absl::string_view text) {
  std::ifstream in(path);
  int n = 0;
  for (std::string line; std::getline(in, line);) {
    n += absl::StrContains(line, text) ? 1 : 0;
  }
  return n;
}

TEST(ManagerKillTest, WhatIsReadBackIsAPrefixOfTheOperations) {
  const int kill_points = FaultLoops(4);
  const uint64_t seed = FaultSeed();
  std::cout << "ManagerKillTest seed " << seed << " (FORQ_FAULT_SEED=" << seed
            << " replays it), kill points " << kill_points << std::endl;
  std::mt19937_64 rng(seed);
  ForqdOptions options;
  options.workers = 1;
  // Acknowledged at commit: a kill -9 (not a power loss) keeps every commit.
  options.flags = {"--durability=none"};
  absl::StatusOr<std::unique_ptr<ForqdProcess>> started =
      ForqdProcess::Start(options);
  ASSERT_THAT(started, IsOk());
  std::unique_ptr<ForqdProcess> forqd = std::move(*started);
  const std::string log = forqd->data_dir() + "/forqd.log";

  Contents model;
  int64_t acked_total = 0, failed_total = 0;
  for (int round = 1; round <= kill_points; ++round) {
    const bool squeezed = round % 2 == 0;
    if (squeezed) {
      ASSERT_THAT(forqd->Kill(SIGKILL), IsOk());
      IgnoreFileSizeSignal ignore;
      ASSERT_TRUE(ignore.ok());
      ASSERT_THAT(forqd->Restart(), IsOk()) << forqd->LogTail();
    }
    std::atomic<bool> kill_sent{false};
    Round r;
    std::thread writer(Write, forqd->grpc_address(), round,
                       std::cref(kill_sent), std::ref(r));
    int squeezes = 0;
    std::thread squeezer;
    if (squeezed) {
      squeezer = std::thread([&, pid = forqd->pid(), s = rng()] {
        squeezes = Squeeze(pid, s, kill_sent);
      });
    }
    // The random kill moment (not a synchronisation sleep).
    const absl::Duration delay =
        kMinKillDelay +
        absl::Milliseconds(
            rng() % absl::ToInt64Milliseconds(kMaxKillDelay - kMinKillDelay));
    absl::SleepFor(delay);
    kill_sent.store(true);
    if (squeezer.joinable()) squeezer.join();
    absl::StatusOr<int> status = forqd->Kill(SIGKILL);
    writer.join();
    ASSERT_THAT(status, IsOk());
    ASSERT_TRUE(WIFSIGNALED(*status) && WTERMSIG(*status) == SIGKILL)
        << "wait status " << *status << "\n"
        << forqd->LogTail();
    if (!squeezed) {
      EXPECT_THAT(r.errors, ::testing::IsEmpty()) << "round " << round;
    }
    ASSERT_THAT(forqd->Restart(), IsOk()) << forqd->LogTail();

    absl::StatusOr<Contents> after = Read(forqd->grpc_address());
    ASSERT_THAT(after, IsOk());
    const int64_t cut = Cut(model, *after, round);
    const int64_t last_acked =
        r.acked.empty() ? -1
                        : *std::max_element(r.acked.begin(), r.acked.end());
    std::cout << "round " << round
              << (squeezed ? absl::StrCat(" (", squeezes, " squeezes)") : "")
              << ": killed after " << absl::FormatDuration(delay) << ", sent "
              << r.sent << ", acknowledged " << r.acked.size() << ", failed "
              << r.failed.size() << ", read back up to " << cut << std::endl;
    for (const std::string& e : r.errors) std::cout << "  " << e << std::endl;
    EXPECT_GT(cut, last_acked) << "an acknowledged operation was lost";
    EXPECT_LE(cut, r.sent);
    const Contents want = Apply(model, round, cut, r.failed);
    EXPECT_TRUE(*after == want) << "round " << round << ": not the first "
                                << cut << " operations less the failed ones:\n"
                                << Differences(want, *after, round, r);
    if (HasFailure()) break;
    model = *std::move(after);
    acked_total += static_cast<int64_t>(r.acked.size());
    failed_total += static_cast<int64_t>(r.failed.size());
  }
  EXPECT_GT(acked_total, 0);
  std::cout << "acknowledged " << acked_total << ", failed " << failed_total
            << "; forqd's log: "
            << LogLines(log, "store write failed, rolling back")
            << " rollbacks, "
            << LogLines(log, "written behind a batch that failed")
            << " replays that skipped records behind a gap; seed " << seed
            << std::endl;

  ASSERT_THAT(forqd->Stop(), IsOk());
  if (access(kSqlite3, X_OK) == 0) {
    // The log stays in its slots: at most 1,024 records and the batches
    // in flight (ObjectManagerOptions::row_log), and the start.
    absl::StatusOr<int> rows = LogRows(forqd->data_dir() + "/data/forq.db");
    ASSERT_THAT(rows, IsOk());
    std::cout << "log rows in the store: " << *rows << std::endl;
    EXPECT_LE(*rows, 1024 + 2 + 1);
  }
  if (HasFailure()) ADD_FAILURE() << "forqd log tail:\n" << forqd->LogTail();
}

}  // namespace
}  // namespace forq
