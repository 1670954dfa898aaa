#include "worker/builtins.h"

#include <signal.h>
#include <stdlib.h>

#include <cmath>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "openssl/sha.h"

#include "common/status_macros.h"
#include "worker/mp_handlers.h"

namespace forq::worker {
namespace {

absl::StatusOr<int64_t> ParseInt(absl::string_view payload,
                                 absl::string_view what) {
  int64_t v = 0;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(payload), &v) || v < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": payload must be a non-negative integer, got '",
                     payload.substr(0, 64), "'"));
  }
  return v;
}

absl::Status Echo(TaskContext&, absl::string_view payload, std::string* out) {
  out->assign(payload.data(), payload.size());
  return absl::OkStatus();
}

absl::Status Sleep(TaskContext& ctx, absl::string_view payload,
                   std::string* out) {
  FORQ_ASSIGN_OR_RETURN(int64_t ms, ParseInt(payload, "sleep"));
  const absl::Time end = absl::Now() + absl::Milliseconds(ms);
  const absl::Time start = absl::Now();
  absl::Time last_progress = start;
  while (true) {
    absl::Time now = absl::Now();
    if (now >= end) break;
    if (ctx.cancelled()) return absl::CancelledError("sleep cancelled");
    if (now - last_progress >= absl::Milliseconds(200)) {
      ctx.Progress(absl::FDivDuration(now - start, end - start), "sleeping");
      last_progress = now;
    }
    absl::SleepFor(std::min(end - now, absl::Milliseconds(10)));
  }
  out->assign(payload.data(), payload.size());
  return absl::OkStatus();
}

absl::Status Sha256(TaskContext& ctx, absl::string_view payload,
                    std::string* out) {
  int64_t rounds = 1;
  absl::string_view data = payload;
  size_t colon = payload.find(':');
  if (colon != absl::string_view::npos &&
      absl::SimpleAtoi(payload.substr(0, colon), &rounds)) {
    data = payload.substr(colon + 1);
    if (rounds < 1) return absl::InvalidArgumentError("sha256: rounds < 1");
  } else {
    rounds = 1;
  }
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(),
         digest);
  for (int64_t i = 1; i < rounds; ++i) {
    if ((i & 0xffff) == 0 && ctx.cancelled()) {
      return absl::CancelledError("sha256 cancelled");
    }
    SHA256(digest, sizeof(digest), digest);
  }
  *out = absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(digest), sizeof(digest)));
  return absl::OkStatus();
}

absl::Status Primes(TaskContext& ctx, absl::string_view payload,
                    std::string* out) {
  FORQ_ASSIGN_OR_RETURN(int64_t n, ParseInt(payload, "primes"));
  if (n > 2'000'000'000) {
    return absl::InvalidArgumentError("primes: n must be <= 2000000000");
  }
  // Trial division on purpose: the point is predictable CPU work.
  int64_t count = 0;
  for (int64_t i = 2; i <= n; ++i) {
    if ((i & 0x3fff) == 0) {
      if (ctx.cancelled()) return absl::CancelledError("primes cancelled");
      if ((i & 0xfffff) == 0) {
        ctx.Progress(static_cast<double>(i) / n, "counting");
      }
    }
    bool prime = true;
    for (int64_t d = 2; d * d <= i; ++d) {
      if (i % d == 0) {
        prime = false;
        break;
      }
    }
    count += prime;
  }
  *out = absl::StrCat(count);
  return absl::OkStatus();
}

absl::Status Fail(TaskContext&, absl::string_view payload, std::string*) {
  return absl::FailedPreconditionError(
      payload.empty() ? std::string("task failed") : std::string(payload));
}

absl::Status Flaky(TaskContext& ctx, absl::string_view payload,
                   std::string* out) {
  FORQ_ASSIGN_OR_RETURN(int64_t k, ParseInt(payload, "flaky"));
  if (ctx.attempt() < k) {
    return absl::UnavailableError(
        absl::StrCat("flaky: attempt ", ctx.attempt(), " of ", k, " fails"));
  }
  *out = absl::StrCat("ok on attempt ", ctx.attempt());
  return absl::OkStatus();
}

absl::Status Crash(TaskContext&, absl::string_view, std::string*) { abort(); }

absl::Status Hang(TaskContext& ctx, absl::string_view payload, std::string*) {
  signal(SIGTERM, SIG_IGN);
  // "ignore-cancel" models a handler that never checks the flag, so only
  // the kill after the cancel grace period stops it.
  const bool ignore_cancel = payload == "ignore-cancel";
  while (ignore_cancel || !ctx.cancelled()) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  return absl::CancelledError("hang cancelled");
}

}  // namespace

absl::Status RegisterBuiltins(HandlerRegistry& registry) {
  FORQ_RETURN_IF_ERROR(registry.Register("echo", Echo));
  FORQ_RETURN_IF_ERROR(registry.Register("sleep", Sleep));
  FORQ_RETURN_IF_ERROR(registry.Register("sha256", Sha256));
  FORQ_RETURN_IF_ERROR(registry.Register("primes", Primes));
  FORQ_RETURN_IF_ERROR(registry.Register("fail", Fail));
  FORQ_RETURN_IF_ERROR(registry.Register("flaky", Flaky));
  FORQ_RETURN_IF_ERROR(registry.Register("crash", Crash));
  FORQ_RETURN_IF_ERROR(registry.Register("hang", Hang));
  FORQ_RETURN_IF_ERROR(RegisterMpHandlers(registry));
  return absl::OkStatus();
}

}  // namespace forq::worker
