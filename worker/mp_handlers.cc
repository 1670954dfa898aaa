#include "worker/mp_handlers.h"

#include <algorithm>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

#include "common/status_macros.h"
#include "worker/manager_client.h"

namespace forq::worker {

absl::StatusOr<std::multimap<std::string, std::string>> ParseMpPayload(
    absl::string_view payload,
    std::initializer_list<absl::string_view> allowed) {
  std::multimap<std::string, std::string> out;
  for (absl::string_view word :
       absl::StrSplit(payload, absl::ByAnyChar(" \t\n\r"), absl::SkipEmpty())) {
    size_t eq = word.find('=');
    if (eq == absl::string_view::npos || eq == 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "payload word '", word.substr(0, 64), "' is not key=value"));
    }
    absl::string_view key = word.substr(0, eq);
    if (std::find(allowed.begin(), allowed.end(), key) == allowed.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown payload key '", key.substr(0, 64), "'"));
    }
    out.emplace(std::string(key), std::string(word.substr(eq + 1)));
  }
  return out;
}

namespace {

using Params = std::multimap<std::string, std::string>;

absl::StatusOr<std::string> One(const Params& p, absl::string_view key,
                                absl::string_view fallback = "",
                                bool required = true) {
  auto [lo, hi] = p.equal_range(std::string(key));
  if (lo == hi) {
    if (required && fallback.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("payload needs ", key, "=..."));
    }
    return std::string(fallback);
  }
  if (std::next(lo) != hi) {
    return absl::InvalidArgumentError(absl::StrCat("payload repeats ", key));
  }
  return lo->second;
}

absl::StatusOr<int64_t> Int(const Params& p, absl::string_view key,
                            int64_t fallback) {
  FORQ_ASSIGN_OR_RETURN(std::string text, One(p, key, "", false));
  if (text.empty()) return fallback;
  int64_t v = 0;
  if (!absl::SimpleAtoi(text, &v)) {
    return absl::InvalidArgumentError(absl::StrCat(
        key, " must be an integer, got '", text.substr(0, 32), "'"));
  }
  return v;
}

absl::Duration Timeout(int64_t ms) {
  return ms < 0 ? absl::InfiniteDuration() : absl::Milliseconds(ms);
}

absl::Status QueuePut(TaskContext& ctx, absl::string_view payload,
                      std::string* out) {
  FORQ_ASSIGN_OR_RETURN(
      Params p, ParseMpPayload(payload, {"queue", "item", "timeout_ms"}));
  FORQ_ASSIGN_OR_RETURN(std::string queue, One(p, "queue"));
  FORQ_ASSIGN_OR_RETURN(int64_t timeout_ms, Int(p, "timeout_ms", -1));
  auto [lo, hi] = p.equal_range("item");
  if (lo == hi) return absl::InvalidArgumentError("payload needs item=...");
  ManagerClient m(ctx);
  int n = 0;
  for (auto it = lo; it != hi; ++it, ++n) {
    FORQ_RETURN_IF_ERROR(m.QueuePut(queue, it->second, Timeout(timeout_ms)));
  }
  *out = absl::StrCat(n);
  return absl::OkStatus();
}

absl::Status QueueGet(TaskContext& ctx, absl::string_view payload,
                      std::string* out) {
  FORQ_ASSIGN_OR_RETURN(Params p,
                        ParseMpPayload(payload, {"queue", "timeout_ms"}));
  FORQ_ASSIGN_OR_RETURN(std::string queue, One(p, "queue"));
  FORQ_ASSIGN_OR_RETURN(int64_t timeout_ms, Int(p, "timeout_ms", -1));
  ManagerClient m(ctx);
  FORQ_ASSIGN_OR_RETURN(*out, m.QueueGet(queue, Timeout(timeout_ms)));
  return absl::OkStatus();
}

absl::Status Counter(TaskContext& ctx, absl::string_view payload,
                     std::string* out) {
  FORQ_ASSIGN_OR_RETURN(
      Params p, ParseMpPayload(payload, {"list", "lock", "delta", "n", "index",
                                         "nolock"}));
  FORQ_ASSIGN_OR_RETURN(std::string list, One(p, "list"));
  FORQ_ASSIGN_OR_RETURN(int64_t nolock, Int(p, "nolock", 0));
  FORQ_ASSIGN_OR_RETURN(std::string lock,
                        One(p, "lock", absl::StrCat(list, ".lock"), false));
  FORQ_ASSIGN_OR_RETURN(int64_t delta, Int(p, "delta", 1));
  FORQ_ASSIGN_OR_RETURN(int64_t n, Int(p, "n", 1));
  FORQ_ASSIGN_OR_RETURN(int64_t index, Int(p, "index", 0));
  if (n < 0 || n > 10'000'000) {
    return absl::InvalidArgumentError("n must be in 0..10000000");
  }
  ManagerClient m(ctx);
  std::string last;
  for (int64_t i = 0; i < n; ++i) {
    if (ctx.cancelled()) return absl::CancelledError("mp.counter cancelled");
    if (nolock == 0) FORQ_RETURN_IF_ERROR(m.LockAcquire(lock).status());
    // Deliberately a read then a write (not the atomic ListAdd): this is
    // the race the lock exists to prevent.
    absl::StatusOr<std::string> current = m.ListGet(list, index);
    if (absl::IsOutOfRange(current.status())) {
      return absl::FailedPreconditionError(absl::StrCat(
          "list '", list, "' has no item ", index, " (append 0 first)"));
    }
    FORQ_RETURN_IF_ERROR(current.status());
    int64_t v = 0;
    if (!current->empty() && !absl::SimpleAtoi(*current, &v)) {
      return absl::FailedPreconditionError(
          absl::StrCat("list '", list, "'[", index, "] is not an integer"));
    }
    last = absl::StrCat(v + delta);
    FORQ_RETURN_IF_ERROR(m.ListSet(list, index, last));
    if (nolock == 0) FORQ_RETURN_IF_ERROR(m.LockRelease(lock));
  }
  *out = last;
  return absl::OkStatus();
}

}  // namespace

absl::Status RegisterMpHandlers(HandlerRegistry& registry) {
  FORQ_RETURN_IF_ERROR(registry.Register("mp.queue_put", QueuePut));
  FORQ_RETURN_IF_ERROR(registry.Register("mp.queue_get", QueueGet));
  FORQ_RETURN_IF_ERROR(registry.Register("mp.counter", Counter));
  return absl::OkStatus();
}

}  // namespace forq::worker
