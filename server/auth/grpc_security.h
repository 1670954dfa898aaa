// gRPC server credentials for forqd's listening ports: plaintext or TLS
// (optionally requiring client certificates), with a token check that runs
// in gRPC's auth filter before any handler. With neither tokens nor TLS the
// plain insecure credentials are used, so an open forqd pays nothing.
#ifndef FORQ_SERVER_AUTH_GRPC_SECURITY_H_
#define FORQ_SERVER_AUTH_GRPC_SECURITY_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>

#include "grpcpp/security/server_credentials.h"

#include "server/auth/tls_material.h"
#include "server/auth/token_auth.h"

namespace forq::server {

// Thread-compatible; make credentials before the server starts. `tokens` and
// `tls` are borrowed (either may be null) and, like this object, must
// outlive every grpc::Server the credentials are used with: gRPC calls back
// into them for each call and each TLS handshake.
class GrpcServerSecurity {
 public:
  GrpcServerSecurity(const TokenTable* tokens, TlsMaterial* tls)
      : tokens_(tokens), tls_(tls) {}
  GrpcServerSecurity(const GrpcServerSecurity&) = delete;
  GrpcServerSecurity& operator=(const GrpcServerSecurity&) = delete;

  // Credentials of a public port: TLS when configured (the certificate is
  // re-read for new handshakes after TlsMaterial::Reload), tokens when
  // configured.
  std::shared_ptr<grpc::ServerCredentials> PortCredentials();
  // Credentials of a private port (forqd's own HTTP gateway over a unix
  // socket): no TLS, but the same token check.
  std::shared_ptr<grpc::ServerCredentials> PrivatePortCredentials();

 private:
  struct FetchState {
    TlsMaterial* tls;
    std::atomic<uint64_t> seen{0};
  };

  const TokenTable* const tokens_;
  TlsMaterial* const tls_;
  std::deque<FetchState> fetch_states_;  // stable addresses for gRPC
};

}  // namespace forq::server

#endif  // FORQ_SERVER_AUTH_GRPC_SECURITY_H_
