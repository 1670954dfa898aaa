#include <algorithm>
#include <deque>
#include <memory>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"

#include "common/mutex.h"
#include "server/auth/request_checks.h"
#include "server/rpc/status_util.h"
#include "server/rpc/stream_reactors.h"
#include "server/scheduler/task_proto.h"

namespace forq::server {
namespace {

// Watch: streams task events; a task watch ends after its terminal state.
class WatchReactor final : public grpc::ServerWriteReactor<v1::TaskEvent> {
 public:
  // Events carry whole tasks (payload and result included), so the count
  // alone would let one unread watcher hold gigabytes.
  static constexpr size_t kMaxBacklogBytes = 4 << 20;

  WatchReactor(Scheduler& scheduler, const v1::WatchRequest* req, Meter meter)
      : scheduler_(scheduler),
        max_backlog_(scheduler.options().max_watch_backlog),
        meter_(meter),
        guard_(std::make_shared<ReactorGuard<WatchReactor>>()),
        task_id_(req->task_id()) {
    if (req->task_id().empty() == req->queue().empty()) {
      meter_.Done(grpc::StatusCode::INVALID_ARGUMENT);
      Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "set exactly one of task_id or queue (\"*\" = all)"));
      return;
    }
    if (absl::Status bad = CheckRequestFields(*req); !bad.ok()) {
      meter_.Done(grpc::StatusCode::INVALID_ARGUMENT);
      Finish(ToGrpcStatus(bad));
      return;
    }
    {
      MutexLock lock(&guard_->mu);
      guard_->reactor = this;
    }
    handle_ = scheduler_.Subscribe(req->task_id(), req->queue(),
                                   [guard = guard_](const v1::TaskEvent& e) {
                                     MutexLock lock(&guard->mu);
                                     if (guard->reactor != nullptr) {
                                       guard->reactor->PushLocked(e);
                                     }
                                   });
    if (!task_id_.empty()) {
      // Start with the task's current state (and end at once if terminal).
      absl::StatusOr<v1::Task> t = scheduler_.Get(task_id_);
      MutexLock lock(&guard_->mu);
      if (!t.ok()) {
        FinishLocked(ToGrpcStatus(t.status()));
        return;
      }
      v1::TaskEvent first;
      first.set_type(v1::TaskEvent::STATE);
      *first.mutable_task() = std::move(*t);
      *first.mutable_time() = ToProto(absl::Now());
      backlog_bytes_ += first.ByteSizeLong();
      backlog_.push_front(std::move(first));
      MaybeWriteLocked();
    }
  }

  void OnWriteDone(bool ok) override {
    MutexLock lock(&guard_->mu);
    writing_ = false;
    if (!ok) {
      FinishLocked(grpc::Status(grpc::StatusCode::UNAVAILABLE, "write failed"));
      return;
    }
    if (last_written_terminal_) {
      FinishLocked(grpc::Status::OK);
      return;
    }
    MaybeWriteLocked();
  }

  void OnCancel() override {
    MutexLock lock(&guard_->mu);
    FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "watch cancelled"));
  }

  // gRPC callback reactors own themselves: deleted when gRPC is done.
  void OnDone() override {
    guard_->Detach();
    if (handle_ != 0) scheduler_.Unsubscribe(handle_);
    delete this;
  }

 private:
  // Called with guard_->mu held, through the guard (which the analysis
  // cannot tie to guard_).
  void PushLocked(const v1::TaskEvent& e) {
    guard_->mu.AssertHeld();
    if (finished_) return;
    const size_t bytes = e.ByteSizeLong();
    if (backlog_.size() >= max_backlog_ ||
        backlog_bytes_ + bytes > kMaxBacklogBytes) {
      FinishLocked(grpc::Status(
          grpc::StatusCode::RESOURCE_EXHAUSTED,
          absl::StrCat("watcher too slow: event backlog full (",
                       backlog_.size(), " events, ", backlog_bytes_,
                       " bytes; limits ", max_backlog_, " events, ",
                       kMaxBacklogBytes, " bytes)")));
      return;
    }
    backlog_bytes_ += bytes;
    backlog_.push_back(e);
    MaybeWriteLocked();
  }

  void MaybeWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(guard_->mu) {
    if (writing_ || finished_ || backlog_.empty()) return;
    current_ = std::move(backlog_.front());
    backlog_.pop_front();
    backlog_bytes_ -= std::min(backlog_bytes_, current_.ByteSizeLong());
    last_written_terminal_ = !task_id_.empty() &&
                             current_.type() == v1::TaskEvent::STATE &&
                             IsTerminal(current_.task().state());
    writing_ = true;
    StartWrite(&current_);
  }

  void FinishLocked(grpc::Status status)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(guard_->mu) {
    if (finished_) return;
    finished_ = true;
    meter_.Done(status.error_code());
    Finish(std::move(status));
  }

  Scheduler& scheduler_;
  // SchedulerOptions::max_watch_backlog: events buffered before the
  // watcher is dropped as too slow.
  const size_t max_backlog_;
  const Meter meter_;
  std::shared_ptr<ReactorGuard<WatchReactor>> guard_;
  const std::string task_id_;
  // Set by the constructor, read by OnDone.
  uint64_t handle_ = 0;
  std::deque<v1::TaskEvent> backlog_ ABSL_GUARDED_BY(guard_->mu);
  size_t backlog_bytes_ ABSL_GUARDED_BY(guard_->mu) = 0;
  v1::TaskEvent current_ ABSL_GUARDED_BY(guard_->mu);
  bool writing_ ABSL_GUARDED_BY(guard_->mu) = false;
  bool finished_ ABSL_GUARDED_BY(guard_->mu) = false;
  bool last_written_terminal_ ABSL_GUARDED_BY(guard_->mu) = false;
};

}  // namespace

grpc::ServerWriteReactor<v1::TaskEvent>* NewWatchReactor(
    Scheduler& scheduler, const v1::WatchRequest* req, Meter meter) {
  return new WatchReactor(scheduler, req, meter);
}

}  // namespace forq::server
