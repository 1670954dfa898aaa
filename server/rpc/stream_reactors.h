// The streaming calls of forq.v1.TaskService, one reactor each: WaitStream
// (wait_stream_reactor.cc), Watch (watch_reactor.cc), Map and MapBatched
// (map_reactor.cc). Each reactor owns itself (deleted in OnDone) and parks
// in the scheduler rather than holding a thread.
#ifndef FORQ_SERVER_RPC_STREAM_REACTORS_H_
#define FORQ_SERVER_RPC_STREAM_REACTORS_H_

#include <string>

#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/server_callback.h"

#include "forq/v1/task.pb.h"
#include "server/auth/rate_limit.h"
#include "server/rpc/reactor_util.h"
#include "server/scheduler/scheduler.h"

namespace forq::server {

// WaitStream: many waits on one call, over raw bytes.
grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>*
NewWaitStreamReactor(Scheduler& scheduler, Meter meter);

// Watch: task events of one task or queue (`req` is read at once).
grpc::ServerWriteReactor<v1::TaskEvent>* NewWatchReactor(
    Scheduler& scheduler, const v1::WatchRequest* req, Meter meter);

// Map (one MapResult per message) and MapBatched (MapResults), over raw
// bytes. `limiter` (may be null) admits the inputs of `client`.
grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* NewMapReactor(
    Scheduler& scheduler, Meter meter, SubmitRateLimiter* limiter,
    std::string client);
grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>*
NewMapBatchedReactor(Scheduler& scheduler, Meter meter,
                     SubmitRateLimiter* limiter, std::string client);

}  // namespace forq::server

#endif  // FORQ_SERVER_RPC_STREAM_REACTORS_H_
