// One gRPC call the HTTP gateway makes on forqd's own gRPC port through
// grpc::GenericStub's callback API: no thread is parked per call, so a
// thousand long polls cost a thousand small objects, not a thousand threads.
#ifndef FORQ_SERVER_HTTP_FORWARDED_CALL_H_
#define FORQ_SERVER_HTTP_FORWARDED_CALL_H_

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "grpcpp/client_context.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/client_callback.h"

#include "common/mutex.h"

namespace forq::server {

class CallTracker;

// Every call is a bidi stream on the wire (unary and server-streaming RPCs
// accept that framing too), so one reactor serves every route. Requests are
// written in order, then the stream is half-closed; responses are read one at
// a time, each only after the consumer asks for it with ReadNext(), which
// gives HTTP back-pressure all the way to the gRPC server.
//
// Handlers run on gRPC threads and must not block (they post to the HTTP
// connection's strand). ReadNext() and Cancel() must be called from one
// serialized context (the connection's strand), never concurrently.
class ForwardedCall final
    : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  struct Handlers {
    // Response headers arrived (the server started answering). Optional.
    std::function<void()> on_headers;
    // One response message; call ReadNext() when ready for the next one.
    std::function<void(grpc::ByteBuffer)> on_message;
    // The call ended; runs exactly once, last.
    std::function<void(const grpc::Status&)> on_done;
  };

  // Starts `method` ("/pkg.Service/Method") with `requests` (at least one).
  // A non-empty `authorization` is sent as the call's authorization
  // metadata. Returns null when `tracker` is shutting down; then no handler
  // runs.
  static std::shared_ptr<ForwardedCall> Start(
      grpc::GenericStub* stub, CallTracker* tracker, const std::string& method,
      std::vector<grpc::ByteBuffer> requests, Handlers handlers,
      const std::string& authorization = "");

  ForwardedCall(const ForwardedCall&) = delete;
  ForwardedCall& operator=(const ForwardedCall&) = delete;

  // Asks for the next response message. Call once per on_message.
  void ReadNext();
  // Cancels the call (client went away, gateway stopping). on_done still
  // runs, with CANCELLED unless the call had already ended.
  void Cancel();
  // Cancels without touching the read protocol; safe from any thread.
  void TryCancel() { context_.TryCancel(); }

  // grpc::ClientBidiReactor.
  void OnReadInitialMetadataDone(bool ok) override;
  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnDone(const grpc::Status& status) override;

 private:
  ForwardedCall(CallTracker* tracker, std::vector<grpc::ByteBuffer> requests,
                Handlers handlers);
  void WriteNext();
  // Drops the hold that keeps OnDone from running while the consumer may
  // still call ReadNext(); idempotent.
  void ReleaseHold();

  CallTracker* const tracker_;
  grpc::ClientContext context_;
  std::vector<grpc::ByteBuffer> requests_;
  size_t next_write_ = 0;  // only touched by StartCall and OnWriteDone
  grpc::ByteBuffer response_;
  Handlers handlers_;
  std::atomic<bool> hold_released_{false};
};

// Registry of live calls so the gateway can cancel them all and wait before
// tearing down. Thread-safe.
class CallTracker {
 public:
  CallTracker() = default;
  CallTracker(const CallTracker&) = delete;
  CallTracker& operator=(const CallTracker&) = delete;

  // Refuses new calls, cancels every live call, and waits until all have run
  // their on_done handler and destroyed their handlers, so no handler runs
  // after this returns. Consumers must keep serving their calls
  // (ReadNext/Cancel) meanwhile, or the wait never ends.
  void CancelAllAndWait() ABSL_LOCKS_EXCLUDED(mu_);
  size_t live() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  friend class ForwardedCall;
  bool Add(std::shared_ptr<ForwardedCall> call) ABSL_LOCKS_EXCLUDED(mu_);
  // Returns the tracker's reference so the caller decides when it drops.
  std::shared_ptr<ForwardedCall> Remove(ForwardedCall* call)
      ABSL_LOCKS_EXCLUDED(mu_);

  Mutex mu_;
  CondVar cv_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::map<ForwardedCall*, std::shared_ptr<ForwardedCall>> calls_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace forq::server

#endif  // FORQ_SERVER_HTTP_FORWARDED_CALL_H_
