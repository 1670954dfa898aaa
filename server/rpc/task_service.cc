#include "server/rpc/task_service.h"

#include <algorithm>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/time/time.h"

#include "common/mutex.h"
#include "forq/v1/task_state.h"
#include "server/auth/request_checks.h"
#include "server/rpc/reactor_util.h"
#include "server/rpc/status_util.h"
#include "server/rpc/stream_reactors.h"
#include "server/scheduler/task_proto.h"

namespace forq::server {
namespace {

// Finishes the answer of a Submit whose tasks are durable; `fresh` are the
// answer's newly inserted tasks. One that has finished meanwhile (a short
// task runs while its insert commits) is answered with its result once
// that is durable, a group commit later: the client's future then needs no
// wait call.
void AnswerSubmit(Scheduler& scheduler, const std::vector<v1::Task*>& fresh,
                  grpc::ServerUnaryReactor* reactor, const Meter& meter) {
  struct Answer {
    Answer(grpc::ServerUnaryReactor* r, const Meter& m, size_t waits)
        : reactor(r), meter(m), left(waits + 1) {}
    grpc::ServerUnaryReactor* const reactor;
    const Meter meter;
    Mutex mu;
    // The parked waits, those that were not, and the call below.
    size_t left ABSL_GUARDED_BY(mu);
    void Release(size_t n) {
      bool last;
      {
        MutexLock lock(&mu);
        left -= n;
        last = left == 0;
      }
      if (last) meter.Finish(reactor, grpc::Status::OK);
    }
  };
  auto answer = std::make_shared<Answer>(reactor, meter, fresh.size());
  std::vector<absl::string_view> ids;
  ids.reserve(fresh.size());
  for (const v1::Task* slot : fresh) ids.push_back(slot->id());
  const size_t parked =
      scheduler.WaitIfFinishing(ids, [&](size_t i) -> Scheduler::WaitDone {
        return [answer, slot = fresh[i]](absl::StatusOr<v1::Task> t,
                                         bool terminal) {
          if (t.ok() && terminal) {
            MutexLock lock(&answer->mu);
            *slot = *std::move(t);
          }
          answer->Release(1);
        };
      });
  answer->Release(fresh.size() - parked + 1);
}

// Time left before the client's deadline (capped to a day).
absl::Duration TimeLeft(grpc::CallbackServerContext* ctx) {
  absl::Time deadline = absl::FromChrono(ctx->deadline());
  return std::min(deadline - absl::Now(), absl::Hours(24));
}

// A scheduler callback that finishes a unary call with a task or an error.
std::function<void(absl::StatusOr<v1::Task>)> FinishWithTask(
    grpc::ServerUnaryReactor* reactor, v1::Task* resp, Meter meter) {
  return [reactor, resp, meter](absl::StatusOr<v1::Task> t) {
    if (!t.ok()) {
      meter.Finish(reactor, ToGrpcStatus(t.status()));
      return;
    }
    *resp = std::move(*t);
    meter.Finish(reactor, grpc::Status::OK);
  };
}

// A unary call that ends by waiting for a task: Wait, and Submit with
// `wait`. Parks in the scheduler (no thread held); `fill` writes the task
// and whether it is terminal into the response.
class TaskWaitReactor final : public grpc::ServerUnaryReactor {
 public:
  using Fill = std::function<void(v1::Task, bool terminal)>;

  // `persist`: the task was submitted with Scheduler::Ack::kDeferred, so an
  // answer that it is unfinished must wait until it is stored.
  TaskWaitReactor(Scheduler& scheduler, Meter meter, Fill fill,
                  bool persist = false)
      : scheduler_(scheduler),
        meter_(meter),
        fill_(std::move(fill)),
        persist_(persist),
        guard_(std::make_shared<ReactorGuard<TaskWaitReactor>>()) {
    MutexLock lock(&guard_->mu);
    guard_->reactor = this;
  }

  // Parks until `id` is terminal or `timeout` has passed.
  void Start(absl::string_view id, absl::Duration timeout) {
    {
      MutexLock lock(&guard_->mu);
      if (finished_) return;
      if (cancelled_) {
        FinishLocked(
            grpc::Status(grpc::StatusCode::CANCELLED, "wait cancelled"));
        return;
      }
    }
    auto complete = [guard = guard_](absl::StatusOr<v1::Task> task,
                                     bool terminal) {
      MutexLock lock(&guard->mu);
      if (guard->reactor != nullptr) {
        guard->reactor->CompleteLocked(std::move(task), terminal);
      }
    };
    uint64_t handle = scheduler_.Wait(
        id, timeout,
        [complete, persist = persist_, &scheduler = scheduler_,
         id = std::string(id)](absl::StatusOr<v1::Task> task, bool terminal) {
          if (!persist || terminal || !task.ok()) {
            complete(std::move(task), terminal);
            return;
          }
          scheduler.Persist(id, [complete, task = *std::move(task)](
                                    const absl::Status& stored) mutable {
            if (stored.ok()) {
              complete(std::move(task), false);
            } else {
              complete(stored, false);
            }
          });
        });
    MutexLock lock(&guard_->mu);
    handle_ = handle;
  }

