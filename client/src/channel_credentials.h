// Channel credentials of libforq from ClientOptions: plaintext or TLS
// (optionally with a client certificate), plus the bearer token on every
// call. Internal to libforq.
#ifndef FORQ_CLIENT_SRC_CHANNEL_CREDENTIALS_H_
#define FORQ_CLIENT_SRC_CHANNEL_CREDENTIALS_H_

#include <memory>

#include "absl/status/statusor.h"
#include "grpcpp/security/credentials.h"

#include "forq/client.h"

namespace forq::client_internal {

// NotFound naming the file when a PEM file cannot be read; InvalidArgument
// for a key without a certificate (or the reverse).
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>>
MakeChannelCredentials(const ClientOptions& options);

}  // namespace forq::client_internal

#endif  // FORQ_CLIENT_SRC_CHANNEL_CREDENTIALS_H_
