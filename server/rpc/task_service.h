// gRPC edge of forq.v1.TaskService (callback API: no thread is held per
// call, including long-polling Wait and streaming Watch).
#ifndef FORQ_SERVER_RPC_TASK_SERVICE_H_
#define FORQ_SERVER_RPC_TASK_SERVICE_H_

#include "forq/v1/task.grpc.pb.h"
#include "server/auth/rate_limit.h"
#include "server/rpc/grpc_metrics.h"
#include "server/rpc/parsed_request.h"
#include "server/scheduler/scheduler.h"

namespace forq::server {

// Thread-safe; borrows the scheduler, which must outlive the gRPC server.
// With `metrics`, every call is counted by its handler when it finishes (no
// interceptor needed: see GrpcMetrics::CountedByHandlers).
// TaskService::CallbackService with Map, MapBatched and WaitStream taking
// raw bytes, so their reactors can tell a message that does not parse from
// the end of the stream (see map_reactor.cc), and the other methods taking
// ParsedRequest (no interceptor runs for any of its calls).
using TaskServiceBase = ParsedRequests<v1::TaskService::WithCallbackMethod_Submit<
    v1::TaskService::WithCallbackMethod_SubmitBatch<
        v1::TaskService::WithCallbackMethod_Get<
            v1::TaskService::WithCallbackMethod_Wait<
                v1::TaskService::WithCallbackMethod_Cancel<
                    v1::TaskService::WithCallbackMethod_List<
                        v1::TaskService::WithCallbackMethod_Retry<
                            v1::TaskService::WithCallbackMethod_Watch<
                                v1::TaskService::WithRawCallbackMethod_Map<
                                    v1::TaskService::
                                        WithRawCallbackMethod_MapBatched<
                                            v1::TaskService::
                                                WithRawCallbackMethod_WaitStream<
                                                    v1::TaskService::
                                                        Service>>>>>>>>>>>>;

class TaskServiceImpl final : public TaskServiceBase {
 public:
  explicit TaskServiceImpl(Scheduler& scheduler,
                           GrpcMetrics* metrics = nullptr);

  // Submit and SubmitBatch take one token per task from the caller's
  // bucket (ClientKey); borrowed, may be null (no limit). Before serving.
  void SetSubmitLimiter(SubmitRateLimiter* limiter) { limiter_ = limiter; }

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
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* WaitStream(
      grpc::CallbackServerContext* ctx) override;
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* Map(
      grpc::CallbackServerContext* ctx) override;
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* MapBatched(
      grpc::CallbackServerContext* ctx) override;

 private:
  // Null without metrics.
  GrpcMetrics::Method* M(const char* method) const;

  Scheduler& scheduler_;
  SubmitRateLimiter* limiter_ = nullptr;
  GrpcMetrics* const metrics_;
  GrpcMetrics::Method* const submit_;
  GrpcMetrics::Method* const submit_batch_;
  GrpcMetrics::Method* const get_;
  GrpcMetrics::Method* const wait_;
  GrpcMetrics::Method* const cancel_;
  GrpcMetrics::Method* const list_;
  GrpcMetrics::Method* const retry_;
  GrpcMetrics::Method* const watch_;
  GrpcMetrics::Method* const map_;
  GrpcMetrics::Method* const map_batched_;
  GrpcMetrics::Method* const wait_stream_;
};

}  // namespace forq::server

#endif  // FORQ_SERVER_RPC_TASK_SERVICE_H_
