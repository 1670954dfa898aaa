// A data dir that fills up under a real forqd. The file-size limit
// (RLIMIT_FSIZE, inherited by forqd, with SIGXFSZ ignored) stands in for a
// full disk: SQLite's write past it fails with EFBIG as it would with
// ENOSPC. Delayed tasks fill the store with their inserts, so their results
// find no room. The client may hear SUCCEEDED only for a result that is
// durable: such a task stays visibly unfinished while its write is retried,
// /readyz says the store is failing, and after a kill -9 and a restart with
// room every task announced SUCCEEDED is SUCCEEDED with its own result.
#include <signal.h>
#include <sys/resource.h>

#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include "forq/client.h"
#include "forq/v1/task_state.h"
#include "server/http/http_test_client.h"
#include "tests/testing/await_task.h"
#include "tests/testing/forqd_process.h"
#include "tests/testing/status_matchers.h"

namespace forq {
namespace {

using ::forq::server::testing::HttpCall;
using ::forq::testing::AwaitResult;
using ::forq::testing::ForqdProcess;
using ::forq::testing::IsOk;
using ::testing::HasSubstr;

// Big enough for the store's first files and the workers' shared-memory
// rings (2 MiB each, memfds count too), small enough to fill in seconds.
constexpr rlim_t kFileSizeLimit = 8 << 20;
constexpr size_t kPayloadBytes = 256 << 10;

std::string Filler() { return std::string(kPayloadBytes, 'p'); }

// Sets a file-size limit and ignores SIGXFSZ in this process for its
// lifetime, so that a child started meanwhile inherits both.
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) {
    struct sigaction ignore = {};
    ignore.sa_handler = SIG_IGN;
    ok_ = sigaction(SIGXFSZ, &ignore, &old_action_) == 0 &&
          getrlimit(RLIMIT_FSIZE, &old_limit_) == 0;
    rlimit limit = old_limit_;
    limit.rlim_cur = bytes;
    ok_ = ok_ && setrlimit(RLIMIT_FSIZE, &limit) == 0;
  }
  ~FileSizeLimit() {
    setrlimit(RLIMIT_FSIZE, &old_limit_);
    sigaction(SIGXFSZ, &old_action_, nullptr);
  }
  FileSizeLimit(const FileSizeLimit&) = delete;
  FileSizeLimit& operator=(const FileSizeLimit&) = delete;
  bool ok() const { return ok_; }

 private:
  bool ok_ = false;
  struct sigaction old_action_ = {};
  rlimit old_limit_ = {};
};

struct Outcome {
  std::string id;
  std::string payload;
  bool announced = false;  // the client heard SUCCEEDED
};