  // Ends the call with `status` (when no wait is needed, or on an error).
  void End(grpc::Status status) {
    MutexLock lock(&guard_->mu);
    FinishLocked(std::move(status));
  }

  void OnCancel() override {
    MutexLock lock(&guard_->mu);
    cancelled_ = true;
    if (finished_) return;
    if (handle_ != 0 && scheduler_.CancelWait(handle_)) {
      FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "wait cancelled"));
    }
  }

  // gRPC callback reactors own themselves: deleted when gRPC is done.
  void OnDone() override {
    guard_->Detach();
    delete this;
  }

 private:
  void FinishLocked(grpc::Status status)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(guard_->mu) {
    if (finished_) return;
    finished_ = true;
    meter_.Done(status.error_code());
    Finish(std::move(status));
  }

  // Called with guard_->mu held, through the guard (which the analysis
  // cannot tie to guard_).
  void CompleteLocked(absl::StatusOr<v1::Task> task, bool terminal) {
    guard_->mu.AssertHeld();
    if (finished_) return;
    if (!task.ok()) {
      FinishLocked(ToGrpcStatus(task.status()));
      return;
    }
    fill_(std::move(*task), terminal);
    FinishLocked(grpc::Status::OK);
  }

  Scheduler& scheduler_;
  const Meter meter_;
  const Fill fill_;
  const bool persist_;
  std::shared_ptr<ReactorGuard<TaskWaitReactor>> guard_;
  uint64_t handle_ ABSL_GUARDED_BY(guard_->mu) = 0;
  bool finished_ ABSL_GUARDED_BY(guard_->mu) = false;
  bool cancelled_ ABSL_GUARDED_BY(guard_->mu) = false;
};

}  // namespace

TaskServiceImpl::TaskServiceImpl(Scheduler& scheduler, GrpcMetrics* metrics)
    : scheduler_(scheduler),
      metrics_(metrics),
      submit_(M("Submit")),
      submit_batch_(M("SubmitBatch")),
      get_(M("Get")),
      wait_(M("Wait")),
      cancel_(M("Cancel")),
      list_(M("List")),
      retry_(M("Retry")),
      watch_(M("Watch")),
      map_(M("Map")),
      map_batched_(M("MapBatched")),
      wait_stream_(M("WaitStream")) {
  const char* service = v1::TaskService::service_full_name();
  ParseUnary(service, "Submit", submit_, &TaskServiceImpl::Submit);
  ParseUnary(service, "SubmitBatch", submit_batch_,
             &TaskServiceImpl::SubmitBatch);
  ParseUnary(service, "Get", get_, &TaskServiceImpl::Get);
  ParseUnary(service, "Wait", wait_, &TaskServiceImpl::Wait);
  ParseUnary(service, "Cancel", cancel_, &TaskServiceImpl::Cancel);
  ParseUnary(service, "List", list_, &TaskServiceImpl::List);
  ParseUnary(service, "Retry", retry_, &TaskServiceImpl::Retry);
  ParseServerStreaming(service, "Watch", watch_, &TaskServiceImpl::Watch);
}

GrpcMetrics::Method* TaskServiceImpl::M(const char* method) const {
  return metrics_ == nullptr
             ? nullptr
             : metrics_->Get(v1::TaskService::service_full_name(), method);
}

namespace {

// gRPC's callback API hands a handler its request as const, but the message
// is the call's own (a non-const member of its message holder) and nothing
// reads it once the handler took what it needs: its task specs are moved
// out instead of copied (payloads included).
std::vector<v1::TaskSpec> TakeSpecs(const v1::SubmitBatchRequest* req) {
  auto* tasks = const_cast<v1::SubmitBatchRequest*>(req)->mutable_tasks();
  std::vector<v1::TaskSpec> specs;
  specs.reserve(tasks->size());
  for (v1::TaskSpec& spec : *tasks) specs.push_back(std::move(spec));
  return specs;
}

std::vector<v1::TaskSpec> TakeSpec(const v1::SubmitRequest* req) {
  std::vector<v1::TaskSpec> specs(1);
  specs[0].Swap(const_cast<v1::SubmitRequest*>(req)->mutable_task());
  return specs;
}

}  // namespace

