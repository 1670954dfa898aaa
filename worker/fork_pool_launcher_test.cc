// ForkPool's logic (dispatch, results, worker exits, respawn commands and
// their back-off, timeouts) driven through a fake SupervisorLauncher: no
// process is forked. The fake plays the supervisor over the pool's real
// command and event pipes, and each worker over the slot's real shared
// memory rings, so everything but fork() is the production path.
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

#include "common/scoped_fd.h"
#include "worker/channel.h"
#include "worker/fork_pool.h"
#include "worker/launcher.h"
#include "worker/pool_recorder_testing.h"
#include "worker/protocol.h"
#include "worker/shm_region.h"

namespace forq::worker {
namespace {

constexpr absl::Duration kWait = absl::Seconds(10);
// Fake pids, far above any real one (pid_max is at most 2^22), so the pool's
// /proc reads for them find nothing.
constexpr pid_t kPid1 = 40'000'001;
constexpr pid_t kPid2 = 40'000'002;

// Waits up to `timeout` for `fd` to become readable.
bool Readable(int fd, absl::Duration timeout) {
  pollfd p{fd, POLLIN, 0};
  return poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(timeout))) > 0;
}

// One slot as a worker sees it: the region mapped a second time and the
// worker's ends of the rings.
struct FakeSlot {
  ShmRegion region;
  SlotView view{};
  ScopedFd submission_wake;
  ScopedFd completion_wake;
  ScopedFd spill_sock;
  std::unique_ptr<Channel> channel;
};

// Plays the supervisor and the workers. Start keeps dups of the pool's fds;
// the test thread then writes events and frames and reads commands.
class FakeLauncher : public SupervisorLauncher {
 public:
  absl::StatusOr<pid_t> Start(const SupervisorConfig& config) override {
    config_ = config.worker;
    commands_.reset(dup(config.command_fd));
    events_.reset(dup(config.event_fd));
    for (const SupervisorSlot& s : config.slots) {
      auto slot = std::make_unique<FakeSlot>();
      auto region = ShmRegion::Map(s.shm_fd, config_.shm_bytes);
      if (!region.ok()) return region.status();
      slot->region = std::move(*region);
      slot->view = ViewSlot(slot->region.data(), config_.ring_bytes);
      slot->submission_wake.reset(dup(s.submission_wake_fd));
      slot->completion_wake.reset(dup(s.completion_wake_fd));
      slot->spill_sock.reset(dup(s.spill_sock));
      slots_.push_back(std::move(slot));
    }
    return 0;  // no supervisor process
  }
  void Stop(pid_t pid) override { stopped_with_ = pid; }

  // The supervisor reports a worker `pid` started in `slot`; the worker's
  // link starts fresh, as a new process's would.
  void Spawned(int slot, pid_t pid) {
    FakeSlot& s = *slots_[slot];
    s.channel = std::make_unique<Channel>(
        ShmRing(s.view.completion_control, s.view.completion_data,
                config_.ring_bytes),
        ShmRing(s.view.submission_control, s.view.submission_data,
                config_.ring_bytes),
        ChannelFds{s.completion_wake.get(), s.submission_wake.get(),
                   s.spill_sock.get()},
        config_.max_spill_bytes);
    Event(SupervisorEvent::kSpawned, slot, pid, 0);
  }
  void Exited(int slot, pid_t pid, int wait_status) {
    Event(SupervisorEvent::kExited, slot, pid, wait_status);
  }

  // The next command the pool sent, or nullopt after kWait.
  std::optional<SupervisorCommand> NextCommand() {
    if (!Readable(commands_.get(), kWait)) return std::nullopt;
    SupervisorCommand c;
    if (read(commands_.get(), &c, sizeof(c)) != sizeof(c)) return std::nullopt;
    return c;
  }
  bool NoCommandWithin(absl::Duration d) {
    return !Readable(commands_.get(), d);
  }

  // Worker side of `slot`.
  void Send(int slot, MessageType type, const std::string& body) {
    ASSERT_TRUE(
        slots_[slot]->channel->Send(static_cast<uint16_t>(type), body).ok());
  }
  void Ready(int slot, pid_t pid) {
    ReadyMessage r;
    r.pid = pid;
    Send(slot, MessageType::kReady, Encode(r));
  }
  // Waits for the next assignment and takes it (as a worker's Take does).
  std::optional<AssignMessage> TakeAssignment(int slot) {
    FakeSlot& s = *slots_[slot];
    const absl::Time deadline = absl::Now() + kWait;
    while (absl::Now() < deadline) {
      s.channel->ClearWake();
      absl::StatusOr<std::optional<Message>> m = s.channel->Receive();
      if (!m.ok()) return std::nullopt;
      if (m->has_value()) {
        absl::StatusOr<AssignMessage> a = DecodeAssign((*m)->body);
        if (!a.ok()) return std::nullopt;
        s.view.control->started_seq.store(a->task_seq);
        return *a;
      }
      Readable(s.submission_wake.get(), absl::Milliseconds(100));
    }
    return std::nullopt;
  }
  void Result(int slot, uint64_t task_seq, const std::string& result) {
    ResultMessage r;
    r.task_seq = task_seq;
    r.result = result;
    r.runtime_ns = 1000;
    Send(slot, MessageType::kResult, Encode(r));
  }

