// forq::Pool: multiprocessing.Pool's names (apply_async, map, imap,
// imap_unordered, close, join, terminate) for people coming from Python. A
// thin facade over forq::Executor; the worker processes live in forqd.
//
//   forq::Pool pool(*client);
//   auto f = pool.ApplyAsync("primes", "100000");   // AsyncResult
//   for (const forq::MapItem& r : pool.Imap("sleep", {"30", "10"})) ...
//   pool.Close();
//   pool.Join();
#ifndef FORQ_CLIENT_POOL_H_
#define FORQ_CLIENT_POOL_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

#include "forq/client.h"
#include "forq/executor.h"
#include "forq/map.h"

namespace forq {

using PoolOptions = ExecutorOptions;

// Thread-safe, like Executor. The Client must outlive the Pool and every
// future and stream it returned. Unlike Executor, destroying a Pool does not
// wait: tasks keep running on the server (call Close and Join to wait, or
// Terminate to cancel).
class Pool {
 public:
  explicit Pool(Client& client, PoolOptions options = {});
  ~Pool();
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  // pool.apply_async: submits one task; the future's Get() is
  // AsyncResult.get(). Unavailable after Close.
  absl::StatusOr<TaskFuture> ApplyAsync(absl::string_view kind,
                                        absl::string_view payload);
  // pool.apply: submits and waits; the result or the task's error.
  absl::StatusOr<std::string> Apply(absl::string_view kind,
                                    absl::string_view payload);
  // pool.map: blocks until every input is done and returns the results in
  // input order. Stops at the first failed item (fail_fast) and returns its
  // error, prefixed with "item <index>: ".
  absl::StatusOr<std::vector<std::string>> Map(absl::string_view kind,
                                               MapSource inputs);
  // pool.imap / pool.imap_unordered: lazy result streams (forq/map.h).
  MapStream Imap(absl::string_view kind, MapSource inputs);
  MapStream ImapUnordered(absl::string_view kind, MapSource inputs);

  // pool.close: refuse more work; returns at once.
  void Close();
  // pool.join: waits for everything submitted through this Pool (tasks and
  // Map streams, see Executor::Shutdown). FailedPrecondition unless Close or
  // Terminate was called first, as in Python.
  absl::Status Join();
  // pool.terminate: refuses more work and cancels every unfinished task
  // submitted through this Pool. Does not wait.
  absl::Status Terminate();

 private:
  Executor executor_;
};

}  // namespace forq

#endif  // FORQ_CLIENT_POOL_H_
