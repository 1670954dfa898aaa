// gRPC edge of forq.v1.TaskService (callback API: no thread is held per
// call, including long-polling Wait and streaming Watch).
#ifndef FORQ_SERVER_RPC_TASK_SERVICE_H_
#define FORQ_SERVER_RPC_TASK_SERVICE_H_

#include "forq/v1/task.grpc.pb.h"
#include "server/scheduler/scheduler.h"

namespace forq::server {

// Thread-safe; borrows the scheduler, which must outlive the gRPC server.
class TaskServiceImpl final : public v1::TaskService::CallbackService {
 public:
  explicit TaskServiceImpl(Scheduler& scheduler) : scheduler_(scheduler) {}

  grpc::ServerUnaryReactor* Submit(grpc::CallbackServerContext* ctx,
                                   const v1::SubmitRequest* req,
                                   v1::SubmitResponse* resp) override;
  grpc::ServerUnaryReactor* SubmitBatch(grpc::CallbackServerContext* ctx,
                                        const v1::SubmitBatchRequest* req,
                                        v1::SubmitBatchResponse* resp) override;
  grpc::ServerUnaryReactor* Get(grpc::CallbackServerContext* ctx,
                                const v1::GetTaskRequest* req,
                                v1::Task* resp) override;
  grpc::ServerUnaryReactor* Wait(grpc::CallbackServerContext* ctx,
                                 const v1::WaitTaskRequest* req,
                                 v1::WaitTaskResponse* resp) override;
  grpc::ServerUnaryReactor* Cancel(grpc::CallbackServerContext* ctx,
                                   const v1::CancelTaskRequest* req,
                                   v1::Task* resp) override;
  grpc::ServerUnaryReactor* List(grpc::CallbackServerContext* ctx,
                                 const v1::ListTasksRequest* req,
                                 v1::ListTasksResponse* resp) override;
  grpc::ServerUnaryReactor* Retry(grpc::CallbackServerContext* ctx,
                                  const v1::RetryTaskRequest* req,
                                  v1::Task* resp) override;
  grpc::ServerWriteReactor<v1::TaskEvent>* Watch(
      grpc::CallbackServerContext* ctx, const v1::WatchRequest* req) override;
  grpc::ServerBidiReactor<v1::MapRequest, v1::MapResult>* Map(
      grpc::CallbackServerContext* ctx) override;

 private:
  Scheduler& scheduler_;
};

}  // namespace forq::server

#endif  // FORQ_SERVER_RPC_TASK_SERVICE_H_
