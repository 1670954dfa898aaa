// libforq: the C++ client of a forqd server. Submit tasks and get futures,
// wait, cancel, list, and inspect the worker pool. Errors are absl::Status
// with the same codes the server sent (gRPC codes map 1:1).
//
//   auto client = forq::Client::Connect({.address = "127.0.0.1:50051"});
//   auto fut = (*client)->Submit("primes", "1000000");
//   absl::StatusOr<std::string> result = fut->Get();
#ifndef FORQ_CLIENT_CLIENT_H_
#define FORQ_CLIENT_CLIENT_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

#include "forq/map.h"
#include "forq/v1/pool.pb.h"
#include "forq/v1/task.pb.h"
#include "forq/v1/task_state.h"

namespace grpc {
class Channel;
class Status;
}  // namespace grpc

namespace forq {

struct ClientOptions {
  // host:port of forqd's gRPC endpoint.
  std::string address = "127.0.0.1:50051";
  // Deadline of unary calls (Wait adds its own timeout on top).
  absl::Duration rpc_timeout = absl::Seconds(30);
  // How long Connect waits for the channel to become ready; 0 = do not wait.
  absl::Duration connect_timeout = absl::Seconds(5);
  // true: Connect keeps trying through failed connection attempts (gRPC's
  // reconnect back-off) for up to connect_timeout: a forqd still starting,
  // or an attempt that failed once under load, is waited for. false (the
  // forq CLI): a failed attempt (refused, unresolvable, TLS mismatch) ends
  // the wait at once with its reason; only a forqd that accepts but is
  // slow is waited for.
  bool wait_for_server = true;
  // true: futures wait on one WaitStream call per Client (ids go out in
  // batches, terminal tasks come back in batches: O(1) RPCs for N
  // futures). false: one Wait RPC per TaskFuture::Wait (forqd without
  // WaitStream).
  bool wait_stream = true;
  // Bearer token sent with every call (forqd --auth_tokens_file).
  std::string token;
  // TLS: on when `tls` is set or any file below is given. ca_file holds the
  // PEM roots that verify forqd (empty: the system's roots); cert_file and
  // key_file are a client certificate for forqd --tls_client_ca.
  bool tls = false;
  std::string ca_file;
  std::string cert_file;
  std::string key_file;
  // Name checked against forqd's certificate instead of the address's host.
  std::string tls_server_name;
};

// Per-task options of Submit; zero values take the server defaults.
struct SubmitOptions {
  std::string queue;
  int priority = 0;
  int max_attempts = 0;
  absl::Duration timeout = absl::ZeroDuration();
  absl::Duration delay = absl::ZeroDuration();
  std::string idempotency_key;
  std::map<std::string, std::string> labels;
};

// The TaskSpec that Submit(kind, payload, options) stores.
v1::TaskSpec MakeTaskSpec(absl::string_view kind, absl::string_view payload,
                          const SubmitOptions& options = {});

// True for SUCCEEDED, FAILED, DEAD and CANCELLED (forqd uses the same
// definition).
using v1::IsTerminal;
// "QUEUED", "SUCCEEDED", ...
absl::string_view StateName(v1::TaskState state);
// Parses a state name, case-insensitive ("dead", "DEAD").
absl::StatusOr<v1::TaskState> ParseState(absl::string_view name);
// Converts a terminal task into its outcome: the result for SUCCEEDED, an
// error carrying the task's error code and message otherwise.
absl::StatusOr<std::string> TaskResult(const v1::Task& task);
// Maps a gRPC status to absl::Status (same code and message).
absl::Status FromGrpcStatus(const grpc::Status& status);

class Client;
class PendingBatch;

namespace client_internal {
struct PendingBatchState;
class WaitMux;
class WaitRef;
}  // namespace client_internal

// Handle of one submitted task (like multiprocessing's AsyncResult).
// Thread-safe; cheap to copy. The Client must outlive it.
//
// With ClientOptions::wait_stream (the default) the first Wait()/Get() of
// any future sends the ids of every future of the Client not yet sent, in
// one message on the Client's stream: the others' results then arrive
// without a call of their own, and each is kept until the last copy of its
// future is destroyed. Until a stream is needed (a future waited for while
// no other is pending, as in Submit then Get one at a time), a wait is one
// Wait call and no stream is opened: see docs/client.md, "Waiting".
class TaskFuture {
 public:
  TaskFuture(Client* client, v1::Task task, bool existing)
      : client_(client), task_(std::move(task)), existing_(existing) {}

