// The `forq` CLI against a real forqd: output and exit codes.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <thread>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"

#include "forq/v1/pool.pb.h"
#include "forq/v1/task.pb.h"
#include "tests/testing/forqd_process.h"
#include "tests/testing/status_matchers.h"

namespace forq {
namespace {

using ::forq::testing::CommandResult;
using ::forq::testing::ForqBinary;
using ::forq::testing::ForqdProcess;
using ::forq::testing::IsOk;
using ::forq::testing::RunCommand;
using ::testing::HasSubstr;
using ::testing::StartsWith;

class CliTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto p = ForqdProcess::Start({.workers = 2});
    ASSERT_TRUE(p.ok()) << p.status();
    forqd_ = p->release();
  }
  static void TearDownTestSuite() {
    delete forqd_;
    forqd_ = nullptr;
  }

  CommandResult Forq(std::vector<std::string> args,
                     const std::string& stdin_data = "") {
    std::vector<std::string> argv = {ForqBinary(),
                                     "--addr=" + forqd_->grpc_address()};
    argv.insert(argv.end(), args.begin(), args.end());
    absl::StatusOr<CommandResult> r = RunCommand(argv, stdin_data);
    EXPECT_THAT(r, IsOk());
    return r.ok() ? *r : CommandResult();
  }

  static ForqdProcess* forqd_;
};

ForqdProcess* CliTest::forqd_ = nullptr;

TEST_F(CliTest, SubmitWaitPrintsResultAndExitsZero) {
  CommandResult r = Forq({"submit", "echo", "hello world", "--wait"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "hello world\n");
}

TEST_F(CliTest, PayloadDashReadsStdin) {
  CommandResult r = Forq({"submit", "sha256", "-", "--wait"}, "abc");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(
      r.out,
      "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n");
}

TEST_F(CliTest, SubmitPrintsIdThenWaitGetsResult) {
  CommandResult s = Forq({"submit", "primes", "1000"});
  ASSERT_EQ(s.exit_code, 0) << s.err;
  std::string id(absl::StripAsciiWhitespace(s.out));
  ASSERT_FALSE(id.empty());
  CommandResult w = Forq({"wait", id, "--timeout", "30"});
  EXPECT_EQ(w.exit_code, 0) << w.err;
  EXPECT_EQ(w.out, "168\n");
  CommandResult g = Forq({"get", id, "--json"});
  EXPECT_EQ(g.exit_code, 0);
  EXPECT_THAT(g.out, HasSubstr("\"state\":\"SUCCEEDED\""));
  EXPECT_THAT(g.out, HasSubstr(absl::StrCat("\"id\":\"", id, "\"")));
}

TEST_F(CliTest, FailedTaskExitsOneWithMessageOnStderr) {
  CommandResult r = Forq({"submit", "fail", "no luck", "--wait"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("FAILED: no luck"));
}

TEST_F(CliTest, WaitTimeoutExitsTwo) {
  CommandResult s = Forq({"submit", "echo", "x", "--delay", "3600"});
  ASSERT_EQ(s.exit_code, 0);
  std::string id(absl::StripAsciiWhitespace(s.out));
  CommandResult w = Forq({"wait", id, "--timeout", "0.2"});
  EXPECT_EQ(w.exit_code, 2);
  EXPECT_THAT(w.err, HasSubstr("timed out"));
  CommandResult c = Forq({"cancel", id});
  EXPECT_EQ(c.exit_code, 0) << c.err;
  EXPECT_THAT(c.out, HasSubstr("CANCELLED"));
  CommandResult w2 = Forq({"wait", id});
  EXPECT_EQ(w2.exit_code, 1);
}

// submit --wait submits and waits in one call: a task still unfinished
// when --wait-timeout runs out is stored, and a later wait finds it.
TEST_F(CliTest, SubmitWaitTimeoutLeavesTheTaskStored) {
  CommandResult r = Forq({"submit", "echo", "later", "--delay", "3600",
                          "--wait", "--wait-timeout", "0.3", "--json"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("timed out"));
  v1::Task task;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(r.out, &task).ok())
      << r.out;
  EXPECT_EQ(task.state(), v1::QUEUED);
  CommandResult g = Forq({"get", task.id(), "--json"});
  EXPECT_EQ(g.exit_code, 0) << g.err;
  EXPECT_THAT(g.out, HasSubstr("\"state\":\"QUEUED\""));
  EXPECT_EQ(Forq({"cancel", task.id()}).exit_code, 0);
  CommandResult w = Forq({"wait", task.id()});
  EXPECT_EQ(w.exit_code, 1);
  EXPECT_THAT(w.err, HasSubstr("CANCELLED"));
}

TEST_F(CliTest, UnknownKindIsOneClearLineAndExitTwo) {
  CommandResult r = Forq({"submit", "bogus", "x"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, StartsWith("forq: INVALID_ARGUMENT: unknown task kind"));
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1);
}

// A port bound to a socket that does not listen: connecting to it is
// refused, and no other process can take the port meanwhile.
class RefusingPort {
 public:
  RefusingPort() : fd_(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    auto* sa = reinterpret_cast<sockaddr*>(&addr);
    if (fd_ >= 0 && ::bind(fd_, sa, len) == 0 &&
        ::getsockname(fd_, sa, &len) == 0) {
      port_ = ntohs(addr.sin_port);
    }
  }
  ~RefusingPort() {
    if (fd_ >= 0) ::close(fd_);
  }
  RefusingPort(const RefusingPort&) = delete;
  RefusingPort& operator=(const RefusingPort&) = delete;
  int port() const { return port_; }

 private:
  int fd_;
  int port_ = 0;
};

TEST_F(CliTest, RefusedConnectionFailsFastNamingTheAddress) {
  RefusingPort refusing;
  ASSERT_NE(refusing.port(), 0);
  const std::string addr = absl::StrCat("127.0.0.1:", refusing.port());
  const absl::Time start = absl::Now();
  absl::StatusOr<CommandResult> r =
      RunCommand({ForqBinary(), "--addr=" + addr, "get", "x"});
  const absl::Duration took = absl::Now() - start;
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->exit_code, 2);
  EXPECT_EQ(r->err, absl::StrCat("forq: cannot reach forqd at ", addr,
                                 " (connection refused); is forqd running? "
                                 "(--addr / FORQ_ADDR)\n"));
  // The channel's connect timeout is 5 s; a refusal must not wait for it.
  EXPECT_LT(took, absl::Seconds(3));
}

TEST_F(CliTest, StoppedServerIsWaitedForUntilItAnswers) {
  auto p = ForqdProcess::Start({.workers = 1});
  ASSERT_THAT(p, IsOk());
  std::unique_ptr<ForqdProcess> forqd = *std::move(p);
  // A forqd that accepts connections (the kernel does) but answers nothing
  // for a while is slow, not gone: the CLI must wait for it.
  ASSERT_EQ(::kill(forqd->pid(), SIGSTOP), 0);
  absl::Cleanup resume = [&] { ::kill(forqd->pid(), SIGCONT); };
  const absl::Time start = absl::Now();
  absl::StatusOr<CommandResult> r;
  std::thread cli([&] {
    r = RunCommand({ForqBinary(), "--addr=" + forqd->grpc_address(), "submit",
                    "echo", "late", "--wait"});
  });
  // The stall under test: forqd answers nothing for one second.
  absl::SleepFor(absl::Seconds(1));
  std::move(resume).Invoke();
  cli.join();
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->exit_code, 0) << r->err;
  EXPECT_EQ(r->out, "late\n");
  EXPECT_GE(absl::Now() - start, absl::Seconds(1));
}

