// Pieces shared by the reactors of forq.v1.TaskService (task_service.cc
// and the stream reactors beside it): call metering and the guard through
// which scheduler callbacks reach a reactor that may be gone.
#ifndef FORQ_SERVER_RPC_REACTOR_UTIL_H_
#define FORQ_SERVER_RPC_REACTOR_UTIL_H_

#include <cstddef>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "grpcpp/support/server_callback.h"
#include "grpcpp/support/status.h"

#include "common/mutex.h"
#include "server/rpc/grpc_metrics.h"

namespace forq::server {

// Streamed messages that batch tasks or results are closed once they hold
// about this many bytes: small next to the server's max_message_bytes (64
// MiB by default), and big enough to amortise a write.
constexpr size_t kBatchMessageBytes = 4 << 20;

// Counts one call when it finishes (a null method counts nothing).
class Meter {
 public:
  explicit Meter(GrpcMetrics::Method* method)
      : method_(method),
        start_(method != nullptr ? GrpcMetrics::Clock::now()
                                 : GrpcMetrics::Clock::time_point()) {}
  void Done(grpc::StatusCode code) const {
    if (method_ != nullptr) method_->Record(code, start_);
  }
  // Counts, then finishes a unary call.
  void Finish(grpc::ServerUnaryReactor* reactor, grpc::Status status) const {
    Done(status.error_code());
    reactor->Finish(std::move(status));
  }

 private:
  GrpcMetrics::Method* method_;
  GrpcMetrics::Clock::time_point start_;
};

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

}  // namespace forq::server

#endif  // FORQ_SERVER_RPC_REACTOR_UTIL_H_
