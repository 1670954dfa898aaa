#include "server/auth/rate_limit.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "google/protobuf/duration.pb.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"

#include "server/auth/token_auth.h"

namespace forq::server {
namespace {

constexpr absl::string_view kOverflowClient = "*overflow*";

}  // namespace

SubmitRateLimiter::SubmitRateLimiter(RateLimitOptions options)
    : options_(options) {}

void SubmitRateLimiter::Refill(Bucket& b, absl::Time now) const {
  if (now > b.updated) {
    b.tokens = std::min(
        options_.burst,
        b.tokens + absl::ToDoubleSeconds(now - b.updated) * options_.rate);
    b.updated = now;
  }
}

absl::Status SubmitRateLimiter::Admit(absl::string_view client, int64_t tasks) {
  return AdmitAt(client, tasks, absl::Now());
}

absl::Status SubmitRateLimiter::AdmitAt(absl::string_view client, int64_t tasks,
                                        absl::Time now) {
  if (!enabled()) return absl::OkStatus();
  const double burst = std::max(1.0, options_.burst);
  absl::MutexLock lock(&mu_);
  auto it = buckets_.find(client);
  if (it == buckets_.end()) {
    if (buckets_.size() >= options_.max_clients) {
      // Forget clients whose bucket refilled: they lose nothing.
      for (auto j = buckets_.begin(); j != buckets_.end();) {
        Refill(j->second, now);
        if (j->second.tokens >= burst) {
          buckets_.erase(j++);
        } else {
          ++j;
        }
      }
    }
    if (buckets_.size() >= options_.max_clients) client = kOverflowClient;
    it = buckets_.try_emplace(client, Bucket{burst, now}).first;
  }
  Bucket& b = it->second;
  Refill(b, now);
  if (b.tokens >= 1) {
    b.tokens -= static_cast<double>(tasks);
    return absl::OkStatus();
  }
  const double wait_s = (1 - b.tokens) / options_.rate;
  const absl::Duration wait = absl::Seconds(wait_s);
  absl::Status s = absl::ResourceExhaustedError(absl::StrFormat(
      "submit rate limit: at most %g tasks/s (burst %g) per client; retry in "
      "%.3fs",
      options_.rate, options_.burst, wait_s));
  google::protobuf::Duration d;
  const int64_t ns = absl::ToInt64Nanoseconds(wait);
  d.set_seconds(ns / 1000000000);
  d.set_nanos(static_cast<int32_t>(ns % 1000000000));
  // RetryInfo { Duration retry_delay = 1; }
  std::string info;
  {
    google::protobuf::io::StringOutputStream raw(&info);
    google::protobuf::io::CodedOutputStream out(&raw);
    const std::string dur = d.SerializeAsString();
    out.WriteTag((1 << 3) | 2);
    out.WriteVarint32(static_cast<uint32_t>(dur.size()));
    out.WriteString(dur);
  }
  s.SetPayload(kRetryInfoUrl, absl::Cord(info));
  return s;
}

size_t SubmitRateLimiter::clients() {
  absl::MutexLock lock(&mu_);
  return buckets_.size();
}

std::string SubmitRateLimiter::ClientKey(
    const grpc::ServerContextBase& ctx) const {
  if (options_.by_token) {
    // Checked by the auth filter before the call got here.
    auto it = ctx.client_metadata().find("authorization");
    if (it != ctx.client_metadata().end()) {
      constexpr absl::string_view kBearer = "bearer ";
      absl::string_view v(it->second.data(), it->second.size());
      if (v.size() > kBearer.size()) v.remove_prefix(kBearer.size());
      return absl::StrCat(
          "token:", Sha256Hex(absl::StripAsciiWhitespace(v)).substr(0, 16));
    }
  }
  // "ipv4:127.0.0.1:5000", "ipv6:[::1]:5000", "unix:..."
  std::string peer = ctx.peer();
  const size_t colon = peer.rfind(':');
  if (absl::StartsWith(peer, "ipv") && colon != std::string::npos) {
    peer.resize(colon);
  }
  return peer;
}

grpc::Status RateLimitedGrpcStatus(const absl::Status& s) {
  const std::string message(s.message());
  const auto code = static_cast<grpc::StatusCode>(s.code());
  auto info = s.GetPayload(kRetryInfoUrl);
  if (!info.has_value()) return grpc::Status(code, message);
  // google.rpc.Status { int32 code = 1; string message = 2;
  //                     repeated google.protobuf.Any details = 3; }
  // Any { string type_url = 1; bytes value = 2; }
  std::string any;
  {
    google::protobuf::io::StringOutputStream raw(&any);
    google::protobuf::io::CodedOutputStream out(&raw);
    out.WriteTag((1 << 3) | 2);
    out.WriteVarint32(static_cast<uint32_t>(kRetryInfoUrl.size()));
    out.WriteRaw(kRetryInfoUrl.data(), static_cast<int>(kRetryInfoUrl.size()));
    const std::string value(*info);
    out.WriteTag((2 << 3) | 2);
    out.WriteVarint32(static_cast<uint32_t>(value.size()));
    out.WriteString(value);
  }
  std::string details;
  {
    google::protobuf::io::StringOutputStream raw(&details);
    google::protobuf::io::CodedOutputStream out(&raw);
    out.WriteTag((1 << 3) | 0);
    out.WriteVarint32(static_cast<uint32_t>(s.code()));
    out.WriteTag((2 << 3) | 2);
    out.WriteVarint32(static_cast<uint32_t>(message.size()));
    out.WriteString(message);
    out.WriteTag((3 << 3) | 2);
    out.WriteVarint32(static_cast<uint32_t>(any.size()));
    out.WriteString(any);
  }
  return grpc::Status(code, message, details);
}

}  // namespace forq::server
