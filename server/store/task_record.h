// Helpers shared by the Store implementations: when a finished task expires,
// and the opaque List page token. Internal to server/store/; other modules use
// store.h.
#ifndef FORQ_SERVER_STORE_TASK_RECORD_H_
#define FORQ_SERVER_STORE_TASK_RECORD_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

#include "forq/v1/task.pb.h"
#include "forq/v1/task_state.h"

namespace forq::server::store_internal {

// Largest and default List page sizes (ListQuery.page_size 0 -> default).
inline constexpr int kMaxPageSize = 1000;
inline constexpr int kDefaultPageSize = 100;

using v1::IsTerminal;

// Microseconds since the Unix epoch at which `task` may be purged, or
// nullopt if it never expires: the task is not terminal, has no
// finished_at, or has result_ttl == 0. A zero TTL in a stored record means
// "keep forever": the scheduler applies the server default TTL before it
// writes a finished task, so the store never guesses one.
std::optional<int64_t> ExpiresAtMicros(const v1::Task& task);

// finished_at in microseconds since the epoch, or nullopt when unset.
std::optional<int64_t> FinishedAtMicros(const v1::Task& task);

// Clamps a requested page size into [1, kMaxPageSize]; <= 0 -> default.
int EffectivePageSize(int requested);

// The page token is the web-safe base64 of the last id returned, so a
// client cannot mistake it for an id. Decoding "" yields "" (first page);
// a malformed token is InvalidArgument.
std::string EncodePageToken(absl::string_view last_id);
absl::StatusOr<std::string> DecodePageToken(absl::string_view token);

}  // namespace forq::server::store_internal

#endif  // FORQ_SERVER_STORE_TASK_RECORD_H_
