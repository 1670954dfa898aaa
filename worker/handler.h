// Task handlers: named C++ functions that workers run, the context they see,
// and the registry that maps a task kind to its handler.
#ifndef FORQ_WORKER_HANDLER_H_
#define FORQ_WORKER_HANDLER_H_

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace forq::worker {

// What a running handler can see and do. Implemented by the worker process;
// valid only for the duration of one handler call. Not thread-safe: use it
// from the handler's thread.
class TaskContext {
 public:
  virtual ~TaskContext() = default;

  virtual absl::string_view task_id() const = 0;
  // 1 for the first run, 2 for the first retry, ...
  virtual int attempt() const = 0;
  // When the attempt's hard timeout fires (absl::InfiniteFuture() if none).
  virtual absl::Time deadline() const = 0;
  // True once a cancel or soft timeout was requested; handlers that loop
  // should check it and return absl::CancelledError().
  virtual bool cancelled() const = 0;
  // Reports progress in [0, 1] with a short message; rate-limited by the
  // worker, cheap to call often.
  virtual void Progress(double fraction, absl::string_view message) = 0;
  // Sends `request` to forqd on the worker's side channel and blocks for the
  // reply (used by the Manager client). Returns Unavailable if forqd is gone
  // and Cancelled if the task was cancelled while waiting.
  virtual absl::StatusOr<std::string> Call(absl::string_view request) = 0;
};

// A handler reads `payload`, writes its output to `*result` and returns OK,
// or returns an error. Errors with a permanent code (INVALID_ARGUMENT,
// FAILED_PRECONDITION, NOT_FOUND, UNIMPLEMENTED, PERMISSION_DENIED,
// OUT_OF_RANGE, ALREADY_EXISTS) end the task as FAILED; any other code is
// retried while attempts remain.
using Handler = std::function<absl::Status(
    TaskContext& ctx, absl::string_view payload, std::string* result)>;

// Maps kinds to handlers. Filled before workers are forked, read-only after.
// Thread-compatible.
class HandlerRegistry {
 public:
  HandlerRegistry() = default;
  HandlerRegistry(const HandlerRegistry&) = delete;
  HandlerRegistry& operator=(const HandlerRegistry&) = delete;

  // Registers `handler` under `kind`. AlreadyExists if the kind is taken,
  // InvalidArgument for an empty kind.
  absl::Status Register(std::string kind, Handler handler);
  // nullptr if no handler is registered for `kind`.
  const Handler* Find(absl::string_view kind) const;
  // Registered kinds, sorted.
  std::vector<std::string> Kinds() const;

 private:
  std::map<std::string, Handler, std::less<>> handlers_;
};

// The C symbol a plugin .so exports; it registers its handlers and returns
// OK or an error. Plugins are loaded in the supervisor before any fork.
extern "C" {
typedef int (*ForqRegisterHandlersFn)(HandlerRegistry* registry);
}
inline constexpr char kPluginEntryPoint[] = "forq_register_handlers";

}  // namespace forq::worker

#endif  // FORQ_WORKER_HANDLER_H_
