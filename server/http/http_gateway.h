// forqd's HTTP front end: REST/JSON for every RPC of forq's gRPC services,
// plus /metrics, /healthz and /readyz, on one port. Each REST request becomes
// a call of the matching RPC on forqd's own gRPC port over a loopback
// channel, so both front ends share one implementation and one set of
// semantics. Routes come from the (forq.v1.http) options in api/forq/v1.
#ifndef FORQ_SERVER_HTTP_HTTP_GATEWAY_H_
#define FORQ_SERVER_HTTP_HTTP_GATEWAY_H_

#include <cstddef>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

#include "server/metrics/metrics.h"

namespace forq::server {

class TokenTable;
class TlsMaterial;

namespace http_internal {
class GatewayImpl;
}  // namespace http_internal

// What /readyz reports. `ready` decides 200 vs 503; the rest is detail.
struct ReadyState {
  bool ready = false;
  bool store_open = false;
  int live_workers = 0;
  bool draining = false;
  // Why not ready, for humans; empty when ready.
  std::string message;
};

struct HttpGatewayOptions {
  // host:port to listen on; port 0 picks an ephemeral port.
  std::string listen = "127.0.0.1:8080";
  // forqd's own gRPC address, e.g. "127.0.0.1:50051".
  std::string grpc_target;
  // Borrowed, may be null (then /metrics answers 503). /metrics serves
  // metrics->Scrape(); every HTTP request is counted via HttpHandled().
  Metrics* metrics = nullptr;
  // Called on an I/O thread for each /readyz; must be quick and must not
  // block. Null: /readyz answers 200 {"status":"ready"}.
  std::function<ReadyState()> readiness;
  // Open connections in total and per client address; one more is
  // answered 503 with a clear message and closed (plain HTTP) or closed
  // (TLS). Bounds the descriptors and memory connections can take.
  size_t max_connections = 4096;
  size_t max_connections_per_client = 1024;
  // A connection must deliver a whole request header within this time and
  // is closed after this long idle between requests (slowloris bound).
  absl::Duration idle_timeout = absl::Seconds(75);
  // Larger request bodies get 413.
  size_t max_body_bytes = 8 << 20;
  // Borrowed, may be null (no tokens). When set, every REST route and
  // (with metrics_need_token) /metrics need an `Authorization: Bearer`
  // token whose role allows the route's RPC; /healthz, /readyz and
  // /openapi.yaml stay open. Checked before the body is read.
  const TokenTable* tokens = nullptr;
  bool metrics_need_token = true;
  // Borrowed, may be null (plain HTTP). When set, connections speak TLS
  // with its current certificate (re-read after TlsMaterial::Reload), and
  // require a client certificate when it has a client CA.
  TlsMaterial* tls = nullptr;
  // I/O threads running the asynchronous HTTP server (1-2 are plenty: no
  // thread ever waits on a gRPC call).
  int threads = 2;
};

// Thread-safe. Start() once, then Stop() (also run by the destructor).
class HttpGateway {
 public:
  explicit HttpGateway(HttpGatewayOptions options);
  HttpGateway(const HttpGateway&) = delete;
  HttpGateway& operator=(const HttpGateway&) = delete;
  ~HttpGateway();

  // Builds the route table, binds the listen address and starts the I/O
  // threads. Returns the bound port. InvalidArgument for a bad address,
  // empty grpc_target or a wrong (forq.v1.http) option; Unavailable when the
  // address cannot be bound. The gRPC server need not be up yet: calls made
  // before it is fail with 503.
  absl::StatusOr<int> Start();

  // Stops accepting, closes connections, cancels in-flight gRPC calls, waits
  // for them and joins the I/O threads. Idempotent.
  void Stop();

 private:
  std::unique_ptr<http_internal::GatewayImpl> impl_;
};

}  // namespace forq::server

#endif  // FORQ_SERVER_HTTP_HTTP_GATEWAY_H_
