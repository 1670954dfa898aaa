#include "server/store/task_record.h"

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace forq::server::store_internal {

std::optional<int64_t> FinishedAtMicros(const v1::Task& task) {
  if (!task.has_finished_at()) {
    return std::nullopt;
  }
  return task.finished_at().seconds() * 1000000 +
         task.finished_at().nanos() / 1000;
}

std::optional<int64_t> ExpiresAtMicros(const v1::Task& task) {
  if (!IsTerminal(task.state())) {
    return std::nullopt;
  }
  std::optional<int64_t> finished = FinishedAtMicros(task);
  if (!finished.has_value()) {
    return std::nullopt;
  }
  const int64_t ttl_us =
      task.result_ttl().seconds() * 1000000 + task.result_ttl().nanos() / 1000;
  if (ttl_us <= 0) {
    return std::nullopt;
  }
  return *finished + ttl_us;
}

int EffectivePageSize(int requested) {
  if (requested <= 0) {
    return kDefaultPageSize;
  }
  return requested > kMaxPageSize ? kMaxPageSize : requested;
}

std::string EncodePageToken(absl::string_view last_id) {
  return absl::WebSafeBase64Escape(last_id);
}

absl::StatusOr<std::string> DecodePageToken(absl::string_view token) {
  std::string id;
  if (token.empty()) {
    return id;
  }
  if (!absl::WebSafeBase64Unescape(token, &id) || id.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("malformed page_token \"", token, "\""));
  }
  return id;
}

}  // namespace forq::server::store_internal
