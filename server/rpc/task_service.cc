#include "server/rpc/task_service.h"

#include <deque>
#include <map>
#include <memory>

#include "absl/strings/str_cat.h"

#include "common/mutex.h"
#include "server/rpc/status_util.h"
#include "server/scheduler/task_proto.h"

namespace forq::server {
namespace {

// Time left before the client's deadline (capped to a day).
absl::Duration TimeLeft(grpc::CallbackServerContext* ctx) {
  absl::Time deadline = absl::FromChrono(ctx->deadline());
  return std::min(deadline - absl::Now(), absl::Hours(24));
}

// Shared between a reactor and the callbacks it hands to the scheduler: the
// callbacks may fire after the reactor is gone, so they reach it only through
// this guard, whose pointer OnDone clears under the same mutex.
template <typename R>
struct ReactorGuard {
  Mutex mu;
  R* reactor ABSL_GUARDED_BY(mu) = nullptr;

  // Called from OnDone: later callbacks find no reactor and do nothing.
  void Detach() {
    MutexLock lock(&mu);
    reactor = nullptr;
  }
};

// A scheduler callback that finishes a unary call with a task or an error.
std::function<void(absl::StatusOr<v1::Task>)> FinishWithTask(
    grpc::ServerUnaryReactor* reactor, v1::Task* resp) {
  return [reactor, resp](absl::StatusOr<v1::Task> t) {
    if (!t.ok()) {
      reactor->Finish(ToGrpcStatus(t.status()));
      return;
    }
    *resp = std::move(*t);
    reactor->Finish(grpc::Status::OK);
  };
}

// Wait: long poll that parks in the scheduler, no thread held.
class WaitReactor final : public grpc::ServerUnaryReactor {
 public:
  WaitReactor(Scheduler& scheduler, grpc::CallbackServerContext* ctx,
              const v1::WaitTaskRequest* req, v1::WaitTaskResponse* resp)
      : scheduler_(scheduler),
        resp_(resp),
        guard_(std::make_shared<ReactorGuard<WaitReactor>>()) {
    {
      MutexLock lock(&guard_->mu);
      guard_->reactor = this;
    }
    absl::Duration timeout = TimeLeft(ctx);
    if (req->has_timeout())
      timeout = std::min(timeout, FromProto(req->timeout()));
    uint64_t handle = scheduler_.Wait(
        req->id(), timeout,
        [guard = guard_](absl::StatusOr<v1::Task> task, bool terminal) {
          MutexLock lock(&guard->mu);
          if (guard->reactor != nullptr) {
            guard->reactor->CompleteLocked(std::move(task), terminal);
          }
        });
    MutexLock lock(&guard_->mu);
    handle_ = handle;
  }

  void OnCancel() override {
    MutexLock lock(&guard_->mu);
    if (finished_) return;
    if (handle_ != 0 && scheduler_.CancelWait(handle_)) {
      finished_ = true;
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "wait cancelled"));
    }
  }

  // gRPC callback reactors own themselves: deleted when gRPC is done.
  void OnDone() override {
    guard_->Detach();
    delete this;
  }

 private:
  void CompleteLocked(absl::StatusOr<v1::Task> task, bool terminal) {
    if (finished_) return;
    finished_ = true;
    if (!task.ok()) {
      Finish(ToGrpcStatus(task.status()));
      return;
    }
    *resp_->mutable_task() = std::move(*task);
    resp_->set_done(terminal);
    Finish(grpc::Status::OK);
  }

  Scheduler& scheduler_;
  v1::WaitTaskResponse* resp_;
  std::shared_ptr<ReactorGuard<WaitReactor>> guard_;
  uint64_t handle_ = 0;
  bool finished_ = false;
};

// Watch: streams task events; a task watch ends after its terminal state.
class WatchReactor final : public grpc::ServerWriteReactor<v1::TaskEvent> {
 public:
  static constexpr size_t kMaxBacklog = 10'000;

