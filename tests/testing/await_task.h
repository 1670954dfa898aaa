// Waiting for a task's end with a bound counted in time the test ran.
#ifndef FORQ_TESTS_TESTING_AWAIT_TASK_H_
#define FORQ_TESTS_TESTING_AWAIT_TASK_H_

#include <algorithm>
#include <optional>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

#include "forq/client.h"
#include "tests/testing/run_budget.h"

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

}  // namespace forq::testing

#endif  // FORQ_TESTS_TESTING_AWAIT_TASK_H_
