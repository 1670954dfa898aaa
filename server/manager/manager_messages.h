// The Manager's protobuf messages onto the core's requests and back: one
// From/To pair per message family of the per-op RPCs (the operation table,
// api/forq/v1/manager_ops.h, names each RPC's family), and the generic
// ManagerCall/ManagerResult of Call and Session.
#ifndef FORQ_SERVER_MANAGER_MANAGER_MESSAGES_H_
#define FORQ_SERVER_MANAGER_MANAGER_MESSAGES_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "google/protobuf/duration.pb.h"
#include <grpcpp/grpcpp.h>

#include "forq/v1/manager.pb.h"
#include "worker/manager_protocol.h"

namespace forq::server {

// Whole milliseconds of `d`, rounded up; 0 if `d` is not positive. Clamped
// near INT64_MAX ms (~292 million years): any valid Duration converts.
int64_t DurationToCeilMs(const google::protobuf::Duration& d);

// Milliseconds a blocking op may wait: the explicit timeout (absent = no
// limit of its own) capped by the RPC deadline.
int64_t TimeoutMs(grpc::CallbackServerContext* ctx, bool has_timeout,
                  const google::protobuf::Duration& timeout);

// One pair per message family of the per-op RPCs: the request onto the
// core's, the core's reply into the response.
worker::ManagerRequest FromDict(const v1::DictRequest& in,
                                worker::ManagerType type, worker::ManagerOp op,
                                grpc::CallbackServerContext*);
void ToDict(const worker::ManagerReply& r, worker::ManagerOp op,
            v1::DictResponse* out);
worker::ManagerRequest FromList(const v1::ListRequest& in,
                                worker::ManagerType type, worker::ManagerOp op,
                                grpc::CallbackServerContext*);
void ToList(const worker::ManagerReply& r, worker::ManagerOp,
            v1::ListResponse* out);
worker::ManagerRequest FromValue(const v1::ValueRequest& in,
                                 worker::ManagerType type, worker::ManagerOp op,
                                 grpc::CallbackServerContext*);
void ToValue(const worker::ManagerReply& r, worker::ManagerOp,
             v1::ValueResponse* out);
worker::ManagerRequest FromArray(const v1::ArrayRequest& in,
                                 worker::ManagerType type, worker::ManagerOp op,
                                 grpc::CallbackServerContext*);
void ToArray(const worker::ManagerReply& r, worker::ManagerOp,
             v1::ArrayResponse* out);
worker::ManagerRequest FromNamespace(const v1::NamespaceRequest& in,
                                     worker::ManagerType type,
                                     worker::ManagerOp op,
                                     grpc::CallbackServerContext*);
void ToNamespace(const worker::ManagerReply& r, worker::ManagerOp,
                 v1::NamespaceResponse* out);
worker::ManagerRequest FromQueue(const v1::QueueRequest& in,
                                 worker::ManagerType type, worker::ManagerOp op,
                                 grpc::CallbackServerContext* ctx);
void ToQueue(const worker::ManagerReply& r, worker::ManagerOp,
             v1::QueueResponse* out);
worker::ManagerRequest FromPipe(const v1::PipeRequest& in,
                                worker::ManagerType type, worker::ManagerOp op,
                                grpc::CallbackServerContext* ctx);
void ToPipe(const worker::ManagerReply& r, worker::ManagerOp,
            v1::PipeResponse* out);
worker::ManagerRequest FromLock(const v1::LockRequest& in,
                                worker::ManagerType type, worker::ManagerOp op,
                                grpc::CallbackServerContext* ctx);
void ToLock(const worker::ManagerReply& r, worker::ManagerOp,
            v1::LockResponse* out);
worker::ManagerRequest FromSemaphore(const v1::SemaphoreRequest& in,
                                     worker::ManagerType type,
                                     worker::ManagerOp op,
                                     grpc::CallbackServerContext* ctx);
void ToSemaphore(const worker::ManagerReply& r, worker::ManagerOp,
                 v1::SemaphoreResponse* out);
worker::ManagerRequest FromCondition(const v1::ConditionRequest& in,
                                     worker::ManagerType type,
                                     worker::ManagerOp op,
                                     grpc::CallbackServerContext* ctx);
void ToCondition(const worker::ManagerReply& r, worker::ManagerOp op,
                 v1::ConditionResponse* out);
worker::ManagerRequest FromBarrier(const v1::BarrierRequest& in,
                                   worker::ManagerType type,
                                   worker::ManagerOp op,
                                   grpc::CallbackServerContext* ctx);
void ToBarrier(const worker::ManagerReply& r, worker::ManagerOp op,
               v1::BarrierResponse* out);
worker::ManagerRequest FromEvent(const v1::EventRequest& in,
                                 worker::ManagerType type, worker::ManagerOp op,
                                 grpc::CallbackServerContext* ctx);
void ToEvent(const worker::ManagerReply& r, worker::ManagerOp,
             v1::EventResponse* out);

// The generic form (Call and Session). A Session op's timeout: absent =
// no limit of its own (-1).
int64_t StreamTimeoutMs(bool has_timeout,
                        const google::protobuf::Duration& timeout);

// `timeout_ms` is the already-resolved wait of a blocking op.
absl::StatusOr<worker::ManagerRequest> FromCall(const v1::ManagerCall& in,
                                                int64_t timeout_ms);
void ToResult(worker::ManagerReply r, v1::ManagerResult* out);
// One operation's answer on the Session stream or the local socket: the
// result, or the error's code and message.
void ToSessionResult(uint64_t id, absl::StatusOr<worker::ManagerReply> r,
                     v1::SessionResult* out);

// Sessions.
worker::ManagerRequest FromOpenSession(const v1::OpenSessionRequest& in,
                                       worker::ManagerType type,
                                       worker::ManagerOp op,
                                       grpc::CallbackServerContext*);
void ToOpenSession(const worker::ManagerReply& r, worker::ManagerOp,
                   v1::OpenSessionResponse* out);
worker::ManagerRequest FromKeepAlive(const v1::KeepAliveRequest& in,
                                     worker::ManagerType type,
                                     worker::ManagerOp op,
                                     grpc::CallbackServerContext*);
void ToKeepAlive(const worker::ManagerReply& r, worker::ManagerOp,
                 v1::KeepAliveResponse* out);
worker::ManagerRequest FromCloseSession(const v1::CloseSessionRequest& in,
                                        worker::ManagerType type,
                                        worker::ManagerOp op,
                                        grpc::CallbackServerContext*);
void ToCloseSession(const worker::ManagerReply& r, worker::ManagerOp,
                    v1::CloseSessionResponse* out);

}  // namespace forq::server

#endif  // FORQ_SERVER_MANAGER_MANAGER_MESSAGES_H_
