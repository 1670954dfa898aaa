// Conversions between absl::Status (inside forqd) and grpc::Status (the
// edge). The numeric codes are identical.
#ifndef FORQ_SERVER_RPC_STATUS_UTIL_H_
#define FORQ_SERVER_RPC_STATUS_UTIL_H_

#include <string>

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace forq::server {

inline grpc::Status ToGrpcStatus(const absl::Status& s) {
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()),
                      std::string(s.message()));
}

}  // namespace forq::server

#endif  // FORQ_SERVER_RPC_STATUS_UTIL_H_
