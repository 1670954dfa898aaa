#include "worker/assignment_queue.h"

#include <algorithm>
#include <utility>

namespace forq::worker {

void AssignmentQueue::StartHead(absl::Time now) {
  head_since_ = now;
  deadline_ = absl::InfiniteFuture();
  cancel_deadline_ = absl::InfiniteFuture();
  if (queue_.empty()) return;
  const Pending& head = queue_.front();
  if (head.timeout != absl::InfiniteDuration()) deadline_ = now + head.timeout;
  if (head.cancel_requested) cancel_deadline_ = now + cancel_grace_;
}

void AssignmentQueue::Push(Pending p, absl::Time now) {
  queue_.push_back(std::move(p));
  if (queue_.size() == 1) StartHead(now);
}

AssignmentQueue::Pending AssignmentQueue::PopHead(absl::Time now) {
  Pending head = std::move(queue_.front());
  queue_.pop_front();
  StartHead(now);
  return head;
}

std::optional<uint64_t> AssignmentQueue::RequestCancel(
    absl::string_view task_id, int attempt, absl::Time now, bool* queued) {
  for (size_t i = 0; i < queue_.size(); ++i) {
    Pending& p = queue_[i];
    if (p.task_id != task_id || p.attempt != attempt) continue;
    if (p.cancel_requested) return std::nullopt;
    p.cancel_requested = true;
    *queued = i > 0;
    if (i == 0) cancel_deadline_ = now + cancel_grace_;
    return p.task_seq;
  }
  return std::nullopt;
}

uint64_t AssignmentQueue::BeginRevoke() {
  if (!queue_.empty()) {
    revoked_upto_ = std::max(revoked_upto_, queue_.back().task_seq);
  }
  return revoked_upto_;
}

std::vector<AssignmentQueue::Pending> AssignmentQueue::FinishRevoke(
    uint64_t started, absl::Time now) {
  std::vector<Pending> revoked;
  std::deque<Pending> kept;
  for (Pending& p : queue_) {
    if (p.task_seq <= started) {
      kept.push_back(std::move(p));
    } else {
      revoked.push_back(std::move(p));
    }
  }
  const bool head_left =
      !queue_.empty() &&
      (kept.empty() || kept.front().task_seq != queue_.front().task_seq);
  queue_ = std::move(kept);
  if (head_left) StartHead(now);
  return revoked;
}

AssignmentQueue::Skip AssignmentQueue::OnSkipped(uint64_t task_seq,
                                                 absl::Time now, Pending* out) {
  if (task_seq > revoked_upto_) return Skip::kInvalid;
  if (queue_.empty() || queue_.front().task_seq != task_seq) {
    return Skip::kStale;
  }
  *out = PopHead(now);
  return Skip::kHead;
}

void AssignmentQueue::TakeOnExit(uint64_t started, std::vector<Pending>* ended,
                                 std::vector<Pending>* unstarted) {
  for (size_t i = 0; i < queue_.size(); ++i) {
    // The head counts as taken even if started_seq says otherwise: the
    // worker may have died between taking it and storing the word.
    if (i > 0 && queue_[i].task_seq > started) {
      unstarted->push_back(std::move(queue_[i]));
    } else {
      ended->push_back(std::move(queue_[i]));
    }
  }
  queue_.clear();
  StartHead(absl::InfinitePast());
}

}  // namespace forq::worker
