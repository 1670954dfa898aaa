// Process-wide logging setup (spdlog). Use spdlog::info(...) etc. after
// InitLogging. Never log between fork() and the worker loop.
#ifndef FORQ_COMMON_LOGGING_H_
#define FORQ_COMMON_LOGGING_H_

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace forq {

// Sets the default logger to stderr with `level` (trace, debug, info, warn,
// error, off) and a compact pattern that names the component. Returns
// InvalidArgument for an unknown level.
absl::Status InitLogging(absl::string_view component, absl::string_view level);

}  // namespace forq

#endif  // FORQ_COMMON_LOGGING_H_