  std::optional<pid_t> stopped_with() const { return stopped_with_; }

 private:
  void Event(uint32_t type, int slot, pid_t pid, int wait_status) {
    SupervisorEvent e{};
    e.version = kProtocolVersion;
    e.type = type;
    e.slot = slot;
    e.pid = pid;
    e.wait_status = wait_status;
    ASSERT_EQ(write(events_.get(), &e, sizeof(e)),
              static_cast<ssize_t>(sizeof(e)));
  }

  WorkerConfig config_;
  ScopedFd commands_;
  ScopedFd events_;
  std::vector<std::unique_ptr<FakeSlot>> slots_;
  std::optional<pid_t> stopped_with_;
};

Assignment Echo(const std::string& id,
                absl::Duration timeout = absl::InfiniteDuration()) {
  Assignment a;
  a.task_id = id;
  a.kind = "echo";
  a.payload = "payload of " + id;
  a.timeout = timeout;
  return a;
}

class ForkPoolLauncherTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto launcher = std::make_unique<FakeLauncher>();
    fake_ = launcher.get();
    ForkPoolOptions o;
    o.workers = 1;
    o.prefetch = 0;
    o.ring_bytes = 64 << 10;
    auto pool = CreateForkPool(std::move(o), std::move(launcher));
    ASSERT_TRUE(pool.ok()) << pool.status();
    pool_ = std::move(*pool);
    ASSERT_TRUE(pool_->Start(rec_.Callbacks()).ok());
  }

  // The worker `pid` starts in slot 0 and says Ready; the pool calls it idle.
  void StartWorker(pid_t pid, int idle_count) {
    fake_->Spawned(0, pid);
    fake_->Ready(0, pid);
    ASSERT_TRUE(rec_.WaitIdleEvents(idle_count));
    EXPECT_EQ(pool_->IdleCount(), 1);
  }

  FakeLauncher* fake_ = nullptr;
  fork_pool_testing::Recorder rec_;
  std::unique_ptr<WorkerPool> pool_;
};

TEST_F(ForkPoolLauncherTest, AssignExitAndRespawnThroughTheLauncher) {
  EXPECT_EQ(pool_->supervisor_pid(), 0);
  // Nothing is dispatched before a worker is ready.
  EXPECT_EQ(pool_->Dispatch(Echo("t0")).code(),
            absl::StatusCode::kResourceExhausted);
  StartWorker(kPid1, 1);

  // Assign -> result -> outcome.
  ASSERT_TRUE(pool_->Dispatch(Echo("t1")).ok());
  std::optional<AssignMessage> a1 = fake_->TakeAssignment(0);
  ASSERT_TRUE(a1.has_value());
  EXPECT_EQ(a1->task_id, "t1");
  EXPECT_EQ(a1->payload, "payload of t1");
  EXPECT_EQ(pool_->Workers()[0].current_task_id, "t1");
  EXPECT_EQ(pool_->Workers()[0].state, WorkerState::kBusy);
  fake_->Result(0, a1->task_seq, "done t1");
  std::optional<Outcome> o1 = rec_.NextOutcome();
  ASSERT_TRUE(o1.has_value());
  EXPECT_EQ(o1->task_id, "t1");
  EXPECT_EQ(o1->kind, OutcomeKind::kSucceeded);
  EXPECT_EQ(o1->result, "done t1");
  EXPECT_EQ(o1->worker_pid, kPid1);
  ASSERT_TRUE(rec_.WaitIdleEvents(2));

  // The worker dies (SIGSEGV) under its second task: the task is reported
  // signaled, the exit "crash", and the pool asks for a respawn at once
  // (the worker had been ready, so no back-off).
  ASSERT_TRUE(pool_->Dispatch(Echo("t2")).ok());
  std::optional<AssignMessage> a2 = fake_->TakeAssignment(0);
  ASSERT_TRUE(a2.has_value());
  fake_->Exited(0, kPid1, SIGSEGV);
  std::optional<Outcome> o2 = rec_.NextOutcome();
  ASSERT_TRUE(o2.has_value());
  EXPECT_EQ(o2->task_id, "t2");
  EXPECT_EQ(o2->kind, OutcomeKind::kSignaled);
  EXPECT_EQ(o2->signal, SIGSEGV);
  EXPECT_EQ(o2->worker_pid, kPid1);
  std::optional<WorkerExit> x = rec_.NthExit(1);
  ASSERT_TRUE(x.has_value());
  EXPECT_EQ(x->pid, kPid1);
  EXPECT_EQ(x->reason, "crash");
  std::optional<SupervisorCommand> respawn = fake_->NextCommand();
  ASSERT_TRUE(respawn.has_value());
  EXPECT_EQ(respawn->type, SupervisorCommand::kRespawn);
  EXPECT_EQ(respawn->slot, 0);
  EXPECT_EQ(respawn->delay_ms, 0u);
  EXPECT_EQ(pool_->Workers()[0].state, WorkerState::kRespawning);
  EXPECT_EQ(pool_->Dispatch(Echo("t3")).code(),
            absl::StatusCode::kResourceExhausted);

  // Its successor gets the next task over the reset rings.
  StartWorker(kPid2, 3);
  ASSERT_TRUE(pool_->Dispatch(Echo("t3")).ok());
  std::optional<AssignMessage> a3 = fake_->TakeAssignment(0);
  ASSERT_TRUE(a3.has_value());
  EXPECT_EQ(a3->task_id, "t3");
  EXPECT_GT(a3->task_seq, a2->task_seq);
  fake_->Result(0, a3->task_seq, "done t3");
  std::optional<Outcome> o3 = rec_.NextOutcome();
  ASSERT_TRUE(o3.has_value());
  EXPECT_EQ(o3->kind, OutcomeKind::kSucceeded);
  EXPECT_EQ(o3->worker_pid, kPid2);
  std::vector<WorkerInfo> w = pool_->Workers();
  EXPECT_EQ(w[0].pid, kPid2);
  EXPECT_EQ(w[0].restarts, 1u);
  EXPECT_EQ(w[0].tasks_done, 2u);

  pool_->Shutdown();
  EXPECT_EQ(fake_->stopped_with(), 0);
}

