// Per-client rate limit of task submissions (token buckets), and the gRPC
// status that tells a client when to retry.
#ifndef FORQ_SERVER_AUTH_RATE_LIMIT_H_
#define FORQ_SERVER_AUTH_RATE_LIMIT_H_

#include <cstdint>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/status.h"

namespace forq::server {

// The absl::Status payload (type URL) carrying a serialized
// google.rpc.RetryInfo; RateLimitedGrpcStatus turns it into a gRPC error
// detail, which the HTTP gateway renders as Retry-After.
inline constexpr absl::string_view kRetryInfoUrl =
    "type.googleapis.com/google.rpc.RetryInfo";

struct RateLimitOptions {
  // Tasks per second each client may submit on average; <= 0: no limit.
  double rate = 0;
  // Tasks a client may submit at once after being quiet.
  double burst = 0;
  // Buckets kept; beyond it idle (full) buckets are dropped, and if none is
  // idle, new clients share one overflow bucket.
  size_t max_clients = 10000;
  // Tokens are checked (--auth_tokens_file): a client is its token.
  // Otherwise a client is its address (the token header is then unchecked
  // and must not choose the bucket).
  bool by_token = false;
};

// Thread-safe.
class SubmitRateLimiter {
 public:
  explicit SubmitRateLimiter(RateLimitOptions options);

  bool enabled() const { return options_.rate > 0; }

  // Who is calling: "token:" + the first 16 hex digits of the token's
  // SHA-256 when by_token (never the token itself), else the peer's
  // address without its port.
  std::string ClientKey(const grpc::ServerContextBase& ctx) const;

  // Takes `tasks` tokens from `client`'s bucket. A request is admitted
  // while the bucket holds at least one token, even when it needs more (the
  // bucket goes into debt), so a batch larger than the burst is not refused
  // forever. Otherwise ResourceExhausted with a RetryInfo payload saying
  // when one token is back.
  absl::Status Admit(absl::string_view client, int64_t tasks);
  // As Admit, at a given time (tests).
  absl::Status AdmitAt(absl::string_view client, int64_t tasks, absl::Time now);

  size_t clients() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Bucket {
    double tokens;
    absl::Time updated;
  };
  void Refill(Bucket& b, absl::Time now) const;

  const RateLimitOptions options_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, Bucket> buckets_ ABSL_GUARDED_BY(mu_);
};

// `s` as a grpc::Status; a RetryInfo payload becomes a
// google.rpc.Status error detail (grpc-status-details-bin).
grpc::Status RateLimitedGrpcStatus(const absl::Status& s);

}  // namespace forq::server

#endif  // FORQ_SERVER_AUTH_RATE_LIMIT_H_