TEST_F(CliTest, ListFiltersByStateAndQueue) {
  ASSERT_EQ(Forq({"submit", "echo", "a", "-q", "cli-list", "--wait"}).exit_code,
            0);
  ASSERT_EQ(Forq({"submit", "fail", "b", "-q", "cli-list", "--wait"}).exit_code,
            1);
  CommandResult ok = Forq({"list", "-q", "cli-list", "--state", "succeeded"});
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
  EXPECT_EQ(std::count(ok.out.begin(), ok.out.end(), '\n'), 1) << ok.out;
  EXPECT_THAT(ok.out, HasSubstr("SUCCEEDED"));
  CommandResult bad = Forq({"list", "--state", "sleepy"});
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_THAT(bad.err, HasSubstr("unknown task state 'sleepy'"));
}

// /proc/PID/stat field 4 is the parent pid.
int ParentPid(int pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/stat"));
  std::string stat((std::istreambuf_iterator<char>(in)),
                   std::istreambuf_iterator<char>());
  size_t close = stat.rfind(')');
  if (close == std::string::npos) return -1;
  std::vector<std::string> fields = absl::StrSplit(stat.substr(close + 2), ' ');
  int ppid = -1;
  if (fields.size() > 1) (void)absl::SimpleAtoi(fields[1], &ppid);
  return ppid;
}

TEST_F(CliTest, WorkersListsLivePidsUnderTheSupervisor) {
  CommandResult r = Forq({"workers", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  v1::PoolStatus pool;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(r.out, &pool).ok())
      << r.out;
  std::vector<int> pids;
  for (const v1::Worker& w : pool.workers()) pids.push_back(w.pid());
  int supervisor = pool.supervisor_pid();
  ASSERT_EQ(pids.size(), 2u) << r.out;
  ASSERT_GT(supervisor, 0) << r.out;
  EXPECT_EQ(ParentPid(supervisor), forqd_->pid());
  for (int pid : pids) EXPECT_EQ(ParentPid(pid), supervisor);
  CommandResult text = Forq({"workers"});
  EXPECT_THAT(text.out, HasSubstr("pool: 2 workers"));
}

TEST_F(CliTest, DrainThenResume) {
  CommandResult d = Forq({"drain", "--timeout", "10"});
  EXPECT_EQ(d.exit_code, 0) << d.err;
  EXPECT_EQ(d.out, "drained\n");
  // While drained, a task stays queued.
  CommandResult s = Forq({"submit", "echo", "after"});
  std::string id(absl::StripAsciiWhitespace(s.out));
  CommandResult w = Forq({"wait", id, "--timeout", "0.3"});
  EXPECT_EQ(w.exit_code, 2);
  CommandResult r = Forq({"resume"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  CommandResult w2 = Forq({"wait", id, "--timeout", "30"});
  EXPECT_EQ(w2.exit_code, 0) << w2.err;
  EXPECT_EQ(w2.out, "after\n");
}

}  // namespace
}  // namespace forq