  WatchReactor(Scheduler& scheduler, const v1::WatchRequest* req)
      : scheduler_(scheduler),
        guard_(std::make_shared<ReactorGuard<WatchReactor>>()),
        task_id_(req->task_id()) {
    if (req->task_id().empty() == req->queue().empty()) {
      Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "set exactly one of task_id or queue (\"*\" = all)"));
      return;
    }
    {
      MutexLock lock(&guard_->mu);
      guard_->reactor = this;
    }
    handle_ = scheduler_.Subscribe(req->task_id(), req->queue(),
                                   [guard = guard_](const v1::TaskEvent& e) {
                                     MutexLock lock(&guard->mu);
                                     if (guard->reactor != nullptr)
                                       guard->reactor->PushLocked(e);
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
  void PushLocked(const v1::TaskEvent& e) {
    if (finished_) return;
    if (backlog_.size() >= kMaxBacklog) {
      FinishLocked(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                                "watcher too slow: event backlog full"));
      return;
    }
    backlog_.push_back(e);
    MaybeWriteLocked();
  }

  void MaybeWriteLocked() {
    if (writing_ || finished_ || backlog_.empty()) return;
    current_ = std::move(backlog_.front());
    backlog_.pop_front();
    last_written_terminal_ = !task_id_.empty() &&
                             current_.type() == v1::TaskEvent::STATE &&
                             IsTerminal(current_.task().state());
    writing_ = true;
    StartWrite(&current_);
  }

  void FinishLocked(grpc::Status status) {
    if (finished_) return;
    finished_ = true;
    Finish(std::move(status));
  }

  Scheduler& scheduler_;
  std::shared_ptr<ReactorGuard<WatchReactor>> guard_;
  const std::string task_id_;
  uint64_t handle_ = 0;
  std::deque<v1::TaskEvent> backlog_;
  v1::TaskEvent current_;
  bool writing_ = false;
  bool finished_ = false;
  bool last_written_terminal_ = false;
};