grpc::ServerUnaryReactor* TaskServiceImpl::Submit(
    grpc::CallbackServerContext* ctx, const v1::SubmitRequest* req,
    v1::SubmitResponse* resp) {
  Meter meter(submit_);
  absl::Status bad = CheckRequestFields(*req);
  if (bad.ok() && (req->wait().seconds() < 0 || req->wait().nanos() < 0)) {
    bad = absl::InvalidArgumentError("wait must not be negative");
  }
  if (!bad.ok()) {
    auto* reactor = ctx->DefaultReactor();
    meter.Finish(reactor, ToGrpcStatus(bad));
    return reactor;
  }
  if (limiter_ != nullptr) {
    if (absl::Status s = limiter_->Admit(limiter_->ClientKey(*ctx), 1);
        !s.ok()) {
      auto* reactor = ctx->DefaultReactor();
      meter.Finish(reactor, RateLimitedGrpcStatus(s));
      return reactor;
    }
  }
  if (!req->has_wait()) {
    auto* reactor = ctx->DefaultReactor();
    scheduler_.Submit(TakeSpec(req),
                      [this, reactor, resp,
                       meter](absl::StatusOr<std::vector<InsertResult>> r) {
                        if (!r.ok()) {
                          meter.Finish(reactor, ToGrpcStatus(r.status()));
                          return;
                        }
                        *resp->mutable_task() = std::move((*r)[0].task);
                        resp->set_existing((*r)[0].existing);
                        std::vector<v1::Task*> fresh;
                        if (!resp->existing()) {
                          fresh.push_back(resp->mutable_task());
                        }
                        AnswerSubmit(scheduler_, fresh, reactor, meter);
                      });
    return reactor;
  }
  // Submit and wait in one call: the reply carries the terminal task, or
  // the task as it stands when `wait` (or the deadline) runs out.
  // The reply is the task's acknowledgement: a task that finishes within
  // the wait is written once, finished (Ack::kDeferred); one that does not
  // is stored before the reply says so.
  auto* reactor = new TaskWaitReactor(
      scheduler_, meter,
      [resp](v1::Task task, bool terminal) {
        *resp->mutable_task() = std::move(task);
        resp->set_done(terminal);
      },
      /*persist=*/true);
  const absl::Duration timeout =
      std::min(TimeLeft(ctx), FromProto(req->wait()));
  scheduler_.Submit(
      TakeSpec(req),
      [reactor, resp, timeout](absl::StatusOr<std::vector<InsertResult>> r) {
        if (!r.ok()) {
          reactor->End(ToGrpcStatus(r.status()));
          return;
        }
        resp->set_existing((*r)[0].existing);
        reactor->Start((*r)[0].task.id(), timeout);
      },
      Scheduler::Ack::kDeferred);
  return reactor;
}

grpc::ServerUnaryReactor* TaskServiceImpl::SubmitBatch(
    grpc::CallbackServerContext* ctx, const v1::SubmitBatchRequest* req,
    v1::SubmitBatchResponse* resp) {
  auto* reactor = ctx->DefaultReactor();
  Meter meter(submit_batch_);
  if (absl::Status bad = CheckRequestFields(*req); !bad.ok()) {
    meter.Finish(reactor, ToGrpcStatus(bad));
    return reactor;
  }
  if (limiter_ != nullptr) {
    if (absl::Status s =
            limiter_->Admit(limiter_->ClientKey(*ctx), req->tasks_size());
        !s.ok()) {
      meter.Finish(reactor, RateLimitedGrpcStatus(s));
      return reactor;
    }
  }
  const bool brief = req->brief();
  scheduler_.Submit(TakeSpecs(req),
                    [this, reactor, resp, meter,
                     brief](absl::StatusOr<std::vector<InsertResult>> r) {
                      if (!r.ok()) {
                        meter.Finish(reactor, ToGrpcStatus(r.status()));
                        return;
                      }
                      for (InsertResult& ir : *r) {
                        v1::Task* t = resp->add_tasks();
                        if (brief && !v1::IsTerminal(ir.task.state())) {
                          t->set_id(std::move(*ir.task.mutable_id()));
                          t->set_queue(std::move(*ir.task.mutable_queue()));
                          t->set_kind(std::move(*ir.task.mutable_kind()));
                          t->set_state(ir.task.state());
                        } else {
                          *t = std::move(ir.task);
                        }
                        resp->add_existing(ir.existing);
                      }
                      std::vector<v1::Task*> fresh;
                      fresh.reserve(resp->tasks_size());
                      for (int i = 0; i < resp->tasks_size(); ++i) {
                        if (!resp->existing(i)) {
                          fresh.push_back(resp->mutable_tasks(i));
                        }
                      }
                      AnswerSubmit(scheduler_, fresh, reactor, meter);
                    });
  return reactor;
}

