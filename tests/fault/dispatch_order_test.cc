// Regression test: a task that finishes within microseconds of its dispatch
// must be stored as finished. The scheduler once wrote the RUNNING row from
// its dispatch thread after the worker's completion had already been written
// from the pool thread, so the store kept RUNNING for a finished task: Get
// and Wait saw it RUNNING forever, and the next start re-ran it as a lost
// attempt (found by the graceful restart fault test).
#include <sys/wait.h>

#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include "forq/client.h"
#include "tests/fault/fault_util.h"
#include "tests/testing/forqd_process.h"
#include "tests/testing/status_matchers.h"

namespace forq {
namespace {

using ::forq::testing::FaultLoops;
using ::forq::testing::ForqdOptions;
using ::forq::testing::ForqdProcess;
using ::forq::testing::IsOk;

TEST(DispatchOrderTest, FastTasksAreNeverLeftRunningInTheStore) {
  // Echo tasks finish in microseconds; a few thousand make the race likely.
  const int tasks = 1000 * FaultLoops(4);
  ForqdOptions options;
  options.workers = 2;
  absl::StatusOr<std::unique_ptr<ForqdProcess>> started =
      ForqdProcess::Start(options);
  ASSERT_THAT(started, IsOk());
  std::unique_ptr<ForqdProcess> forqd = std::move(*started);
  absl::StatusOr<std::unique_ptr<Client>> connected =
      Client::Connect({.address = forqd->grpc_address()});
  ASSERT_THAT(connected, IsOk());
  std::unique_ptr<Client> client = std::move(*connected);

  std::vector<std::string> ids;
  for (int b = 0; b < tasks / 100; ++b) {
    std::vector<v1::TaskSpec> specs(100);
    for (int i = 0; i < 100; ++i) {
      specs[i].set_kind("echo");
      specs[i].set_payload(absl::StrCat(b * 100 + i));
    }
    absl::StatusOr<std::vector<TaskFuture>> r = client->SubmitBatch(specs);
    ASSERT_THAT(r, IsOk());
    for (const TaskFuture& f : *r) ids.push_back(f.id());
  }
  // Runs after every other task was dispatched (lowest priority).
  v1::TaskSpec last;
  last.set_kind("echo");
  last.set_priority(-1000);
  absl::StatusOr<TaskFuture> sentinel = client->Submit(last);
  ASSERT_THAT(sentinel, IsOk());
  absl::StatusOr<v1::WaitTaskResponse> w =
      client->Wait(sentinel->id(), absl::Seconds(120));
  ASSERT_THAT(w, IsOk());
  ASSERT_TRUE(w->done()) << forqd->LogTail();

  // Every task was dispatched before the sentinel; the last ones may still
  // be finishing, hence a short wait each (a stuck one costs its second).
  std::vector<std::string> stuck;
  for (const std::string& id : ids) {
    absl::StatusOr<v1::WaitTaskResponse> r = client->Wait(id, absl::Seconds(1));
    ASSERT_THAT(r, IsOk());
    if (!r->done() || r->task().state() != v1::SUCCEEDED) {
      stuck.push_back(absl::StrCat(id, " ", StateName(r->task().state()),
                                   " attempt ", r->task().attempt()));
    }
    if (stuck.size() >= 5) break;
  }
  EXPECT_THAT(stuck, ::testing::IsEmpty());

  // After a clean restart nothing runs again: no row was left RUNNING.
  absl::StatusOr<int> stopped = forqd->Stop();
  ASSERT_THAT(stopped, IsOk());
  ASSERT_TRUE(WIFEXITED(*stopped) && WEXITSTATUS(*stopped) == 0);
  ASSERT_THAT(forqd->Restart(), IsOk());
  connected = Client::Connect({.address = forqd->grpc_address()});
  ASSERT_THAT(connected, IsOk());
  client = std::move(*connected);
  int rerun = 0;
  for (const std::string& id : ids) {
    absl::StatusOr<v1::Task> t = client->Get(id);
    ASSERT_THAT(t, IsOk());
    if (t->state() != v1::SUCCEEDED || t->attempt() != 1) ++rerun;
  }
  std::cout << "tasks " << ids.size() << ", left RUNNING in the store "
            << stuck.size() << ", not SUCCEEDED on attempt 1 after restart "
            << rerun << std::endl;
  EXPECT_EQ(rerun, 0);
  if (HasFailure()) ADD_FAILURE() << "forqd log tail:\n" << forqd->LogTail();
}

}  // namespace
}  // namespace forq