// Map: imap / imap_unordered. Reads inputs while fewer than `window` are in
// flight, submits each as a task, and writes results in input order or as
// they complete. Memory is bounded by the window on both sides.
class MapReactor final
    : public grpc::ServerBidiReactor<v1::MapRequest, v1::MapResult> {
 public:
  static constexpr int kDefaultWindow = 256;
  static constexpr int kMaxWindow = 10'000;

  explicit MapReactor(Scheduler& scheduler)
      : scheduler_(scheduler),
        guard_(std::make_shared<ReactorGuard<MapReactor>>()) {
    MutexLock lock(&guard_->mu);
    guard_->reactor = this;
    MaybeReadLocked();
  }

  void OnReadDone(bool ok) override {
    MutexLock lock(&guard_->mu);
    reading_ = false;
    if (finished_) return;
    if (!ok) {
      reads_done_ = true;
      MaybeFinishLocked();
      return;
    }
    if (req_.has_header()) {
      if (have_header_) {
        FinishLocked(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                  "Map header sent twice"));
        return;
      }
      have_header_ = true;
      header_ = req_.header();
      if (header_.window() < 0 || header_.window() > kMaxWindow) {
        FinishLocked(grpc::Status(
            grpc::StatusCode::INVALID_ARGUMENT,
            absl::StrCat("window must be in [0, ", kMaxWindow, "]")));
        return;
      }
      window_ = header_.window() == 0 ? kDefaultWindow : header_.window();
      MaybeReadLocked();
      return;
    }
    if (!have_header_) {
      FinishLocked(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                "the first Map message must be a header"));
      return;
    }
    SubmitLocked(next_index_++, req_.input());
    MaybeReadLocked();
  }

  void OnWriteDone(bool ok) override {
    MutexLock lock(&guard_->mu);
    writing_ = false;
    if (!ok) {
      FinishLocked(grpc::Status(grpc::StatusCode::UNAVAILABLE, "write failed"));
      return;
    }
    --in_flight_;
    if (fail_now_) {
      FinishLocked(fail_status_);
      return;
    }
    MaybeWriteLocked();
    MaybeReadLocked();
    MaybeFinishLocked();
  }

  void OnCancel() override {
    MutexLock lock(&guard_->mu);
    FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "map cancelled"));
  }

  // gRPC callback reactors own themselves: deleted when gRPC is done.
  void OnDone() override {
    guard_->Detach();
    delete this;
  }

 private:
  using Guard = std::shared_ptr<ReactorGuard<MapReactor>>;

  void SubmitLocked(uint64_t index, const v1::MapInput& input) {
    ++in_flight_;
    v1::TaskSpec spec;
    spec.set_kind(input.kind().empty() ? header_.kind() : input.kind());
    spec.set_payload(input.payload());
    spec.set_payload_text(input.payload_text());
    spec.set_queue(header_.queue());
    spec.set_priority(header_.priority());
    spec.set_max_attempts(header_.max_attempts());
    *spec.mutable_timeout() = header_.timeout();
    Scheduler& scheduler = scheduler_;
    Guard guard = guard_;
    // The scheduler may answer inline, so it must not be called under our
    // lock: hand the submission to a deferred list run after unlocking.
    pending_submits_.push_back([&scheduler, guard, index, spec]() mutable {
      scheduler.Submit(
          {std::move(spec)}, [&scheduler, guard, index](
                                 absl::StatusOr<std::vector<InsertResult>> r) {
            if (!r.ok()) {
              Deliver(guard, index, r.status(), v1::Task());
              return;
            }
            WaitTerminal(scheduler, guard, index, (*r)[0].task.id());
          });
    });
  }

  static void WaitTerminal(Scheduler& scheduler, Guard guard, uint64_t index,
                           std::string id) {
    scheduler.Wait(id, absl::Minutes(5),
                   [&scheduler, guard, index, id](absl::StatusOr<v1::Task> t,
                                                  bool terminal) {
                     if (!t.ok()) {
                       Deliver(guard, index, t.status(), v1::Task());
                     } else if (terminal) {
                       Deliver(guard, index, absl::OkStatus(), *t);
                     } else {
                       {
                         MutexLock lock(&guard->mu);
                         if (guard->reactor == nullptr) return;
                       }
                       WaitTerminal(scheduler, guard, index, id);
                     }
                   });
  }

  static void Deliver(const Guard& guard, uint64_t index,
                      const absl::Status& status, const v1::Task& task) {
    MutexLock lock(&guard->mu);
    if (guard->reactor == nullptr) return;
    guard->reactor->DeliverLocked(index, status, task);
  }

  void DeliverLocked(uint64_t index, const absl::Status& status,
                     const v1::Task& task) {
    v1::MapResult r;
    r.set_index(index);
    if (!status.ok()) {
      r.set_state(v1::FAILED);
      r.mutable_error()->set_code(static_cast<int>(status.code()));
      r.mutable_error()->set_message(std::string(status.message()));
    } else {
      r.set_task_id(task.id());
      r.set_state(task.state());
      r.set_result(task.result());
      *r.mutable_error() = task.error();
      r.set_attempt(task.attempt());
    }
    if (header_.ordered()) {
      ordered_.emplace(index, std::move(r));
    } else {
      unordered_.push_back(std::move(r));
    }
    MaybeWriteLocked();
  }

  void MaybeWriteLocked() {
    if (writing_ || finished_ || fail_now_) return;
    if (header_.ordered()) {
      auto it = ordered_.find(next_to_send_);
      if (it == ordered_.end()) return;
      out_ = std::move(it->second);
      ordered_.erase(it);
      ++next_to_send_;
    } else {
      if (unordered_.empty()) return;
      out_ = std::move(unordered_.front());
      unordered_.pop_front();
    }
    if (header_.fail_fast() && out_.state() != v1::SUCCEEDED) {
      fail_now_ = true;
      fail_status_ = grpc::Status(grpc::StatusCode::ABORTED,
                                  absl::StrCat("item ", out_.index(), " ended ",
                                               v1::TaskState_Name(out_.state()),
                                               ": ", out_.error().message()));
    }
    writing_ = true;
    StartWrite(&out_);
  }

  void MaybeReadLocked() {
    RunPendingSubmitsLocked();
    if (reading_ || reads_done_ || finished_ || fail_now_) return;
    if (have_header_ && in_flight_ >= window_) return;
    reading_ = true;
    StartRead(&req_);
  }

  // Submissions run with the lock released; the lock is re-taken after.
  void RunPendingSubmitsLocked() ABSL_NO_THREAD_SAFETY_ANALYSIS {
    if (pending_submits_.empty()) return;
    auto submits = std::move(pending_submits_);
    pending_submits_.clear();
    guard_->mu.Unlock();
    for (auto& s : submits) s();
    guard_->mu.Lock();
  }

  void MaybeFinishLocked() {
    if (reads_done_ && in_flight_ == 0 && !writing_) {
      FinishLocked(grpc::Status::OK);
    }
  }

  void FinishLocked(grpc::Status status) {
    if (finished_) return;
    finished_ = true;
    Finish(std::move(status));
  }

  Scheduler& scheduler_;
  Guard guard_;
  v1::MapRequest req_;
  v1::MapHeader header_;
  v1::MapResult out_;
  bool have_header_ = false;
  int window_ = kDefaultWindow;
  uint64_t next_index_ = 0;
  uint64_t next_to_send_ = 0;
  int in_flight_ = 0;
  bool reading_ = false;
  bool writing_ = false;
  bool reads_done_ = false;
  bool finished_ = false;
  bool fail_now_ = false;
  grpc::Status fail_status_;
  std::map<uint64_t, v1::MapResult> ordered_;
  std::deque<v1::MapResult> unordered_;
  std::vector<std::function<void()>> pending_submits_;
};

}  // namespace

