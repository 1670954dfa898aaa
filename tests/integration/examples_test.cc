// Runs every program in examples/ against one real forqd and checks its exit
// code and the key lines it prints.
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include "tests/testing/forqd_process.h"
#include "tests/testing/status_matchers.h"

namespace forq {
namespace {

using ::forq::testing::CommandResult;
using ::forq::testing::ForqdOptions;
using ::forq::testing::ForqdProcess;
using ::forq::testing::IsOk;
using ::forq::testing::RunCommand;
using ::testing::HasSubstr;

// name -> binary, from examples/CMakeLists.txt.
std::map<std::string, std::string> ExamplePaths() {
  std::map<std::string, std::string> paths;
  for (absl::string_view kv : absl::StrSplit(FORQ_EXAMPLES, ',')) {
    std::pair<std::string, std::string> p =
        absl::StrSplit(kv, absl::MaxSplits('=', 1));
    paths.insert(p);
  }
  return paths;
}

// What each example must print besides exiting 0.
const std::map<std::string, std::vector<std::string>>& Expectations() {
  static const auto* kExpect =
      new std::map<std::string, std::vector<std::string>>{
          {"pool_size", {"forqd pool size: 2", "ok: 2 forked workers"}},
          {"process", {"ran in worker pid", "ok: exit state SUCCEEDED"}},
          {"apply_async",
           {"primes(100000) = 9592", "bad input", "ok: 4 results and 1 error"}},
          {"map_async", {"ok: 1000 results in 10 chunks, sum 499500"}},
          {"close_join",
           {"drain: drained=1", "ok: close/join waited for every task"}},
          {"imap", {"item 7 -> 5", "ok: 8 results in input order"}},
          {"imap_unordered",
           {"item 0 (sleep 800 ms) finished", "ok: the long task came last"}},
          {"executor",
           {"sha256(abc) = ba7816bf", "ok: submit, map and shutdown"}},
          {"manager_queue",
           {"producer put 3 items", "ok: 3 items passed between tasks"}},
          {"manager_counter", {"[0] = 100", "ok: 4 tasks x 25"}},
          {"pipe",
           {"parent received: primes(10000)=1229", "child received: thanks"}},
      };
  return *kExpect;
}

class ExamplesTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ForqdOptions o;
    o.workers = 2;
    auto p = ForqdProcess::Start(o);
    ASSERT_TRUE(p.ok()) << p.status();
    forqd_ = p->release();
  }
  static void TearDownTestSuite() {
    delete forqd_;
    forqd_ = nullptr;
  }
  void TearDown() override {
    if (HasFailure() && forqd_ != nullptr) {
      ADD_FAILURE() << "forqd log tail:\n" << forqd_->LogTail();
    }
  }

  void RunExample(const std::string& name) {
    std::map<std::string, std::string> paths = ExamplePaths();
    auto it = paths.find(name);
    ASSERT_NE(it, paths.end()) << name << " is not built";
    absl::StatusOr<CommandResult> r =
        RunCommand({it->second, forqd_->grpc_address()});
    ASSERT_THAT(r, IsOk());
    EXPECT_EQ(r->exit_code, 0) << r->out << r->err;
    for (const std::string& want : Expectations().at(name)) {
      EXPECT_THAT(r->out, HasSubstr(want)) << r->err;
    }
  }

  static ForqdProcess* forqd_;
};

ForqdProcess* ExamplesTest::forqd_ = nullptr;

TEST_F(ExamplesTest, EveryBuiltExampleHasExpectations) {
  for (const auto& [name, path] : ExamplePaths()) {
    EXPECT_EQ(Expectations().count(name), 1u) << name;
  }
  EXPECT_GE(ExamplePaths().size(), 10u);
}

TEST_F(ExamplesTest, PoolSize) { RunExample("pool_size"); }
TEST_F(ExamplesTest, Process) { RunExample("process"); }
TEST_F(ExamplesTest, ApplyAsync) { RunExample("apply_async"); }
TEST_F(ExamplesTest, MapAsync) { RunExample("map_async"); }
TEST_F(ExamplesTest, CloseJoin) { RunExample("close_join"); }
TEST_F(ExamplesTest, Imap) { RunExample("imap"); }
TEST_F(ExamplesTest, ImapUnordered) { RunExample("imap_unordered"); }
TEST_F(ExamplesTest, Executor) { RunExample("executor"); }
TEST_F(ExamplesTest, ManagerQueue) { RunExample("manager_queue"); }
TEST_F(ExamplesTest, ManagerCounter) { RunExample("manager_counter"); }
TEST_F(ExamplesTest, Pipe) { RunExample("pipe"); }

}  // namespace
}  // namespace forq
