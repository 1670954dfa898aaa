// kill -9 of the node that owns the Manager while clients of every node
// append to one shared list: another node takes over, and every append
// that was acknowledged is in the list exactly once (an unacknowledged one
// may or may not be). FORQ_FAULT_LOOPS loops (1 by default; `make
// test-fault` runs 30).
#include <signal.h>

#include <atomic>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include "common/mutex.h"
#include "forq/client.h"
#include "forq/manager.h"
#include "tests/fault/fault_util.h"
#include "tests/postgres/cluster_nodes.h"
#include "tests/testing/status_matchers.h"

namespace forq {
namespace {

using ::forq::testing::AwaitOwner;
using ::forq::testing::ClusterNode;
using ::forq::testing::ClusterNodes;
using ::forq::testing::IsOk;
using ::forq::testing::OwnerNode;

TEST(ClusterManagerKillTest, KilledOwnerLosesNoAcknowledgedAppend) {
  const int loops = testing::FaultLoops(1);
  const uint64_t seed = testing::FaultSeed();
  std::mt19937_64 rng(seed);
  std::cout << "seed " << seed << " (FORQ_FAULT_SEED replays it)\n";
  int64_t acked_total = 0;
  int64_t lost_total = 0;
  for (int loop = 0; loop < loops; ++loop) {
    auto nodes = ClusterNodes::Create("mgrkill");
    ASSERT_THAT(nodes, IsOk());
    auto a = nodes->Start("a");
    ASSERT_THAT(a, IsOk());
    ASSERT_TRUE(AwaitOwner(*nodes, "a"));
    auto started = nodes->StartNodes({"b", "c"});
    ASSERT_THAT(started, IsOk());
    auto [b, c] = *started;

    // Two writers through each node (a's die with it).
    struct Writer {
      std::string name;
      ClusterNode* node;
      std::set<std::string> acked;
      std::set<std::string> maybe;  // answered with an error
    };
    std::vector<Writer> writers;
    for (ClusterNode* n : {*a, b, c}) {
      for (int i = 0; i < 2; ++i) {
        writers.push_back({absl::StrCat(n->name, i), n, {}, {}});
      }
    }
    std::atomic<bool> stop{false};
    std::atomic<int64_t> acked_after_kill{0};
    std::atomic<bool> killed{false};
    std::vector<std::thread> threads;
    threads.reserve(writers.size());
    for (Writer& w : writers) {
      threads.emplace_back([&w, &stop, &killed, &acked_after_kill] {
        ManagerOptions o;
        o.rpc_timeout = absl::Seconds(5);
        Manager m(*w.node->client, o);
        for (int n = 0; !stop.load(); ++n) {
          const std::string item = absl::StrCat(w.name, "-", n);
          absl::StatusOr<int64_t> r = m.list("ledger").Append(item);
          if (r.ok()) {
            w.acked.insert(item);
            if (killed.load()) acked_after_kill.fetch_add(1);
          } else {
            w.maybe.insert(item);
            absl::SleepFor(absl::Milliseconds(10));
          }
        }
      });
    }
    std::uniform_int_distribution<int> when(200, 1500);
    absl::SleepFor(absl::Milliseconds(when(rng)));
    ASSERT_THAT((*a)->process->Kill(SIGKILL), IsOk());
    killed.store(true);
    // Writers through b and c go on once a new owner serves.
    const absl::Time give_up = absl::Now() + absl::Seconds(30);
    while (acked_after_kill.load() < 50 && absl::Now() < give_up) {
      absl::SleepFor(absl::Milliseconds(20));
    }
    stop.store(true);
    for (std::thread& t : threads) t.join();
    ASSERT_GE(acked_after_kill.load(), 50) << "no node took over";

    Manager reader(*b->client);
    auto items = reader.list("ledger").Slice();
    ASSERT_THAT(items, IsOk());
    std::map<std::string, int> seen;
    for (const std::string& item : *items) ++seen[item];
    int64_t acked = 0;
    int64_t lost = 0;
    for (const Writer& w : writers) {
      acked += static_cast<int64_t>(w.acked.size());
      for (const std::string& item : w.acked) {
        auto it = seen.find(item);
        const int count = it == seen.end() ? 0 : it->second;
        if (count == 0) ++lost;
        EXPECT_EQ(count, 1) << item;
      }
    }
    for (const auto& [item, count] : seen) {
      EXPECT_EQ(count, 1) << item << " appended more than once";
      bool known = false;
      for (const Writer& w : writers) {
        known = known || w.acked.count(item) > 0 || w.maybe.count(item) > 0;
      }
      EXPECT_TRUE(known) << item << " was never written";
    }
    std::cout << "loop " << loop << ": owner a killed, new owner "
              << OwnerNode(*nodes) << "; acknowledged " << acked << ", lost "
              << lost << "\n";
    acked_total += acked;
    lost_total += lost;
  }
  std::cout << "acknowledged " << acked_total << ", lost " << lost_total
            << " over " << loops << " loop(s)\n";
  EXPECT_EQ(lost_total, 0);
}

}  // namespace
}  // namespace forq
