// Cluster mode: several forqd nodes share one PostgreSQL store and act as
// one queue. A node does not hold the queue in memory; it claims work from
// the shared store (WorkSource) when its workers are idle, keeps the
// claimed attempts alive with leases, and learns from the store when an
// attempt it runs is no longer its own. docs/storage.md, "Cluster mode".
#ifndef FORQ_SERVER_STORE_CLUSTER_H_
#define FORQ_SERVER_STORE_CLUSTER_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

#include "forq/v1/task.pb.h"

namespace forq::server {

struct ClusterOptions {
  // False: single-node store (the default; one forqd per database schema).
  bool enabled = false;
  // This node's name; empty = hostname-pid-starttime.
  std::string node_id;
  // How long a claimed attempt stays this node's without a heartbeat. The
  // heartbeat runs every lease/3; a node that cannot reach the database for
  // lease/2 fences itself (kills its attempts, stops claiming).
  absl::Duration lease = absl::Seconds(10);
  // Fallback poll for claimable work and for finished tasks that remote
  // waiters wait for, when a notification is missed.
  absl::Duration poll_interval = absl::Milliseconds(100);
  // Backoff of an attempt whose lease expired (as the scheduler's retry
  // backoff: base * 2^(attempt-1), capped, +-25% jitter).
  absl::Duration backoff_base = absl::Seconds(1);
  absl::Duration backoff_max = absl::Minutes(5);
  // False: no upkeep thread (heartbeat, reaper, notifications); tests call
  // the store's Heartbeat() and ReapExpired() themselves.
  bool background = true;
};

// An attempt of a task run by this node.
struct AttemptRef {
  std::string task_id;
  int attempt = 0;
};

// Where the scheduler of a cluster node gets its tasks. Thread-safe.
// Callbacks run on the source's own threads, never while the scheduler
// calls into the source; they must not block for long.
class WorkSource {
 public:
  struct Callbacks {
    // Claimable work may exist (a task was inserted or re-queued somewhere,
    // or the poll interval passed).
    std::function<void()> wake;
    // These attempts are not this node's any more (lease lost, reclaimed,
    // or the node fenced itself): stop them and never announce their
    // outcome.
    std::function<void(const std::vector<AttemptRef>&)> lost;
    // A write of these attempts' outcomes was refused by the attempt fence
    // (a newer attempt owns the task). Runs before the write's callback.
    std::function<void(const std::vector<AttemptRef>&)> fenced;
    // These tasks reached a terminal state (on any node): local waiters of
    // tasks this node does not run may read them now.
    std::function<void(const std::vector<std::string>&)> finished;
    // A cancel was requested (through another node) for these attempts,
    // which the database holds as this node's: stop them as a local
    // Cancel would. May repeat for the same attempt.
    std::function<void(const std::vector<AttemptRef>&)> cancel;
    // Task events from other nodes (TaskEvents of tasks this node's
    // watchers asked for with SetWatched; see there).
    std::function<void(const std::vector<v1::TaskEvent>&)> events;
  };

  // Outcome of CancelTask.
  struct CancelResult {
    // The task as stored after the call.
    v1::Task task;
    // It was QUEUED in the shared store and is CANCELLED now (durable).
    bool cancelled = false;
    // It is RUNNING (claimed by some node): its cancel_requested is set
    // durably and the owner node was told to stop the attempt.
    bool requested = false;
  };

  virtual ~WorkSource() = default;

  // Starts the heartbeat, reaper and notification threads. `kinds`: the
  // task kinds this node's workers run (empty: any). Nodes may run
  // different handlers: the node claims only these, and registers them so
  // that other nodes accept tasks of them for the shared queue
  // (OtherNodeRuns).
  virtual absl::Status StartCluster(Callbacks callbacks,
                                    std::vector<std::string> kinds) = 0;
  // Stops them; running attempts keep their leases until they expire.
  virtual void StopCluster() = 0;
  // Claims up to `n` claimable tasks (priority, then FIFO; not_before on
  // the database clock) for this node: they are RUNNING in the store with
  // the attempt counted and a lease. The returned tasks carry the new
  // attempt number; only tasks of the kinds given to StartCluster. Empty
  // when nothing is claimable or the node is fenced. Blocks on a database
  // round trip.
  virtual absl::StatusOr<std::vector<v1::Task>> Claim(int n) = 0;
  // Stores new tasks as Store::Insert does (all or none; none may carry an
  // idempotency key), those with own[i] set already claimed by this node:
  // RUNNING in the store at their next attempt with a lease, as Claim
  // leaves them, so a node with idle workers runs what it was given
  // without a claim statement. Returns at once which tasks are this
  // node's (none while it is fenced). The node may start them before
  // `done` runs (their writes are queued behind the insert) and must drop
  // them if the insert fails. `done` runs once the insert is durable, with
  // the tasks as given.
  virtual std::vector<bool> InsertOwned(
      std::vector<v1::Task> tasks, std::vector<bool> own,
      std::function<void(absl::StatusOr<std::vector<v1::Task>>)> done) = 0;
  // Cancels a task this node does not hold, in one transaction: a QUEUED
  // one becomes CANCELLED; a RUNNING one gets cancel_requested and its
  // owner node is notified (its heartbeat also sees the flag, so a lost
  // notification delays the stop by at most lease/3); a terminal one is
  // left alone. NotFound for an unknown id. Blocks.
  virtual absl::StatusOr<CancelResult> CancelTask(const std::string& id) = 0;
  // Watches across nodes. `key` is "t:<task id>" or "q:<queue>" ("q:*" =
  // every queue). While a key is watched here (count > 0), every node
  // sends this node the events of matching tasks it runs (Callbacks
  // events; not those of this node's own tasks). An event may be missed
  // in the first milliseconds of a watch, before the other nodes heard of
  // it.
  virtual void SetWatched(const std::string& key, bool watched) = 0;
  // Whether some other node watches events of this task (cheap; called for
  // every event), and sends one to them (asynchronously, in order).
  virtual bool Watched(const v1::Task& task) = 0;
  virtual void PublishEvent(const v1::TaskEvent& event) = 0;
  // Of the tasks `ids`, those that ended (a terminal state, read in full)
  // and those not stored, in any order, in one database round trip. Tasks
  // still QUEUED or RUNNING are left out, so a check of many waited tasks
  // costs the node only what changed. Blocks.
  struct Ended {
    std::vector<v1::Task> terminal;
    std::vector<std::string> unknown;
  };
  virtual absl::StatusOr<Ended> ReadEnded(
      const std::vector<std::string>& ids) = 0;
  virtual const std::string& node_id() const = 0;
  virtual int64_t incarnation() const = 0;
  // While no other node of the cluster is live (none heart-beat within a
  // lease): how long this node may hold tasks it takes for itself before a
  // worker starts them (nobody else would run them sooner). Zero while
  // other nodes are live, or may be: then it takes only what its workers
  // start within milliseconds and leaves the rest to the shared queue.
  virtual absl::Duration HoldAlone() const { return absl::ZeroDuration(); }
  // Whether another live node registered `kind`, as of this node's last
  // count of the nodes (at each heartbeat, and at once when a node
  // announces itself). Such a task is accepted here and left to the
  // shared queue.
  virtual bool OtherNodeRuns(absl::string_view /*kind*/) { return false; }
};

}  // namespace forq::server

#endif  // FORQ_SERVER_STORE_CLUSTER_H_