  const std::string& id() const { return task_.id(); }
  // The task as returned by Submit. For SubmitBatchAsync and SubmitMany,
  // a task not finished then carries only its id, queue, kind and state.
  const v1::Task& submitted() const { return task_; }
  // True when the idempotency key matched an earlier task.
  bool existing() const { return existing_; }

  // Blocks until the task is terminal; returns the final task.
  absl::StatusOr<v1::Task> Wait() const;
  // Blocks at most `timeout`; DeadlineExceeded if still unfinished.
  absl::StatusOr<v1::Task> WaitFor(absl::Duration timeout) const;
  // Waits, then returns the result or the task's error (AsyncResult.get()).
  absl::StatusOr<std::string> Get() const;
  absl::StatusOr<std::string> Get(absl::Duration timeout) const;
  // True when terminal now (no RPC when the result has already arrived on
  // the wait stream, else one Get RPC).
  absl::StatusOr<bool> Ready() const;
  absl::StatusOr<v1::Task> Cancel() const;

 private:
  friend class Client;
  TaskFuture(Client* client, v1::Task task, bool existing,
             std::shared_ptr<client_internal::WaitRef> ref)
      : client_(client),
        task_(std::move(task)),
        existing_(existing),
        ref_(std::move(ref)) {}

  Client* client_;
  v1::Task task_;
  bool existing_;
  // Keeps the streamed result until the last copy is gone (may be null).
  std::shared_ptr<client_internal::WaitRef> ref_;
};

// A SubmitBatch in flight (Client::SubmitBatchAsync). Move-only; the
// Client must outlive it. Dropping it (destroyed or assigned over) without
// Wait blocks until forqd answered (at most the Client's rpc_timeout), so
// no call outlives the Client; the tasks are then stored (or not) as forqd
// decided, and nothing waits for them.
class PendingBatch {
 public:
  PendingBatch(PendingBatch&&) = default;
  PendingBatch& operator=(PendingBatch&& other) noexcept;
  ~PendingBatch();

  // Blocks until forqd answered; the futures of the stored tasks, or
  // SubmitBatch's error. Call at most once.
  absl::StatusOr<std::vector<TaskFuture>> Wait();

 private:
  friend class Client;
  PendingBatch(Client* client,
               std::shared_ptr<client_internal::PendingBatchState> state);
  // Blocks until the call in flight (if any) has its answer.
  void AwaitAnswer();

  Client* client_;
  std::shared_ptr<client_internal::PendingBatchState> state_;
};

// A connection to one forqd. Thread-safe; share one per process.
class Client {
 public:
  // Connects (and, with connect_timeout > 0, waits until the channel is
  // ready): Unavailable "cannot connect to forqd at ADDR within T" if it is
  // not ready in time. Without wait_for_server, Unavailable "cannot reach
  // forqd at ADDR (REASON)" as soon as a connection attempt fails, e.g.
  // REASON "connection refused" when nothing listens.
  static absl::StatusOr<std::unique_ptr<Client>> Connect(ClientOptions options);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Stores a task; the returned future waits for it.
  absl::StatusOr<TaskFuture> Submit(absl::string_view kind,
                                    absl::string_view payload,
                                    const SubmitOptions& options = {});
  absl::StatusOr<TaskFuture> Submit(const v1::TaskSpec& spec);
  // Submits and waits in one call (pool.apply, or apply_async().get() in
  // one round trip): the terminal task.
  absl::StatusOr<v1::Task> Run(const v1::TaskSpec& spec);
  // Submits and waits at most `wait` in one call: the answer's task as it
  // stands then, `done` when it is terminal. A task that finishes within
  // the wait is stored once, finished.
  absl::StatusOr<v1::SubmitResponse> SubmitAndWait(const v1::TaskSpec& spec,
                                                   absl::Duration wait);
  // Run, then the result or the task's error (as TaskFuture::Get).
  absl::StatusOr<std::string> Apply(absl::string_view kind,
                                    absl::string_view payload,
                                    const SubmitOptions& options = {});
  // Stores all tasks or none.
  absl::StatusOr<std::vector<TaskFuture>> SubmitBatch(
      const std::vector<v1::TaskSpec>& specs);
  // SubmitBatch without waiting for forqd's answer (apply_async for a
  // batch): returns at once; PendingBatch::Wait gives SubmitBatch's result.
  // Several batches may be in flight on one Client, so a producer's next
  // batch travels while forqd stores the previous one. The acknowledgement
  // keeps SubmitBatch's meaning (all stored, or none).
  PendingBatch SubmitBatchAsync(const std::vector<v1::TaskSpec>& specs);
  // Many tasks, as pool.map_async submits chunks: SubmitBatchAsync of
  // `batch` specs at a time with at most `in_flight` batches unanswered
  // (with in_flight 1, blocking SubmitBatch calls, one after the other).
  // One future per spec, in order. On the first refused batch it stops
  // sending, awaits the batches still in flight and returns that error
  // (batches answered OK, before or in flight, stay submitted).
  struct ManyOptions {
    size_t batch = 100;
    size_t in_flight = 8;
  };
  absl::StatusOr<std::vector<TaskFuture>> SubmitMany(
      const std::vector<v1::TaskSpec>& specs, const ManyOptions& options);
  absl::StatusOr<std::vector<TaskFuture>> SubmitMany(
      const std::vector<v1::TaskSpec>& specs) {
    return SubmitMany(specs, ManyOptions());
  }