grpc::ServerUnaryReactor* TaskServiceImpl::Submit(
    grpc::CallbackServerContext* ctx, const v1::SubmitRequest* req,
    v1::SubmitResponse* resp) {
  auto* reactor = ctx->DefaultReactor();
  scheduler_.Submit(
      {req->task()},
      [reactor, resp](absl::StatusOr<std::vector<InsertResult>> r) {
        if (!r.ok()) {
          reactor->Finish(ToGrpcStatus(r.status()));
          return;
        }
        *resp->mutable_task() = std::move((*r)[0].task);
        resp->set_existing((*r)[0].existing);
        reactor->Finish(grpc::Status::OK);
      });
  return reactor;
}

grpc::ServerUnaryReactor* TaskServiceImpl::SubmitBatch(
    grpc::CallbackServerContext* ctx, const v1::SubmitBatchRequest* req,
    v1::SubmitBatchResponse* resp) {
  auto* reactor = ctx->DefaultReactor();
  std::vector<v1::TaskSpec> specs(req->tasks().begin(), req->tasks().end());
  scheduler_.Submit(
      std::move(specs),
      [reactor, resp](absl::StatusOr<std::vector<InsertResult>> r) {
        if (!r.ok()) {
          reactor->Finish(ToGrpcStatus(r.status()));
          return;
        }
        for (InsertResult& ir : *r) {
          *resp->add_tasks() = std::move(ir.task);
          resp->add_existing(ir.existing);
        }
        reactor->Finish(grpc::Status::OK);
      });
  return reactor;
}

grpc::ServerUnaryReactor* TaskServiceImpl::Get(grpc::CallbackServerContext* ctx,
                                               const v1::GetTaskRequest* req,
                                               v1::Task* resp) {
  auto* reactor = ctx->DefaultReactor();
  absl::StatusOr<v1::Task> t = scheduler_.Get(req->id());
  if (!t.ok()) {
    reactor->Finish(ToGrpcStatus(t.status()));
  } else {
    *resp = std::move(*t);
    reactor->Finish(grpc::Status::OK);
  }
  return reactor;
}

grpc::ServerUnaryReactor* TaskServiceImpl::Wait(
    grpc::CallbackServerContext* ctx, const v1::WaitTaskRequest* req,
    v1::WaitTaskResponse* resp) {
  return new WaitReactor(scheduler_, ctx, req, resp);
}

grpc::ServerUnaryReactor* TaskServiceImpl::Cancel(
    grpc::CallbackServerContext* ctx, const v1::CancelTaskRequest* req,
    v1::Task* resp) {
  auto* reactor = ctx->DefaultReactor();
  scheduler_.Cancel(req->id(), FinishWithTask(reactor, resp));
  return reactor;
}

grpc::ServerUnaryReactor* TaskServiceImpl::List(
    grpc::CallbackServerContext* ctx, const v1::ListTasksRequest* req,
    v1::ListTasksResponse* resp) {
  auto* reactor = ctx->DefaultReactor();
  if (req->page_size() < 0) {
    reactor->Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                 "page_size must not be negative"));
    return reactor;
  }
  ListQuery q;
  q.queue = req->queue();
  q.state = req->state();
  q.kind = req->kind();
  q.page_size = req->page_size() == 0 ? 100 : std::min(req->page_size(), 1000);
  q.page_token = req->page_token();
  absl::StatusOr<ListPage> page = scheduler_.List(std::move(q));
  if (!page.ok()) {
    reactor->Finish(ToGrpcStatus(page.status()));
    return reactor;
  }
  for (v1::Task& t : page->tasks) *resp->add_tasks() = std::move(t);
  resp->set_next_page_token(page->next_page_token);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* TaskServiceImpl::Retry(
    grpc::CallbackServerContext* ctx, const v1::RetryTaskRequest* req,
    v1::Task* resp) {
  auto* reactor = ctx->DefaultReactor();
  scheduler_.Retry(req->id(), FinishWithTask(reactor, resp));
  return reactor;
}

grpc::ServerWriteReactor<v1::TaskEvent>* TaskServiceImpl::Watch(
    grpc::CallbackServerContext* ctx, const v1::WatchRequest* req) {
  return new WatchReactor(scheduler_, req);
}

grpc::ServerBidiReactor<v1::MapRequest, v1::MapResult>* TaskServiceImpl::Map(
    grpc::CallbackServerContext* ctx) {
  return new MapReactor(scheduler_);
}

}  // namespace forq::server
