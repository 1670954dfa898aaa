// Multiplexes the waits of one Client's futures on a single WaitStream call:
// ids go out in batches, terminal tasks come back in batches, so waiting for
// N tasks costs O(1) RPCs instead of one Wait RPC per task. Not part of the
// installed API.
#ifndef FORQ_CLIENT_SRC_WAIT_MUX_H_
#define FORQ_CLIENT_SRC_WAIT_MUX_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/node_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

#include "common/mutex.h"
#include "forq/v1/task.grpc.pb.h"

namespace forq::client_internal {

class WaitMux;

// Keeps the answer of one tracked task until the last copy is destroyed
// (shared by the copies of a TaskFuture). Thread-safe.
class WaitRef {
 public:
  WaitRef(std::shared_ptr<WaitMux> mux, std::string id)
      : mux_(std::move(mux)), id_(std::move(id)) {}
  ~WaitRef();
  WaitRef(const WaitRef&) = delete;
  WaitRef& operator=(const WaitRef&) = delete;

 private:
  const std::shared_ptr<WaitMux> mux_;
  const std::string id_;
};

// Thread-safe. The stream is opened on first use and opened again after it
// broke; a break fails the waits in progress on it with its status
// (Unavailable when forqd went away) and nothing hangs. No lock is held
// across a gRPC call.
class WaitMux : public std::enable_shared_from_this<WaitMux> {
 public:
  explicit WaitMux(const std::shared_ptr<grpc::Channel>& channel);
  // Shutdown() must have returned.
  ~WaitMux();
  WaitMux(const WaitMux&) = delete;
  WaitMux& operator=(const WaitMux&) = delete;

  // Cancels the stream, fails waits in progress with Cancelled and waits
  // until gRPC has finished with every stream. Later calls fail at once.
  void Shutdown() ABSL_LOCKS_EXCLUDED(mu_);

  // Tracks `ids`: they go out together with the next Await's (one message
  // for every id queued so far, not one per id) and each answer is kept
  // until its WaitRef is destroyed.
  std::vector<std::shared_ptr<WaitRef>> Track(
      const std::vector<std::string>& ids) ABSL_LOCKS_EXCLUDED(mu_);

  // Blocks until task `id` is terminal, `deadline` passes (DeadlineExceeded)
  // or the wait fails (NotFound for an unknown id, Unavailable when the
  // stream broke).
  absl::StatusOr<v1::Task> Await(const std::string& id, absl::Time deadline)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Like Await for every id (sent together); the first error ends it.
  absl::StatusOr<std::vector<v1::Task>> AwaitAll(
      const std::vector<std::string>& ids, absl::Time deadline)
      ABSL_LOCKS_EXCLUDED(mu_);
  // True when the terminal task of a tracked id has arrived (no RPC).
  bool Arrived(const std::string& id) ABSL_LOCKS_EXCLUDED(mu_);

  // True when no stream was ever opened and `id` is the only wait there is
  // (nothing else queued or awaited): the caller should then wait with a
  // unary Wait RPC, and `id` leaves the queue. The first stream starts
  // gRPC's callback threads for the channel for good; from then on one of
  // them reads every blocking call's answer and hands it to the caller, a
  // thread hop per call. A client that waits for one task at a time
  // (Submit then Get, Apply) never pays it.
  bool TakeLoneWait(const std::string& id) ABSL_LOCKS_EXCLUDED(mu_);
  // Ends a wait TakeLoneWait gave out; `task` (null if the wait failed) is
  // the terminal task it brought, kept for a tracked id as if the stream
  // had answered.
  void EndLoneWait(const std::string& id, const v1::Task* task)
      ABSL_LOCKS_EXCLUDED(mu_);

 private:
  friend class WaitRef;
  class Stream;

  struct Entry {
    // WaitRefs alive and threads blocked in Await.
    int refs = 0;
    int waiters = 0;
    // Generation of the stream the id was sent on; 0 = not sent,
    // kQueued = in to_send_.
    uint64_t sent_on = 0;
    bool done = false;
    absl::StatusOr<v1::Task> answer;
  };
  static constexpr uint64_t kQueued = ~uint64_t{0};

  void Release(const std::string& id) ABSL_LOCKS_EXCLUDED(mu_);
  // Queues `id` for sending unless it was answered or is on its way.
  void QueueLocked(const std::string& id, Entry& e)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void MaybeEraseLocked(const std::string& id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sends what is queued, opening a stream if needed.
  void Flush() ABSL_LOCKS_EXCLUDED(mu_);
  // Waits for the ids' entries (waiters already counted) to be done.
  absl::Status WaitDoneLocked(const std::vector<std::string>& ids,
                              absl::Time deadline)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Stream callbacks.
  void OnAnswers(Stream* s, v1::WaitStreamResponse& resp)
      ABSL_LOCKS_EXCLUDED(mu_);
  void OnReadFailed(Stream* s) ABSL_LOCKS_EXCLUDED(mu_);
  void OnWriteDone(Stream* s, bool ok) ABSL_LOCKS_EXCLUDED(mu_);
  void OnStreamDone(Stream* s, const absl::Status& status)
      ABSL_LOCKS_EXCLUDED(mu_);

  const std::unique_ptr<v1::TaskService::Stub> stub_;
  Mutex mu_;
  CondVar cv_;
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
  absl::node_hash_map<std::string, Entry> entries_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> to_send_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> to_cancel_ ABSL_GUARDED_BY(mu_);
  // The stream new ids go to (nullptr: none, or it broke).
  Stream* current_ ABSL_GUARDED_BY(mu_) = nullptr;
  uint64_t next_gen_ ABSL_GUARDED_BY(mu_) = 1;
  // Counts stream breaks; a waiter whose id was reset by one fails.
  uint64_t breaks_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status last_break_ ABSL_GUARDED_BY(mu_);
  int live_streams_ ABSL_GUARDED_BY(mu_) = 0;
  // Waits given to unary Wait RPCs by TakeLoneWait and not ended yet.
  int lone_waits_ ABSL_GUARDED_BY(mu_) = 0;
  // Every stream ever opened; kept until destruction so a late TryCancel
  // never touches a freed call (a stream is opened again only after a break).
  std::vector<std::unique_ptr<Stream>> streams_ ABSL_GUARDED_BY(mu_);
};

}  // namespace forq::client_internal

#endif  // FORQ_CLIENT_SRC_WAIT_MUX_H_