TEST_F(ForkPoolLauncherTest, AWorkerThatNeverGetsReadyIsRespawnedWithBackOff) {
  fake_->Spawned(0, kPid1);
  fake_->Exited(0, kPid1, 70 << 8);  // exit status 70, before any Ready
  std::optional<WorkerExit> x = rec_.NthExit(1);
  ASSERT_TRUE(x.has_value());
  EXPECT_EQ(x->reason, "exit");
  std::optional<SupervisorCommand> c1 = fake_->NextCommand();
  ASSERT_TRUE(c1.has_value());
  EXPECT_EQ(c1->type, SupervisorCommand::kRespawn);
  EXPECT_EQ(c1->delay_ms, 50u);

  fake_->Spawned(0, kPid2);
  fake_->Exited(0, kPid2, 70 << 8);
  std::optional<SupervisorCommand> c2 = fake_->NextCommand();
  ASSERT_TRUE(c2.has_value());
  EXPECT_EQ(c2->delay_ms, 100u);

  // Once one gets ready, the next early death starts from no delay again.
  StartWorker(kPid1 + 2, 1);
  fake_->Exited(0, kPid1 + 2, SIGKILL);
  std::optional<SupervisorCommand> c3 = fake_->NextCommand();
  ASSERT_TRUE(c3.has_value());
  EXPECT_EQ(c3->delay_ms, 0u);
}

TEST_F(ForkPoolLauncherTest, AnAttemptPastItsTimeoutIsKilledThenReported) {
  StartWorker(kPid1, 1);
  ASSERT_TRUE(pool_->Dispatch(Echo("slow", absl::Milliseconds(50))).ok());
  std::optional<AssignMessage> a = fake_->TakeAssignment(0);
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(a->timeout_ns, absl::ToInt64Nanoseconds(absl::Milliseconds(50)));
  // The worker does not answer: the pool asks the supervisor to kill it.
  std::optional<SupervisorCommand> kill = fake_->NextCommand();
  ASSERT_TRUE(kill.has_value());
  EXPECT_EQ(kill->type, SupervisorCommand::kKill);
  EXPECT_EQ(kill->pid, kPid1);
  EXPECT_EQ(kill->signal, SIGKILL);
  EXPECT_TRUE(fake_->NoCommandWithin(absl::Milliseconds(200)));  // once only
  fake_->Exited(0, kPid1, SIGKILL);
  std::optional<Outcome> o = rec_.NextOutcome();
  ASSERT_TRUE(o.has_value());
  EXPECT_EQ(o->task_id, "slow");
  EXPECT_EQ(o->kind, OutcomeKind::kTimeout);
  EXPECT_EQ(o->status.code(), absl::StatusCode::kDeadlineExceeded);
  std::optional<WorkerExit> x = rec_.NthExit(1);
  ASSERT_TRUE(x.has_value());
  EXPECT_EQ(x->reason, "timeout");
  std::optional<SupervisorCommand> respawn = fake_->NextCommand();
  ASSERT_TRUE(respawn.has_value());
  EXPECT_EQ(respawn->type, SupervisorCommand::kRespawn);
}

}  // namespace
}  // namespace forq::worker
