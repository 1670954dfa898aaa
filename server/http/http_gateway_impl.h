// The inside of HttpGateway, shared by the listener (http_gateway.cc) and
// the connections it serves (http_session.cc). Not part of the public API.
#ifndef FORQ_SERVER_HTTP_HTTP_GATEWAY_IMPL_H_
#define FORQ_SERVER_HTTP_HTTP_GATEWAY_IMPL_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "boost/asio/executor_work_guard.hpp"
#include "boost/asio/io_context.hpp"
#include "boost/asio/ip/tcp.hpp"
#include "boost/asio/ssl/context.hpp"
#include "boost/asio/steady_timer.hpp"
#include "grpcpp/channel.h"
#include "grpcpp/generic/generic_stub.h"

#include "common/mutex.h"
#include "server/http/forwarded_call.h"
#include "server/http/http_gateway.h"
#include "server/http/http_session.h"
#include "server/http/route_table.h"

namespace forq::server::http_internal {

// Owns the listener, the I/O threads, the loopback gRPC channel and the
// registry of open connections. Thread-safe; Start() once, then Stop().
class GatewayImpl {
 public:
  using Clock = std::chrono::steady_clock;

  explicit GatewayImpl(HttpGatewayOptions options)
      : options_(std::move(options)) {}
  GatewayImpl(const GatewayImpl&) = delete;
  GatewayImpl& operator=(const GatewayImpl&) = delete;

  // See HttpGateway::Start and HttpGateway::Stop.
  absl::StatusOr<int> Start() ABSL_LOCKS_EXCLUDED(mu_);
  void Stop() ABSL_LOCKS_EXCLUDED(mu_);

  const HttpGatewayOptions& options() const { return options_; }
  const RouteTable& routes() const { return *routes_; }
  const std::string& openapi() const { return openapi_; }
  grpc::GenericStub* stub() { return stub_.get(); }
  CallTracker* tracker() { return &tracker_; }
  bool stopping() const { return stopping_.load(std::memory_order_acquire); }

  // Counts one answered request in the metrics (if any), timed from `t0`.
  void RecordHttp(const std::string& label, int status, Clock::time_point t0);

  // Called by a session's destructor: frees its connection slots.
  void Unregister(SessionBase* s) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  // Creates acceptor_ on ioc_, bound to `endpoint` and listening.
  absl::Status Listen(const boost::asio::ip::tcp::endpoint& endpoint);
  void Accept();
  // Registers and runs a new connection from `peer`, or closes it, with a
  // best-effort 503 on plain HTTP, when the limits refuse it.
  void Serve(boost::asio::ip::tcp::socket socket, const std::string& peer);
  // The TLS context for a new connection; null on error (logged).
  std::shared_ptr<boost::asio::ssl::context> SslContext()
      ABSL_LOCKS_EXCLUDED(mu_);
  void Register(std::shared_ptr<SessionBase> session) ABSL_LOCKS_EXCLUDED(mu_);
  // Why a new connection from `peer` must be refused; empty if it may stay.
  std::string Refusal(const std::string& peer) ABSL_LOCKS_EXCLUDED(mu_);

  const HttpGatewayOptions options_;
  std::unique_ptr<RouteTable> routes_;
  std::string openapi_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<grpc::GenericStub> stub_;
  CallTracker tracker_;
  std::atomic<bool> stopping_{false};

  Mutex mu_;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  std::map<SessionBase*, std::weak_ptr<SessionBase>> sessions_
      ABSL_GUARDED_BY(mu_);
  std::map<std::string, size_t> per_client_ ABSL_GUARDED_BY(mu_);
  Clock::time_point last_refusal_log_ ABSL_GUARDED_BY(mu_);
  // TLS: the context new connections use, rebuilt when the certificate
  // files were reloaded.
  std::shared_ptr<boost::asio::ssl::context> ssl_ctx_ ABSL_GUARDED_BY(mu_);
  uint64_t ssl_generation_ ABSL_GUARDED_BY(mu_) = 0;

  // Declared last and reset explicitly in Stop(): destroying the io_context
  // destroys pending handlers and with them sessions, which unregister
  // through mu_ above.
  std::unique_ptr<boost::asio::io_context> ioc_;
  std::optional<
      boost::asio::executor_work_guard<boost::asio::io_context::executor_type>>
      work_;
  std::unique_ptr<boost::asio::ip::tcp::acceptor> acceptor_;
  std::unique_ptr<boost::asio::steady_timer> accept_retry_;
  std::vector<std::thread> threads_;
};

}  // namespace forq::server::http_internal

#endif  // FORQ_SERVER_HTTP_HTTP_GATEWAY_IMPL_H_
