// forq::Executor: concurrent.futures.ProcessPoolExecutor over a forqd. Work
// runs on the server's forked worker pool; the executor only submits, tracks
// what it submitted, and waits for it on Shutdown.
//
//   forq::Executor ex(*client);
//   absl::StatusOr<forq::TaskFuture> f = ex.Submit("primes", "100000");
//   for (const forq::MapItem& r : ex.Map("sha256", inputs)) ...
//   ex.Shutdown();  // also done by the destructor
#ifndef FORQ_CLIENT_EXECUTOR_H_
#define FORQ_CLIENT_EXECUTOR_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

#include "forq/client.h"
#include "forq/map.h"

namespace forq {

namespace client_internal {
class TaskTracker;
}  // namespace client_internal

// Defaults applied to everything an Executor (or Pool) submits; zero values
// take the server defaults.
struct ExecutorOptions {
  std::string queue;
  int priority = 0;
  int max_attempts = 0;
  // Hard timeout per attempt of each task.
  absl::Duration timeout = absl::ZeroDuration();
  // In-flight window of Map streams (0 = kDefaultMapWindow).
  int map_window = 0;
};

// Thread-safe: Submit, Map and Shutdown may be called from any thread. The
// Client must outlive the Executor and every future and stream it returned.
//
// The executor remembers the id of every task it submitted until a
// Shutdown(wait=true) has seen it finish (a few dozen bytes per task).
class Executor {
 public:
  explicit Executor(Client& client, ExecutorOptions options = {});
  // Shutdown(/*wait=*/true), like leaving a `with ProcessPoolExecutor()`
  // block: blocks until everything submitted has finished.
  ~Executor();
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  // Submits one task (executor.submit). Unavailable after Shutdown; other
  // errors are the server's (e.g. InvalidArgument for an unknown kind).
  absl::StatusOr<TaskFuture> Submit(absl::string_view kind,
                                    absl::string_view payload);
  // Submits and waits in one call: the result or the task's error.
  // Unavailable after Shutdown.
  absl::StatusOr<std::string> Run(absl::string_view kind,
                                  absl::string_view payload);

  // executor.map: results in input order, inputs pulled lazily with a
  // bounded window (see forq/map.h). After Shutdown the stream is empty and
  // its status() is Unavailable.
  MapStream Map(absl::string_view kind, MapSource inputs);
  // Like Map, in completion order (as_completed over the map's futures).
  MapStream MapUnordered(absl::string_view kind, MapSource inputs);

  // Refuses further work. With `wait`, blocks until every task submitted
  // through this executor is terminal and every Map stream it opened has
  // ended (a stream ends when fully read or destroyed: do not wait on the
  // thread that still has to read one). With `cancel_futures`, cancels
  // every tracked task that is not yet finished first (a running task gets
  // a cancel request). May be called more than once. Returns the first RPC
  // error met while waiting or cancelling; task failures are not errors.
  absl::Status Shutdown(bool wait = true, bool cancel_futures = false);
  bool is_shutdown() const;

 private:
  friend class Pool;
  // The options of this executor's tasks.
  SubmitOptions TaskOptions() const;
  MapStream OpenMap(absl::string_view kind, MapSource inputs, bool ordered,
                    bool fail_fast);

  Client& client_;
  const ExecutorOptions options_;
  // Shared with open MapStreams, which report their end to it.
  std::shared_ptr<client_internal::TaskTracker> tracker_;
  // False for the Executor inside a Pool (Pool's destructor does not wait).
  bool wait_on_destroy_ = true;
};

}  // namespace forq

#endif  // FORQ_CLIENT_EXECUTOR_H_
