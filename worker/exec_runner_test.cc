#include "worker/exec_runner.h"

#include <signal.h>
#include <unistd.h>

#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include "common/notification.h"
#include "common/status_macros.h"
#include "tests/testing/run_budget.h"
#include "tests/testing/run_timer.h"
#include "tests/testing/status_matchers.h"
#include "worker/fork_pool.h"

namespace forq::worker {
namespace {

using ::forq::testing::AwaitNotification;
using ::forq::testing::IsOk;
using ::forq::testing::RunTimer;
using ::forq::testing::StatusIs;
using ::testing::HasSubstr;

class FakeContext : public TaskContext {
 public:
  absl::string_view task_id() const override { return "t"; }
  int attempt() const override { return 1; }
  absl::Time deadline() const override { return deadline_; }
  bool cancelled() const override { return cancelled_; }
  void Progress(double, absl::string_view) override {}
  absl::StatusOr<std::string> Call(absl::string_view) override {
    return absl::UnimplementedError("none");
  }
  absl::Time deadline_ = absl::InfiniteFuture();
  bool cancelled_ = false;
};

ExecOptions Allow() {
  ExecOptions o;
  o.allow = {"/bin/echo",  "/bin/sh",       "/usr/bin/env",
             "/bin/false", "/usr/bin/head", "/bin/grep"};
  return o;
}

absl::StatusOr<std::string> Exec(absl::string_view payload,
                                 const ExecOptions& options = Allow()) {
  FakeContext ctx;
  std::string out;
  absl::Status s = RunExec(options, ctx, payload, &out);
  if (!s.ok()) return s;
  return out;
}

TEST(ExecRunnerTest, RunsAllowListedProgram) {
  EXPECT_EQ(*Exec(R"(["/bin/echo", "hello", "world"])"), "hello world\n");
}

TEST(ExecRunnerTest, RefusesProgramNotOnAllowList) {
  EXPECT_THAT(Exec(R"(["/bin/ls", "/"])"),
              StatusIs(absl::StatusCode::kPermissionDenied,
                       HasSubstr("not allow-listed")));
  // Relative names and path tricks do not match an allow-list entry.
  EXPECT_THAT(Exec(R"(["echo", "x"])"),
              StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_THAT(Exec(R"(["/bin/../bin/echo", "x"])"),
              StatusIs(absl::StatusCode::kPermissionDenied));
}

TEST(ExecRunnerTest, ShellMetacharactersAreNotInterpreted) {
  const std::string marker =
      absl::StrCat(::testing::TempDir(), "/forq-exec-marker-", getpid());
  unlink(marker.c_str());
  const std::string payload =
      absl::StrCat(R"j(["/bin/echo", "a;touch )j", marker, R"j(", "$(touch )j",
                   marker, R"j()", "`touch )j", marker, R"j(`"])j");
  absl::StatusOr<std::string> out = Exec(payload);
  ASSERT_THAT(out, IsOk());
  EXPECT_THAT(*out, HasSubstr("a;touch"));
  EXPECT_THAT(*out, HasSubstr("$(touch"));
  EXPECT_NE(access(marker.c_str(), F_OK), 0) << "a shell ran the payload";
}

TEST(ExecRunnerTest, EnvironmentIsMinimal) {
  EXPECT_EQ(*Exec(R"(["/usr/bin/env"])"), "PATH=/usr/bin:/bin\n");
}

TEST(ExecRunnerTest, OnlyStandardFdsAreOpen) {
  // The listing shell itself is allow-listed; the payload chose to run it.
  // ls runs as a child of sh, so its own directory fd is not in the list.
  EXPECT_EQ(*Exec(R"(["/bin/sh", "-c", "ls /proc/$$/fd"])"), "0\n1\n2\n");
}

TEST(ExecRunnerTest, NoNewPrivsIsSet) {
  EXPECT_THAT(*Exec(R"(["/bin/grep", "NoNewPrivs", "/proc/self/status"])"),
              HasSubstr("1"));
}

TEST(ExecRunnerTest, NonZeroExitIsAnErrorWithCodeAndStderr) {
  EXPECT_THAT(Exec(R"(["/bin/false"])"),
              StatusIs(absl::StatusCode::kUnknown, HasSubstr("code 1")));
  EXPECT_THAT(
      Exec(R"(["/bin/sh", "-c", "echo oops >&2; exit 3"])"),
      StatusIs(absl::StatusCode::kUnknown,
               ::testing::AllOf(HasSubstr("code 3"), HasSubstr("oops"))));
}

// Defect 8: output over the cap used to be cut silently and the task
// SUCCEEDED with a partial result.
TEST(ExecRunnerTest, StdoutOverTheCapFailsTheTaskClearly) {
  ExecOptions o = Allow();
  o.max_output_bytes = 1000;
  EXPECT_THAT(Exec(R"(["/usr/bin/head", "-c", "3000000", "/dev/zero"])", o),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       HasSubstr("more than 1000 bytes")));
  EXPECT_EQ(Exec(R"(["/usr/bin/head", "-c", "1000", "/dev/zero"])", o)->size(),
            1000u);
}

bool Alive(pid_t pid) {
  // Reaped (ESRCH) or at least a zombie no longer running.
  if (kill(pid, 0) != 0) return false;
  std::ifstream in(absl::StrCat("/proc/", pid, "/stat"));
  std::string stat;
  std::getline(in, stat);
  const size_t paren = stat.rfind(')');
  return paren != std::string::npos && stat.size() > paren + 2 &&
         stat[paren + 2] != 'Z';
}

// A backgrounded or setsid'ed grandchild outlived its task. The first two
// let go of stdout, so nothing but the kill of leftovers ends them; the
// third holds stdout, so without that kill the task would last its 40 s.
// The bounds on how long a run took count time in which the test ran
// (RunTimer): a stop of the test and its children does not count.
TEST(ExecRunnerTest, GrandchildrenDoNotOutliveTheTask) {
  RunTimer timer;
  absl::StatusOr<std::string> out = Exec(
      R"(["/bin/sh", "-c", "sleep 313 >/dev/null 2>&1 & echo $!; setsid sh -c 'sleep 314 >/dev/null 2>&1 & echo $!' </dev/null 2>/dev/null; setsid sh -c 'sleep 40 & echo $!' </dev/null 2>/dev/null"])");
  ASSERT_THAT(out, IsOk());
  EXPECT_LT(timer.Elapsed(), absl::Seconds(20));
  std::vector<std::string> pids = absl::StrSplit(*out, '\n', absl::SkipEmpty());
  ASSERT_EQ(pids.size(), 3u) << *out;
  for (const std::string& p : pids) {
    int pid = 0;
    ASSERT_TRUE(absl::SimpleAtoi(p, &pid)) << p;
    EXPECT_FALSE(Alive(pid)) << "pid " << pid << " outlived the task";
  }
}

TEST(ExecRunnerTest, DeadlineKillsTheProgramAndItsChildren) {
  FakeContext ctx;
  ctx.deadline_ = absl::Now() + absl::Milliseconds(500);
  std::string out;
  RunTimer timer;
  EXPECT_THAT(
      RunExec(Allow(), ctx,
              R"(["/bin/sh", "-c", "setsid sleep 60 & sleep 60"])", &out),
      StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_LT(timer.Elapsed(), absl::Seconds(5));
}

TEST(ExecRunnerTest, RunsInAPrivateDirectoryRemovedAfterwards) {
  absl::StatusOr<std::string> out = Exec(R"(["/bin/sh", "-c", "pwd"])");
  ASSERT_THAT(out, IsOk());
  EXPECT_THAT(*out, ::testing::StartsWith("/tmp/forq-exec-"));
  const std::string dir(absl::StripAsciiWhitespace(*out));
  EXPECT_NE(access(dir.c_str(), F_OK), 0) << dir << " left behind";
}

// Defect 7: as root, tasks ran as root with every capability and could
// write forqd's data.
TEST(ExecRunnerTest, AsRootTheProgramRunsUnprivileged) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to switch users";
  absl::StatusOr<std::string> out = Exec(
      R"(["/bin/sh", "-c", "id -u; id -G; grep CapEff /proc/self/status"])");
  ASSERT_THAT(out, IsOk());
  EXPECT_THAT(*out, ::testing::StartsWith("65534\n65534\n"));
  EXPECT_THAT(*out, HasSubstr("CapEff:\t0000000000000000"));
  // A 0700 directory of forqd's user (like its data dir) is out of reach.
  char dir[] = "/tmp/forq-private-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  const std::string file = std::string(dir) + "/forq.db";
  std::ofstream(file) << "secret";
  EXPECT_THAT(Exec(absl::StrCat(R"(["/bin/sh", "-c", "cat )", file, R"("])")),
              StatusIs(absl::StatusCode::kUnknown, HasSubstr("denied")));
  unlink(file.c_str());
  rmdir(dir);
}

TEST(ExecRunnerTest, MalformedPayloadIsInvalidArgument) {
  EXPECT_THAT(Exec("not json"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(Exec("[]"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(Exec(R"(["/bin/echo", 3])"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(Exec(R"({"argv": ["/bin/echo"]})"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(Exec(R"(["/bin/echo", "a\u0000b"])"),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(ExecRunnerTest, MissingProgramIsFailedPrecondition) {
  ExecOptions o;
  o.allow = {"/nonexistent/tool"};
  EXPECT_THAT(Exec(R"(["/nonexistent/tool"])", o),
              StatusIs(absl::StatusCode::kFailedPrecondition));
}

TEST(ExecRunnerTest, CancelKillsTheProgramAndItsChildren) {
  FakeContext ctx;
  ctx.cancelled_ = true;
  std::string out;
  RunTimer timer;
  // sleep is a grandchild that holds stdout open.
  EXPECT_THAT(
      RunExec(Allow(), ctx, R"(["/bin/sh", "-c", "sleep 60; echo x"])", &out),
      StatusIs(absl::StatusCode::kCancelled));
  EXPECT_LT(timer.Elapsed(), absl::Seconds(5));
}

// Runs assignment `a` on a real pool of one worker built from `options`
// and returns its outcome.
absl::StatusOr<Outcome> RunInPool(ForkPoolOptions options,
                                  const Assignment& a) {
  options.workers = 1;
  FORQ_ASSIGN_OR_RETURN(std::unique_ptr<WorkerPool> pool,
                        CreateForkPool(options));
  Notification idle, done;
  Outcome outcome;
  PoolCallbacks cb;
  cb.on_worker_idle = [&] {
    if (!idle.HasBeenNotified()) idle.Notify();
  };
  cb.on_outcome = [&](Outcome o) {
    outcome = std::move(o);
    done.Notify();
  };
  absl::Cleanup shutdown = [&] { pool->Shutdown(); };
  FORQ_RETURN_IF_ERROR(pool->Start(cb));
  if (!AwaitNotification(idle, absl::Seconds(20))) {
    return absl::DeadlineExceededError("no worker became idle");
  }
  FORQ_RETURN_IF_ERROR(pool->Dispatch(a));
  if (!AwaitNotification(done, absl::Seconds(20))) {
    return absl::DeadlineExceededError("no outcome");
  }
  std::move(shutdown).Invoke();
  return outcome;
}

// Through a real pool: exec is registered only with an allow-list.
TEST(ExecRunnerPoolTest, ExecKindRunsInWorkers) {
  ForkPoolOptions options;
  options.exec_allow = {"/bin/echo"};
  Assignment a;
  a.task_id = "e1";
  a.kind = "exec";
  a.payload = R"json(["/bin/echo", "from", "exec;", "$(id)"])json";
  absl::StatusOr<Outcome> outcome = RunInPool(options, a);
  ASSERT_THAT(outcome, IsOk());
  EXPECT_EQ(outcome->kind, OutcomeKind::kSucceeded) << outcome->status;
  EXPECT_EQ(outcome->result, "from exec; $(id)\n");
}

TEST(ExecRunnerPoolTest, ExecKindIsOffWithoutAllowList) {
  Assignment a;
  a.task_id = "e2";
  a.kind = "exec";
  a.payload = R"(["/bin/echo", "x"])";
  absl::StatusOr<Outcome> outcome = RunInPool(ForkPoolOptions(), a);
  ASSERT_THAT(outcome, IsOk());
  EXPECT_EQ(outcome->kind, OutcomeKind::kUnknownKind);
}

}  // namespace
}  // namespace forq::worker