grpc::ServerUnaryReactor* TaskServiceImpl::Get(grpc::CallbackServerContext* ctx,
                                               const v1::GetTaskRequest* req,
                                               v1::Task* resp) {
  auto* reactor = ctx->DefaultReactor();
  Meter meter(get_);
  if (absl::Status bad = CheckRequestFields(*req); !bad.ok()) {
    meter.Finish(reactor, ToGrpcStatus(bad));
    return reactor;
  }
  absl::StatusOr<v1::Task> t = scheduler_.Get(req->id());
  if (!t.ok()) {
    meter.Finish(reactor, ToGrpcStatus(t.status()));
  } else {
    *resp = std::move(*t);
    meter.Finish(reactor, grpc::Status::OK);
  }
  return reactor;
}

grpc::ServerUnaryReactor* TaskServiceImpl::Wait(
    grpc::CallbackServerContext* ctx, const v1::WaitTaskRequest* req,
    v1::WaitTaskResponse* resp) {
  if (absl::Status bad = CheckRequestFields(*req); !bad.ok()) {
    auto* reactor = ctx->DefaultReactor();
    Meter(wait_).Finish(reactor, ToGrpcStatus(bad));
    return reactor;
  }
  auto* reactor = new TaskWaitReactor(scheduler_, Meter(wait_),
                                      [resp](v1::Task task, bool terminal) {
                                        *resp->mutable_task() = std::move(task);
                                        resp->set_done(terminal);
                                      });
  absl::Duration timeout = TimeLeft(ctx);
  if (req->has_timeout()) {
    timeout = std::min(timeout, FromProto(req->timeout()));
  }
  reactor->Start(req->id(), timeout);
  return reactor;
}

grpc::ServerUnaryReactor* TaskServiceImpl::Cancel(
    grpc::CallbackServerContext* ctx, const v1::CancelTaskRequest* req,
    v1::Task* resp) {
  auto* reactor = ctx->DefaultReactor();
  if (absl::Status bad = CheckRequestFields(*req); !bad.ok()) {
    Meter(cancel_).Finish(reactor, ToGrpcStatus(bad));
    return reactor;
  }
  scheduler_.Cancel(req->id(), FinishWithTask(reactor, resp, Meter(cancel_)));
  return reactor;
}

grpc::ServerUnaryReactor* TaskServiceImpl::List(
    grpc::CallbackServerContext* ctx, const v1::ListTasksRequest* req,
    v1::ListTasksResponse* resp) {
  auto* reactor = ctx->DefaultReactor();
  Meter meter(list_);
  if (absl::Status bad = CheckRequestFields(*req); !bad.ok()) {
    meter.Finish(reactor, ToGrpcStatus(bad));
    return reactor;
  }
  if (req->page_size() < 0) {
    meter.Finish(reactor, grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                       "page_size must not be negative"));
    return reactor;
  }
  ListQuery q;
  q.queue = req->queue();
  q.state = req->state();
  q.kind = req->kind();
  // The store maps 0 to its default page and caps the size (ListQuery).
  q.page_size = req->page_size();
  q.page_token = req->page_token();
  absl::StatusOr<ListPage> page = scheduler_.List(q);
  if (!page.ok()) {
    meter.Finish(reactor, ToGrpcStatus(page.status()));
    return reactor;
  }
  for (v1::Task& t : page->tasks) *resp->add_tasks() = std::move(t);
  resp->set_next_page_token(page->next_page_token);
  meter.Finish(reactor, grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* TaskServiceImpl::Retry(
    grpc::CallbackServerContext* ctx, const v1::RetryTaskRequest* req,
    v1::Task* resp) {
  auto* reactor = ctx->DefaultReactor();
  if (absl::Status bad = CheckRequestFields(*req); !bad.ok()) {
    Meter(retry_).Finish(reactor, ToGrpcStatus(bad));
    return reactor;
  }
  scheduler_.Retry(req->id(), FinishWithTask(reactor, resp, Meter(retry_)));
  return reactor;
}

grpc::ServerWriteReactor<v1::TaskEvent>* TaskServiceImpl::Watch(
    grpc::CallbackServerContext* ctx, const v1::WatchRequest* req) {
  return NewWatchReactor(scheduler_, req, Meter(watch_));
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>*
TaskServiceImpl::WaitStream(grpc::CallbackServerContext* ctx) {
  return NewWaitStreamReactor(scheduler_, Meter(wait_stream_));
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>*
TaskServiceImpl::Map(grpc::CallbackServerContext* ctx) {
  return NewMapReactor(scheduler_, Meter(map_), limiter_,
                       limiter_ != nullptr ? limiter_->ClientKey(*ctx) : "");
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>*
TaskServiceImpl::MapBatched(grpc::CallbackServerContext* ctx) {
  return NewMapBatchedReactor(
      scheduler_, Meter(map_batched_), limiter_,
      limiter_ != nullptr ? limiter_->ClientKey(*ctx) : "");
}

}  // namespace forq::server