TEST(DiskFullTest, NoResultIsAnnouncedBeforeItIsDurable) {
  std::unique_ptr<ForqdProcess> forqd;
  {
    FileSizeLimit limit(kFileSizeLimit);
    ASSERT_TRUE(limit.ok());
    auto started = ForqdProcess::Start({.workers = 1});
    ASSERT_THAT(started, IsOk());
    forqd = *std::move(started);
  }
  auto client = Client::Connect(
      {.address = forqd->grpc_address(), .rpc_timeout = absl::Seconds(20)});
  ASSERT_THAT(client, IsOk());

  // First tasks with room: each is written twice (insert, then result).
  std::vector<Outcome> acked;
  for (int i = 0; i < 3; ++i) {
    Outcome o{.payload = absl::StrCat("a", i, ":", Filler())};
    absl::StatusOr<TaskFuture> f = (*client)->Submit("echo", o.payload);
    ASSERT_THAT(f, IsOk());
    o.id = f->id();
    absl::StatusOr<std::string> result = AwaitResult(*f, absl::Seconds(30));
    ASSERT_THAT(result, IsOk());
    EXPECT_EQ(*result, o.payload);
    o.announced = true;
    acked.push_back(std::move(o));
  }
  // Then delayed tasks until the store refuses new ones: their inserts fill
  // the space their results would need.
  int refused = 0;
  for (int i = 0; i < 200 && refused < 3; ++i) {
    v1::TaskSpec spec;
    spec.set_kind("echo");
    spec.set_payload(absl::StrCat("b", i, ":", Filler()));
    spec.mutable_delay()->set_seconds(3);
    absl::StatusOr<TaskFuture> f = (*client)->Submit(spec);
    if (!f.ok()) {
      ++refused;
      continue;
    }
    acked.push_back({.id = f->id(), .payload = spec.payload()});
  }
  // A result that cannot be stored is retried, never announced: the wait
  // ends unfinished, and Get still shows the task unfinished.
  int unannounced = 0;
  absl::Duration wait = absl::Seconds(10);  // past the delay
  for (Outcome& o : acked) {
    if (o.announced) continue;
    absl::StatusOr<v1::WaitTaskResponse> r = (*client)->Wait(o.id, wait);
    wait = absl::Milliseconds(250);
    ASSERT_THAT(r, IsOk());
    if (r->done()) {
      // Its result found room: announced, so it must be durable.
      EXPECT_EQ(r->task().state(), v1::SUCCEEDED)
          << r->task().ShortDebugString();
      EXPECT_EQ(r->task().result(), o.payload);
      o.announced = r->task().state() == v1::SUCCEEDED;
      continue;
    }
    ++unannounced;
    absl::StatusOr<v1::Task> now = (*client)->Get(o.id);
    ASSERT_THAT(now, IsOk());
    EXPECT_FALSE(v1::IsTerminal(now->state())) << now->ShortDebugString();
    EXPECT_TRUE(now->result().empty());
  }
  int announced = 0;
  for (const Outcome& o : acked) announced += o.announced ? 1 : 0;
  auto ready = HttpCall(forqd->http_address(), "GET", "/readyz");
  ASSERT_THAT(ready, IsOk());
  EXPECT_EQ(ready->status, 503) << ready->body;
  EXPECT_THAT(ready->body, HasSubstr("store writes failing"));

  // A crash while full, then a restart with room (this process's limits).
  ASSERT_THAT(forqd->Kill(SIGKILL), IsOk());
  ASSERT_THAT(forqd->Restart(), IsOk()) << forqd->LogTail();
  client = Client::Connect({.address = forqd->grpc_address()});
  ASSERT_THAT(client, IsOk());
  int durable = 0, ran_again = 0;
  for (const Outcome& o : acked) {
    if (!o.announced) {
      // Its result was never stored: it may run again (or be out of
      // attempts), but a result it shows is its own.
      absl::StatusOr<v1::Task> t = (*client)->Get(o.id);
      ASSERT_THAT(t, IsOk()) << o.id;
      if (t->state() == v1::SUCCEEDED) {
        EXPECT_EQ(t->result(), o.payload) << o.id;
        ++ran_again;
      }
      continue;
    }
    absl::StatusOr<v1::Task> t = (*client)->Get(o.id);
    ASSERT_THAT(t, IsOk()) << o.id;
    EXPECT_EQ(t->state(), v1::SUCCEEDED) << t->ShortDebugString();
    EXPECT_EQ(t->result(), o.payload) << o.id;
    durable += t->state() == v1::SUCCEEDED && t->result() == o.payload;
  }
  std::cout << "disk full: acknowledged " << acked.size() << ", announced "
            << announced << " (SUCCEEDED after the restart: " << durable
            << "), unannounced " << unannounced << " (" << ran_again
            << " SUCCEEDED after the restart), refused " << refused
            << std::endl;
  // The run reached each phase.
  EXPECT_GT(announced, 0);
  EXPECT_GT(unannounced, 0);
  EXPECT_GT(refused, 0);
  EXPECT_EQ(durable, announced);
}

}  // namespace
}  // namespace forq
