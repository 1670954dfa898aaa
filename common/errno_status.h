// Conversion of errno values into absl::Status with a readable context.
#ifndef FORQ_COMMON_ERRNO_STATUS_H_
#define FORQ_COMMON_ERRNO_STATUS_H_

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace forq {

// Returns a Status whose code reflects `err` (ENOENT -> NotFound, EAGAIN ->
// Unavailable, ENOMEM/ENOSPC -> ResourceExhausted, EINVAL -> InvalidArgument,
// EACCES/EPERM -> PermissionDenied, otherwise Internal) and whose message is
// "<what>: <strerror>". Save errno before calling anything else.
absl::Status ErrnoToStatus(int err, absl::string_view what);

// The text of `err` ("No such file or directory"): strerror without its
// shared buffer, so any thread may call it.
std::string ErrnoText(int err);

}  // namespace forq

#endif  // FORQ_COMMON_ERRNO_STATUS_H_
