// The assignments one worker holds, in the order it runs them, and how each
// leaves: answered, revoked before it started, or ended with the worker.
// forqd's bookkeeping of a slot without processes or shared memory, so the
// rules are testable alone.
#ifndef FORQ_WORKER_ASSIGNMENT_QUEUE_H_
#define FORQ_WORKER_ASSIGNMENT_QUEUE_H_

#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace forq::worker {

// Thread-compatible (ForkPool keeps one per slot under its mutex).
class AssignmentQueue {
 public:
  struct Pending {
    std::string task_id;
    std::string kind;
    int attempt = 0;
    uint64_t task_seq = 0;
    absl::Duration timeout = absl::InfiniteDuration();
    bool cancel_requested = false;
  };
  // How a kSkipped answer fits what forqd holds.
  enum class Skip {
    kHead,     // the head was skipped: it left (see OnSkipped's `out`)
    kStale,    // already revoked for certain: nothing to do
    kInvalid,  // nobody revoked it: the worker broke the protocol
  };

  explicit AssignmentQueue(absl::Duration cancel_grace)
      : cancel_grace_(cancel_grace) {}

  bool empty() const { return queue_.empty(); }
  size_t size() const { return queue_.size(); }
  // The running (or about to run) assignment. Requires !empty().
  const Pending& head() const { return queue_.front(); }
  // When the head started, its hard-timeout and cancel-grace deadlines
  // (InfiniteFuture when none or when empty).
  absl::Time head_since() const { return head_since_; }
  absl::Time deadline() const { return deadline_; }
  absl::Time cancel_deadline() const { return cancel_deadline_; }
  uint64_t revoked_upto() const { return revoked_upto_; }

  // Appends `p`; on an empty queue it becomes the head, started at `now`.
  void Push(Pending p, absl::Time now);
  // The worker answered the head: removes and returns it; the next one
  // starts at `now`.
  Pending PopHead(absl::Time now);
  // Marks (task_id, attempt) cancelled. Returns its task_seq, or nullopt if
  // it is not held or was already marked. A cancelled head gets a cancel
  // deadline; `*queued` tells whether it waits behind the head (it should
  // then be revoked rather than run).
  std::optional<uint64_t> RequestCancel(absl::string_view task_id, int attempt,
                                        absl::Time now, bool* queued);

  // Revocation, first step: the task_seq up to which the worker must skip
  // what it has not started (to store in shared memory before reading the
  // worker's started_seq). Raises revoked_upto().
  uint64_t BeginRevoke();
  // Second step, with the worker's started_seq read after the fence:
  // removes and returns, in order, what the worker never started (task_seq
  // above `started`); what it took stays until it answers.
  std::vector<Pending> FinishRevoke(uint64_t started, absl::Time now);
  // Should the queue behind a long head go back (another worker is idle)?
  bool ShouldGiveBack(absl::Time now, absl::Duration after) const {
    return queue_.size() >= 2 && now - head_since_ >= after;
  }
  // A kSkipped answer for `task_seq`; on kHead the head left into `*out`.
  Skip OnSkipped(uint64_t task_seq, absl::Time now, Pending* out);

  // The worker died having taken up to `started`: moves what ended with it
  // to `ended` (at least the head, if any) and what it never started to
  // `unstarted`, and empties the queue.
  void TakeOnExit(uint64_t started, std::vector<Pending>* ended,
                  std::vector<Pending>* unstarted);

 private:
  void StartHead(absl::Time now);

  const absl::Duration cancel_grace_;
  std::deque<Pending> queue_;
  absl::Time head_since_ = absl::InfinitePast();
  absl::Time deadline_ = absl::InfiniteFuture();
  absl::Time cancel_deadline_ = absl::InfiniteFuture();
  uint64_t revoked_upto_ = 0;
};

}  // namespace forq::worker

#endif  // FORQ_WORKER_ASSIGNMENT_QUEUE_H_