  // imap: submits each input as a task of `kind` (lazily, at most
  // options.window in flight) and yields results in input order. See
  // forq/map.h for the range, error and threading contracts.
  MapStream Map(absl::string_view kind, MapSource inputs,
                const MapOptions& options = {});
  // imap_unordered: like Map, but yields results as tasks complete.
  MapStream MapUnordered(absl::string_view kind, MapSource inputs,
                         const MapOptions& options = {});

  absl::StatusOr<v1::Task> Get(absl::string_view id);
  // Long poll: returns when the task is terminal (done = true) or after
  // `timeout` (done = false). Waits longer than the server's cap are split
  // into several calls.
  absl::StatusOr<v1::WaitTaskResponse> Wait(absl::string_view id,
                                            absl::Duration timeout);
  // Waits until every task in `ids` is terminal and returns them in the
  // order of `ids`. With wait_stream, all ids go out in one message on the
  // Client's stream (else one Wait RPC per id). The first error ends the
  // wait: NotFound for an unknown id, Unavailable when the connection broke,
  // DeadlineExceeded after `timeout`.
  absl::StatusOr<std::vector<v1::Task>> WaitAll(
      const std::vector<std::string>& ids,
      absl::Duration timeout = absl::InfiniteDuration());
  absl::StatusOr<v1::Task> Cancel(absl::string_view id);
  absl::StatusOr<v1::Task> Retry(absl::string_view id);
  absl::StatusOr<v1::ListTasksResponse> List(
      const v1::ListTasksRequest& request);

  absl::StatusOr<v1::PoolStatus> GetPool();
  // Stops dispatch and waits up to `timeout` for running tasks.
  absl::StatusOr<v1::DrainResponse> Drain(absl::Duration timeout);
  absl::StatusOr<v1::PoolStatus> Resume();

  const ClientOptions& options() const { return options_; }
  // The underlying channel, for other services (Manager, health).
  std::shared_ptr<grpc::Channel> channel() const { return channel_; }

 private:
  friend class TaskFuture;
  friend class PendingBatch;
  struct Stubs;
  Client(ClientOptions options, std::shared_ptr<grpc::Channel> channel);
  // Waits for one task until `deadline` (the stream, or Wait RPCs: always
  // without a stream, and for a lone wait before any stream was opened).
  absl::StatusOr<v1::Task> AwaitTask(const std::string& id,
                                     absl::Time deadline);
  // Wait RPCs until the task is terminal or `deadline` passes.
  absl::StatusOr<v1::Task> AwaitWithRpcs(const std::string& id,
                                         absl::Time deadline);
  // The future of a task just submitted (tracked on the stream).
  std::vector<TaskFuture> MakeFutures(std::vector<v1::Task> tasks,
                                      const std::vector<bool>& existing);
  // The futures of a SubmitBatch answer (its tasks are moved out).
  std::vector<TaskFuture> FuturesOf(v1::SubmitBatchResponse& resp);
  // SubmitBatch and SubmitBatchAsync of a slice of specs: one copy of
  // each, into the request. `brief` as in SubmitBatchRequest.
  absl::StatusOr<std::vector<TaskFuture>> SubmitSlice(
      absl::Span<const v1::TaskSpec> specs, bool brief);
  PendingBatch SubmitSliceAsync(absl::Span<const v1::TaskSpec> specs);
  // SubmitMany with one batch in flight.
  absl::StatusOr<std::vector<TaskFuture>> SubmitOneAtATime(
      absl::Span<const v1::TaskSpec> all, size_t batch);

  ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<Stubs> stubs_;
  // Null without options_.wait_stream.
  std::shared_ptr<client_internal::WaitMux> waits_;
};

}  // namespace forq

#endif  // FORQ_CLIENT_CLIENT_H_
