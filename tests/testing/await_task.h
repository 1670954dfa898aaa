// Waiting for tasks with bounds counted in time the test ran.
#ifndef FORQ_TESTS_TESTING_AWAIT_TASK_H_
#define FORQ_TESTS_TESTING_AWAIT_TASK_H_

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

#include "forq/client.h"
#include "tests/testing/run_budget.h"
#include "tests/testing/run_timer.h"

namespace forq::testing {

// f.WaitFor(budget), but the budget counts only time in which the test ran
// (RunBudget): a stop of the test and forqd together does not use it up.
// Any answer but DEADLINE_EXCEEDED ends the wait at once.
inline absl::StatusOr<v1::Task> AwaitEnd(const TaskFuture& f,
                                         absl::Duration budget) {
  RunBudget run(budget);
  absl::StatusOr<v1::Task> t = absl::DeadlineExceededError("no budget");
  while (std::optional<absl::Time> until = run.NextSlice()) {
    t = f.WaitFor(std::max(*until - absl::Now(), absl::Milliseconds(1)));
    if (t.ok() || t.status().code() != absl::StatusCode::kDeadlineExceeded) {
      return t;
    }
  }
  return t;
}

// f.Get(budget), the budget counted as AwaitEnd's: the result, or the
// task's error, or DEADLINE_EXCEEDED when it did not end in time.
inline absl::StatusOr<std::string> AwaitResult(const TaskFuture& f,
                                               absl::Duration budget) {
  absl::StatusOr<v1::Task> t = AwaitEnd(f, budget);
  if (!t.ok()) return t.status();
  return f.Get();  // ended: answers at once
}

// client.Wait(id, timeout) and client.WaitAll(ids, timeout), made again
// while they timed out before `timeout` of time in which the test ran had
// passed (CallForRunTime): forqd and the client time them by the wall
// clock, which a stop of the test and forqd together uses up.
inline absl::StatusOr<v1::WaitTaskResponse> AwaitWait(Client& client,
                                                      const std::string& id,
                                                      absl::Duration timeout) {
  return CallForRunTime(
      timeout, [&](absl::Duration t) { return client.Wait(id, t); },
      [](const absl::StatusOr<v1::WaitTaskResponse>& w) {
        return w.ok() && !w->done();
      });
}
inline absl::StatusOr<std::vector<v1::Task>> AwaitAll(
    Client& client, const std::vector<std::string>& ids,
    absl::Duration timeout) {
  return CallForRunTime(
      timeout, [&](absl::Duration t) { return client.WaitAll(ids, t); },
      [](const absl::StatusOr<std::vector<v1::Task>>& r) {
        return r.status().code() == absl::StatusCode::kDeadlineExceeded;
      });
}

}  // namespace forq::testing

#endif  // FORQ_TESTS_TESTING_AWAIT_TASK_H_
