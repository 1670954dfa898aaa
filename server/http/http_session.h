// One connection of forqd's HTTP gateway: reads HTTP/1.1 requests, checks
// their token, answers the builtin endpoints and forwards every REST request
// to its RPC, writing the answer (streamed as NDJSON for a streaming RPC).
#ifndef FORQ_SERVER_HTTP_HTTP_SESSION_H_
#define FORQ_SERVER_HTTP_HTTP_SESSION_H_

#include <memory>
#include <string>

#include "boost/asio/any_io_executor.hpp"
#include "boost/asio/ip/tcp.hpp"
#include "boost/asio/ssl/context.hpp"

namespace forq::server::http_internal {

class GatewayImpl;

// What the gateway needs of a connection, whatever its transport.
// Confined to the connection's strand, except `peer` (set before Run()).
class SessionBase {
 public:
  virtual ~SessionBase() = default;
  // The client's address, for per-client limits.
  std::string peer;
  // Starts serving: the TLS handshake if any, then requests until the
  // connection closes.
  virtual void Run() = 0;
  // Closes the connection and cancels the current call. Runs on the strand.
  virtual void Abort() = 0;
  virtual boost::asio::any_io_executor executor() = 0;
};

// A connection speaking plain HTTP on `socket`. `gw` must outlive it (its
// Stop() waits for every session's gRPC call); the session unregisters
// itself from `gw` when destroyed.
std::shared_ptr<SessionBase> NewPlainSession(
    GatewayImpl* gw, boost::asio::ip::tcp::socket socket);

// A connection speaking TLS with `ssl_ctx` on `socket`.
std::shared_ptr<SessionBase> NewTlsSession(
    GatewayImpl* gw, std::shared_ptr<boost::asio::ssl::context> ssl_ctx,
    boost::asio::ip::tcp::socket socket);

}  // namespace forq::server::http_internal

#endif  // FORQ_SERVER_HTTP_HTTP_SESSION_H_
