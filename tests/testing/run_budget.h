// A bound on how long a test waits for forqd to act, counted in time in
// which the test could run.
#ifndef FORQ_TESTS_TESTING_RUN_BUDGET_H_
#define FORQ_TESTS_TESTING_RUN_BUDGET_H_

#include <algorithm>
#include <optional>

#include "absl/time/clock.h"
#include "absl/time/time.h"

#include "common/notification.h"

namespace forq::testing {

// A wall-clock deadline also runs while the machine holds the test's
// processes (forqd among them) stopped: SIGSTOP of every test process, a
// suspended VM. After such a pause the deadline has passed although forqd
// never had the time to act, and the test fails. A RunBudget is spent in
// short slices instead, each waited for with its own deadline; a slice that
// took much longer than asked (the test was not running) counts only twice
// its length. So a stop of any length costs the budget little, and a
// budget of N seconds still ends, after about N seconds of waiting, a wait
// for something that never happens.
//
// Usage:
//   RunBudget budget(absl::Seconds(10));
//   while (!done()) {
//     std::optional<absl::Time> until = budget.NextSlice();
//     if (!until) break;  // spent
//     WaitForDoneUntil(*until);
//   }
//
// Thread-compatible.
class RunBudget {
 public:
  static constexpr absl::Duration kSlice = absl::Milliseconds(100);

  explicit RunBudget(absl::Duration budget) : left_(budget) {}
  RunBudget(const RunBudget&) = delete;
  RunBudget& operator=(const RunBudget&) = delete;

  // Charges the slice that just ended, then returns the deadline of the
  // next one, or nullopt once the budget is spent.
  std::optional<absl::Time> NextSlice() {
    const absl::Time now = absl::Now();
    if (slice_start_ != absl::InfinitePast()) {
      left_ -= std::min(now - slice_start_, 2 * kSlice);
    }
    if (left_ <= absl::ZeroDuration()) return std::nullopt;
    slice_start_ = now;
    return now + std::min(kSlice, left_);
  }

  // What is left of the budget, the current slice not charged yet.
  absl::Duration left() const { return left_; }

 private:
  absl::Duration left_;
  absl::Time slice_start_ = absl::InfinitePast();
};

// Whether `n` is notified within `budget` of time in which the test ran.
inline bool AwaitNotification(const Notification& n, absl::Duration budget) {
  RunBudget run(budget);
  while (!n.HasBeenNotified()) {
    std::optional<absl::Time> until = run.NextSlice();
    if (!until) return false;
    n.WaitForNotificationWithTimeout(*until - absl::Now());
  }
  return true;
}

}  // namespace forq::testing

#endif  // FORQ_TESTS_TESTING_RUN_BUDGET_H_
