// The scheduler: task state machine, ready queue (priority, FIFO within a
// priority), delays and retry backoff, dispatch to idle workers, completion
// fencing, waiters and watchers. Unfinished tasks live in memory; every state
// change is written to the Store, and terminal states are announced only
// after they are durable.
#ifndef FORQ_SERVER_SCHEDULER_SCHEDULER_H_
#define FORQ_SERVER_SCHEDULER_SCHEDULER_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/node_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

#include "common/clock.h"
#include "common/mutex.h"
#include "forq/v1/task.pb.h"
#include "server/metrics/metrics.h"
#include "server/scheduler/wait_registry.h"
#include "server/store/store.h"
#include "worker/pool.h"

namespace forq::server {

struct SchedulerOptions {
  // WaitIfFinishing holds Submit answers for tasks whose terminal write is
  // in flight (set by the server with --durability=none, where that write
  // is one group commit away; with fsync it would cost every such answer a
  // second fsync).
  bool answer_finished_submits = true;
  int default_max_attempts = 5;
  int max_max_attempts = 100;
  // Hard timeout of an attempt when the spec gives none.
  absl::Duration default_timeout = absl::Hours(1);
  absl::Duration default_result_ttl = absl::Hours(24);
  // Per queue, QUEUED tasks beyond this are refused (RESOURCE_EXHAUSTED).
  int64_t max_queued = 1'000'000;
  size_t max_payload_bytes = 1 << 20;
  size_t max_batch = 10'000;
  // Retry backoff: base * 2^(attempt-1), capped, with +-25% jitter.
  absl::Duration backoff_base = absl::Seconds(1);
  absl::Duration backoff_max = absl::Minutes(5);
  absl::Duration purge_interval = absl::Minutes(1);
  // Longest single Wait the server holds open.
  absl::Duration max_wait = absl::Minutes(5);
  // Events buffered per watcher before it is dropped as too slow.
  size_t max_watch_backlog = 10'000;
  // Finished tasks kept in memory (beyond the store) for Get and Wait, at
  // most this many and about this many bytes (payload, result and error
  // message, plus 512 per task), the oldest dropped first. A waiter that
  // comes after its task left reads the store.
  size_t recent_finished = 65536;
  size_t recent_finished_bytes = 64 << 20;
  // How often a terminal write that failed is tried again.
  absl::Duration finish_retry_interval = absl::Seconds(1);
  // Tasks submitted without a durable acknowledgement (Map inputs) are
  // written once, with their final state, if they finish within this; one
  // still unfinished after it is inserted as it stands.
  absl::Duration deferred_insert_limit = absl::Milliseconds(100);
  // Zero (the default): a stored task's RUNNING record is queued when its
  // attempt starts: at dispatch to an idle worker, or, for one sent behind
  // a running attempt, with the terminal records of the pool turn in which
  // it starts (not at all if it also ends in it; the store merges it with
  // the terminal record when both reach one group commit). So a crash of
  // forqd counts every running attempt, and none that only waited in a
  // worker's queue.
  // Above zero: it is written only when the attempt still runs after this,
  // so most short attempts write only their terminal record, but after a
  // crash an attempt younger than this is not counted (its row says
  // QUEUED; the task runs again all the same).
  absl::Duration running_write_delay = absl::ZeroDuration();
  // Time source for delays, backoffs, deadlines and timestamps; null = the
  // real clock. Must outlive the scheduler.
  Clock* clock = nullptr;
  // Cluster mode (the store's work_source()): queued tasks live in the
  // shared store, not in memory; idle workers are filled by claims. Null =
  // single node. Must outlive the scheduler.
  WorkSource* work_source = nullptr;
};

// Thread-safe. Callbacks passed in are run without the scheduler's lock held,
// on a store, pool or scheduler thread; they must not block.
class Scheduler {
 public:
  using SubmitDone =
      std::function<void(absl::StatusOr<std::vector<InsertResult>>)>;
  using TaskDone = std::function<void(absl::StatusOr<v1::Task>)>;
  // `terminal` is false when the wait timed out.
  using WaitDone = std::function<void(absl::StatusOr<v1::Task>, bool terminal)>;
  using EventFn = std::function<void(const v1::TaskEvent&)>;

  Scheduler(SchedulerOptions options, Store& store, worker::WorkerPool& pool,
            Metrics& metrics);
  // Shuts down, then waits until the store delivered the callbacks of the
  // writes this scheduler queued (they call into it).
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Recovers unfinished tasks from the store (RUNNING ones count as a lost
  // attempt), starts the pool callbacks and the scheduler thread.
  absl::Status Start();
  // Stops dispatching, waits up to `grace` for running tasks, then kills the
  // pool; tasks still running go back to QUEUED without an attempt penalty.
  // Pending waits end with Unavailable. Idempotent.
  void Shutdown(absl::Duration grace);

  const SchedulerOptions& options() const { return options_; }

  // Validates and stores tasks (all or none); `done` runs once they are
  // durable. InvalidArgument for bad specs (message names the field and
  // limit), ResourceExhausted when a queue is full, Unavailable when intake
  // is stopped.
  //
  // kDeferred is for submitters that acknowledge nothing before a task's
  // result (a Map stream hands out a task's id with its result): `done`
  // runs at once (InsertResult::task holds only the id), and each task is
  // written to the store
  // once, with its terminal state, when it finishes within
  // options().deferred_insert_limit (else it is inserted then, as it
  // stands). Until written, a task is in Get and Wait but not in List, and
  // a crash of forqd drops it. Single-node only; with idempotency keys or
  // in a cluster it acts as kDurable.
  enum class Ack { kDurable, kDeferred };
  void Submit(std::vector<v1::TaskSpec> specs, SubmitDone done,
              Ack ack = Ack::kDurable);

  // Takes the results of the tasks of SubmitForResults.
  class ResultSink {
   public:
    using Result = std::pair<uint64_t, absl::StatusOr<v1::Task>>;
    virtual ~ResultSink() = default;
    // Once per accepted task, without the scheduler's lock: (its tag, the
    // task once its terminal state is durable), or the reason it will have
    // no result (its insert failed, forqd is shutting down). Several
    // results may come in one call.
    virtual void OnResults(std::vector<Result> results) = 0;
  };
  // One id per spec, or why that spec was refused.
  using AcceptedFn =
      std::function<void(std::vector<absl::StatusOr<std::string>>)>;
  // For submitters that take each result as it comes (a Map stream): each
  // spec is checked on its own (a bad one fails alone, the others go on),
  // the tasks are submitted as with Ack::kDeferred, and spec i's task hands
  // its result to `sink` with tag `first_tag + i`, with no Wait to
  // register. `accepted` runs once, after the tasks are queued; a result
  // may reach the sink before it.
  void SubmitForResults(std::vector<v1::TaskSpec> specs,
                        std::shared_ptr<ResultSink> sink, uint64_t first_tag,
                        AcceptedFn accepted);
  // For an answer that hands out the id of an unfinished task submitted
  // with Ack::kDeferred: `done` runs once the task has a durable row (it is
  // inserted now if it has none). At once for a task forqd no longer holds.
  void Persist(absl::string_view id, std::function<void(absl::Status)> done);
  // The task as it is now. A RUNNING task carries the pid of the worker
  // running its current attempt (once a worker has taken it).
  absl::StatusOr<v1::Task> Get(absl::string_view id);
  // Calls `done` once: when the task is terminal (and durable), or after
  // `timeout` (at most options().max_wait) with its current state. Returns a
  // handle for CancelWait.
  uint64_t Wait(absl::string_view id, absl::Duration timeout, WaitDone done);
  // For a Submit answer (options().answer_finished_submits): when the
  // task's terminal state is reached and its write is in flight, registers
  // `done` as Wait does (it runs once that
  // write is durable, normally the next group commit, or after a second
  // with the task as it stands) and returns true, so the answer can carry
  // the result. Otherwise (also while the store refuses writes) false,
  // `done` untouched.
  bool WaitIfFinishing(absl::string_view id, WaitDone& done);
  // WaitIfFinishing for each of `ids` under one lock: registers
  // `make_done(i)` for each ids[i] it holds (make_done runs under the
  // scheduler's lock: it must only build the callback). Returns how many.
  size_t WaitIfFinishing(absl::Span<const absl::string_view> ids,
                         const std::function<WaitDone(size_t)>& make_done);
  // Drops a pending wait without calling it. False if it already fired.
  bool CancelWait(uint64_t handle);
  void Cancel(absl::string_view id, TaskDone done);
  // Cancels those of `ids` that are still queued on this node (never
  // started), with `why` as their error; started and finished tasks are
  // left alone. What Pool.terminate() does to the inputs of an abandoned
  // Map. Returns how many were cancelled.
  int CancelQueued(const std::vector<std::string>& ids, absl::string_view why);
  // Re-queues a DEAD, FAILED or CANCELLED task with fresh attempts.
  void Retry(absl::string_view id, TaskDone done);
  absl::StatusOr<ListPage> List(const ListQuery& query);

  // Events of one task (task_id) or a queue ("*" = all). Returns a handle.
  uint64_t Subscribe(std::string task_id, std::string queue, EventFn fn);
  void Unsubscribe(uint64_t handle);

  // Pool control (PoolService).
  void SetDraining(bool draining);
  bool draining();
  int running();
  // Calls `done(drained)` when nothing runs any more, or after `timeout`.
  void WhenIdle(absl::Duration timeout, std::function<void(bool)> done);
  // Refuses new submits with Unavailable from now on.
  void StopIntake();
  bool accepting();
  // Fires, on the calling thread, what is due by the clock now (after a
  // test moved a FakeClock): delayed tasks and backoffs become ready and
  // are dispatched, wait timeouts fire, failed writes are tried again.
  void Poke();
  // Pending waits and their timeout entries (for tests and metrics).
  size_t pending_waits();
  size_t pending_wait_timeouts();
  // True while terminal-state writes are failing (the tasks stay visibly
  // unfinished and are written again); readiness reports it.
  bool store_failing();

  // Task -> forqd side channel (Manager); set before Start.
  void SetCallHandler(
      std::function<void(absl::string_view, std::string,
                         std::function<void(absl::StatusOr<std::string>)>)>
          handler);
  // Called (outside the scheduler's lock) with the task id whenever an
  // attempt that made calls (SetCallHandler) ends, so services can drop
  // state the attempt left behind.
  void SetAttemptEndHandler(std::function<void(absl::string_view)> handler);
  // Called (once, outside the lock) when the pool can no longer run tasks;
  // intake stops first. Set before Start.
  void SetPoolLostHandler(std::function<void(const absl::Status&)> handler);

 private:
  struct Entry {
    v1::Task task;
    // Terminal state reached, write to the store in flight (or failed and
    // to be tried again). Until it is durable, readers see prev_state.
    bool finishing = false;
    bool finish_failed = false;
    // The current attempt's RUNNING record was handed to the store.
    bool running_written = false;
    // The current attempt waits in its worker's queue behind a running one:
    // not started, so no RUNNING record yet (StartedLocked writes it).
    bool start_pending = false;
    // Its insert was handed to the store (false: submitted with
    // Ack::kDeferred and not written yet; no write may be an update).
    bool stored = true;
    // Its insert failed after it was dispatched, or (cluster) its lease
    // was lost: drop, never write.
    bool abandoned = false;
    // Submitted with Ack::kDeferred (a Map input, Submit with wait): its
    // submitter waits for the result, so once that is delivered the task
    // is not kept among the recently finished (Get reads the store).
    bool answered_by_result = false;
    // Submitted with SubmitForResults: its result goes to `sink`.
    std::shared_ptr<ResultSink> sink;
    uint64_t sink_tag = 0;
    // Its queue's and kind's metrics (MetricsLocked).
    TaskMetrics* metrics = nullptr;
    // The current attempt called forqd (the Manager side channel): its end
    // is reported to the attempt-end handler.
    bool made_calls = false;
    bool lease_lost = false;
    v1::TaskState prev_state = v1::TASK_STATE_UNSPECIFIED;
    absl::Time ready_at;
    // Position in ready_ (0 = not there); kept through dispatch, so a task
    // the pool gives back returns to its old place.
    int64_t ready_seq = 0;
    int64_t last_seq = 0;
  };
  // Node maps: entries are referred to by pointer and reference while the
  // map grows.
  using TaskMap = absl::node_hash_map<std::string, Entry>;
  struct ReadyKey {
    int32_t neg_priority;
    int64_t seq;
    std::string id;
    bool operator<(const ReadyKey& o) const {
      if (neg_priority != o.neg_priority) return neg_priority < o.neg_priority;
      return seq < o.seq;
    }
  };
  struct Watcher {
    std::string task_id;
    std::string queue;
    EventFn fn;
  };
  struct IdleWaiter {
    absl::Time deadline;
    std::function<void(bool)> done;
  };
  // Work collected under the lock and run after releasing it.
  struct Deferred {
    std::vector<std::function<void()>> calls;
    void Add(std::function<void()> f) { calls.push_back(std::move(f)); }
    void Run() {
      for (auto& c : calls) c();
      calls.clear();
    }
  };

  // Results for sinks, collected under the lock: one call per sink after.
  class SinkBatch {
   public:
    void Add(std::shared_ptr<ResultSink> sink, uint64_t tag,
             absl::StatusOr<v1::Task> result);
    void MoveTo(Deferred& d);

   private:
    std::vector<
        std::pair<std::shared_ptr<ResultSink>, std::vector<ResultSink::Result>>>
        by_sink_;
  };

  absl::StatusOr<v1::Task> BuildTask(v1::TaskSpec spec, absl::Time now);
  // InvalidArgument unless `kind` is a valid name that this node runs (or,
  // in a cluster, another live node).
  absl::Status CheckKind(const std::string& kind) const;
  // Whether this node's workers run `kind` (any, when the pool names none).
  bool RunsKind(const std::string& kind) const {
    return kinds_.empty() || kinds_.count(kind) > 0;
  }
  // Start's parts: the unfinished tasks of the store queued again (a
  // RUNNING one lost its attempt), and the pool's callbacks into this.
  absl::Status Recover() ABSL_LOCKS_EXCLUDED(mu_);
  worker::PoolCallbacks MakePoolCallbacks();
  // Shutdown's parts, once the pool is stopped: takes the tasks to store
  // again (`requeue`: interrupted or, in a cluster, claimed and not
  // started; `unwritten`: accepted, never written) and the waits and sinks
  // to fail; then stores them for the next start.
  void TakeUnfinishedLocked(
      std::vector<v1::Task>& requeue, std::vector<v1::Task>& unwritten,
      std::vector<std::pair<WaitDone, absl::Status>>& to_fail,
      Deferred& fail_sinks) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void StoreUnfinished(const std::vector<v1::Task>& requeue,
                       std::vector<v1::Task> unwritten)
      ABSL_LOCKS_EXCLUDED(mu_);
  void Loop();
  void OnOutcome(worker::Outcome outcome);
  // After a batch of pool callbacks: writes the batch's terminal records
  // and fills the workers again.
  void OnTurnEnd();
  // Tasks whose insert failed (not acknowledged) leave memory; the
  // scheduler's thread does it (DropAbandonedLocked).
  void Abandon(const std::vector<std::string>& ids)
      ABSL_LOCKS_EXCLUDED(abandon_mu_);
  // Their waiters end with Unavailable (run by `d`).
  void DropAbandonedLocked(Deferred& d) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The timer work of one loop turn (see Poke).
  void RunDueLocked(absl::Time now, Deferred& d)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // How many tasks the pool would take now, judged by the task `id` at the
  // head of ready_ (its timeout and kind).
  int RoomForLocked(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sends ready tasks to the pool while it has room.
  void DispatchLocked(absl::Time now, Deferred& d)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sends the tasks of `keys` (taken out of ready_) to the pool; those it
  // refuses go back to ready_ and are returned.
  std::vector<ReadyKey> SendLocked(std::vector<ReadyKey> keys, absl::Time now,
                                   Deferred& d)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Queues one store write for the terminal records of the last batch.
  void FlushFinishesLocked(Deferred& d) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Adds the terminal record of `e` to the next FlushFinishesLocked.
  void QueueFinishLocked(Entry& e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Inserts the deferred tasks submitted before `cutoff` that are still
  // unwritten (see Ack::kDeferred).
  void InsertDeferredLocked(absl::Time cutoff)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A task the pool gave back unstarted (OutcomeKind::kRevoked): back to
  // its place in the queue (or, in a cluster, to the shared queue).
  void RevokeLocked(TaskMap::iterator it) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Writes the RUNNING record of the tasks sent before `cutoff` whose
  // attempt still runs (see SchedulerOptions::running_write_delay).
  void WriteRunningLocked(absl::Time cutoff) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The pool started attempt `attempt` of `id`, which had waited behind
  // another in its worker's queue: its RUNNING record is due (written with
  // the turn's terminal records, or after running_write_delay).
  void StartedLocked(const std::string& id, int attempt, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Queues task `id`, whose attempt started at `started`, for
  // WriteRunningLocked once running_write_delay has passed.
  void DelayRunningRecordLocked(const std::string& id, absl::Time started)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Adds task `id`'s RUNNING record to `running` unless it has one, is
  // gone, finishing or not running, and marks it written.
  void AddRunningRecordLocked(const std::string& id,
                              std::vector<v1::Task>& running)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Queues one store write of these RUNNING records (none if empty).
  void StoreRunningLocked(std::vector<v1::Task> running)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The task as readers may see it: a terminal state only once durable.
  v1::Task VisibleLocked(const Entry& e) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A finished task from the in-memory cache, if there and not expired.
  std::optional<v1::Task> RecentLocked(const std::string& id, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RememberLocked(v1::Task task) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void OnProgress(absl::string_view id, int attempt, double fraction,
                  absl::string_view message);

  // Puts a QUEUED task in the ready set or the delay map.
  void EnqueueLocked(Entry& e, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RemoveQueuedLocked(Entry& e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Records a terminal state; waiters fire after the store write.
  // `prev` is the state readers see until the terminal record is durable.
  void FinishLocked(Entry& e, v1::TaskState prev)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // `inserted`: the records were inserts of deferred tasks.
  void OnFinishPersisted(const std::vector<std::string>& ids,
                         absl::Status status, bool inserted);
  void EmitLocked(const v1::Task& task, v1::TaskEvent::Type type, Deferred& d)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PersistAsync(const v1::Task& task);
  absl::Duration Backoff(int attempt);
  void WakeLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Wakes the loop only if it sleeps past `t` (it re-reads every deadline
  // before sleeping, so one that is awake needs nothing).
  void WakeAtLocked(absl::Time t) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RefreshMetrics();
  // The metrics of `e`'s queue and kind, resolved once per entry.
  TaskMetrics& MetricsLocked(Entry& e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Cluster mode (scheduler_cluster.cc).
  absl::Status StartCluster() ABSL_LOCKS_EXCLUDED(mu_);
  // Asks the loop to claim work when workers are idle beyond the local
  // ready set. `told`: claimable work may have appeared (a notification,
  // the fallback poll, a write of this node's); else a turn ended.
  void WantClaimLocked(bool told = true) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Submit's parts. The specs checked and made tasks (InvalidArgument
  // naming the task's index otherwise).
  absl::StatusOr<std::vector<v1::Task>> BuildTasks(
      std::vector<v1::TaskSpec> specs);
  // Intake open and room in every queue for `adding` (tasks per queue).
  absl::Status AdmitLocked(const std::map<std::string, int64_t>& adding)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Single node, no idempotency keys: queues the tasks and inserts them;
  // `done` runs once the insert is durable.
  void QueueAndInsertLocked(std::vector<v1::Task> tasks, SubmitDone done,
                            Deferred& d) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // After tasks were queued here (`adding`: how many per queue): counts
  // them, dispatches and arms the wake-up of the first delayed one.
  void QueuedLocked(const std::map<std::string, int64_t>& adding, Deferred& d)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Ack::kDeferred: queues the tasks unwritten; returns their ids. With a
  // sink, task i gives it its result with tag tags[i].
  std::vector<InsertResult> QueueDeferredLocked(
      std::vector<v1::Task> tasks, Deferred& d,
      const std::shared_ptr<ResultSink>& sink = nullptr,
      const std::vector<uint64_t>& tags = {})
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // SubmitForResults in a cluster: the tasks go in as Submit's, and a Wait
  // per task (renewed until terminal) feeds the sink.
  void WaitForSink(const std::string& id, std::shared_ptr<ResultSink> sink,
                   uint64_t tag) ABSL_LOCKS_EXCLUDED(mu_);
  // Tells the sinks of these entries that no result will come (`why`) and
  // detaches them.
  static void FailSinks(const std::vector<Entry*>& entries,
                        const absl::Status& why, Deferred& d);
  // Tasks with idempotency keys: inserted first, the new ones queued then.
  void InsertKeyed(std::vector<v1::Task> tasks, SubmitDone done)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Cluster Submit of tasks without idempotency keys: those the node's
  // idle workers (and its local buffer) can take are inserted as its own
  // attempts and queued here at once; the others go to the shared queue.
  void SubmitClusterLocked(std::vector<v1::Task> tasks, SubmitDone done,
                           Deferred& d) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // How many tasks the node holds at most (running or queued locally):
  // its workers' room plus about 20 ms of the tasks it has been starting.
  int LocalTargetLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // How many of a submission this node takes at insert (its target less
  // what is ready; none while it must not, is stopping or drains).
  int InsertBudgetLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Gives tasks that waited here too long beyond the workers' room back to
  // the shared queue, and arms the loop to look again.
  void GiveBackStaleLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Claimed tasks no worker has taken go back to the shared queue (drain).
  void ReleaseClaimedLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Runs on the loop thread without mu_: one claim for the idle workers.
  void ClaimForIdleWorkers() ABSL_LOCKS_EXCLUDED(mu_);
  void OnLostAttempts(const std::vector<AttemptRef>& attempts, bool fenced)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Tasks finished elsewhere (empty: re-check every remote wait).
  void OnRemoteFinished(const std::vector<std::string>& ids)
      ABSL_LOCKS_EXCLUDED(mu_);
  // A wait on a task this node does not hold: none of its attempts runs
  // here (or the one that did was abandoned).
  bool RemoteLocked(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Thread of the remote waits: reads the tasks of queued checks in
  // batches and answers the waits of those that are terminal or unknown.
  void RemoteWaitLoop() ABSL_LOCKS_EXCLUDED(mu_);
  void CheckRemoteWaits(const std::vector<std::string>& ids)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Cancel of a task this node does not hold (queued in the shared store
  // or running on another node).
  void CancelRemote(absl::string_view id, const TaskDone& done)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Cancels asked through other nodes for attempts this node runs.
  void OnRemoteCancel(const std::vector<AttemptRef>& attempts)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Events of tasks other nodes run, for this node's watchers.
  void OnRemoteEvents(const std::vector<v1::TaskEvent>& events)
      ABSL_LOCKS_EXCLUDED(mu_);
  // A watcher added (on) or removed: the other nodes send it their events.
  void WatchRemoteLocked(const Watcher& w, bool on)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const SchedulerOptions options_;
  Clock& clock_;
  Store& store_;
  worker::WorkerPool& pool_;
  Metrics& metrics_;
  // The kinds the pool's workers run (set by Start, then read only); a
  // cluster node claims only these.
  std::set<std::string, std::less<>> kinds_;

  Mutex mu_;
  CondVar cv_;
  bool wake_ ABSL_GUARDED_BY(mu_) = false;
  // When the sleeping loop wakes by itself; InfinitePast while it runs.
  absl::Time loop_wake_at_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool accepting_ ABSL_GUARDED_BY(mu_) = true;
  TaskMap tasks_ ABSL_GUARDED_BY(mu_);
  std::set<ReadyKey> ready_ ABSL_GUARDED_BY(mu_);
  std::multimap<absl::Time, std::string> delayed_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int64_t> queued_by_queue_ ABSL_GUARDED_BY(mu_);
  int running_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t next_seq_ ABSL_GUARDED_BY(mu_) = 1;
  bool store_failing_ ABSL_GUARDED_BY(mu_) = false;
  WorkSource* const work_source_;
  bool claim_wanted_ ABSL_GUARDED_BY(mu_) = false;
  // The last claim found fewer claimable tasks than it asked for: new
  // submits may be taken locally without passing older queued ones.
  bool own_allowed_ ABSL_GUARDED_BY(mu_) = false;
  // Inserts that leave claimable tasks to the shared queue: how many are
  // not yet committed, and a count of their starts and ends. A claim that
  // began with one in flight, or during which one started or ended, may
  // have missed its tasks: its coming back short allows nothing.
  std::atomic<int> shared_inserts_in_flight_{0};
  std::atomic<int64_t> shared_inserts_seq_{0};
  // Tasks taken (claimed or inserted as own) since taken_since_, and the
  // local buffer derived from their rate (LocalTargetLocked).
  int64_t taken_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time taken_since_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  int buffer_ ABSL_GUARDED_BY(mu_) = 0;
  // When GiveBackStaleLocked looks next (InfiniteFuture: nothing held
  // beyond the workers' room).
  absl::Time stale_check_at_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
  // Loop thread only: when a failing claim was last logged.
  absl::Time claim_error_logged_ = absl::InfinitePast();
  // Cluster mode: remote waits to check against the store (new ones, and
  // those a notification named); `remote_check_all_`: every remote wait.
  std::vector<std::string> remote_check_ ABSL_GUARDED_BY(mu_);
  bool remote_check_all_ ABSL_GUARDED_BY(mu_) = false;
  CondVar remote_cv_;
  std::thread remote_thread_;
  // Remote-wait thread only.
  absl::Time remote_error_logged_ = absl::InfinitePast();
  Mutex abandon_mu_;
  std::vector<std::string> abandoned_ ABSL_GUARDED_BY(abandon_mu_);
  std::atomic<bool> abandon_pending_{false};
  // Tasks a worker had taken but gave back unrun while draining: a drain
  // finishes what workers had taken, so these are sent again.
  std::vector<ReadyKey> drain_redispatch_ ABSL_GUARDED_BY(mu_);
  // Terminal records of the current batch, not yet handed to the store:
  // updates, and inserts of tasks never written (Ack::kDeferred).
  std::vector<v1::Task> pending_finishes_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::Task> pending_finish_inserts_ ABSL_GUARDED_BY(mu_);
  // Tasks that started in the current batch (StartedLocked): their RUNNING
  // records go before its terminal records, and not at all for a task that
  // also finished in it.
  std::vector<std::string> pending_running_ ABSL_GUARDED_BY(mu_);
  // Tasks submitted with Ack::kDeferred, oldest first, with the time they
  // were submitted; entries already written are skipped when popped.
  std::deque<std::pair<absl::Time, std::string>> deferred_ ABSL_GUARDED_BY(mu_);
  // Stored tasks sent to a worker whose RUNNING record is not written yet,
  // oldest first, with the time they were sent (WriteRunningLocked).
  std::deque<std::pair<absl::Time, std::string>> unwritten_running_
      ABSL_GUARDED_BY(mu_);
  // Tasks whose terminal write failed, to be written again.
  std::vector<std::string> failed_finishes_ ABSL_GUARDED_BY(mu_);
  absl::Time next_finish_retry_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
  // Recently finished tasks (durable), oldest first. A task leaves
  // recent_ early when it expires or runs again; its element stays in
  // recent_order_ (counted in recent_bytes_) until its turn to go.
  struct Recent {
    v1::Task task;  // never changed: recent_ keys view its id
    size_t bytes = 0;
  };
  std::deque<Recent> recent_order_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<absl::string_view, const Recent*> recent_
      ABSL_GUARDED_BY(mu_);
  size_t recent_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_handle_ ABSL_GUARDED_BY(mu_) = 1;
  // Per "queue\x1fkind"; the last one used is tried first.
  std::unordered_map<std::string, std::unique_ptr<TaskMetrics>> task_metrics_
      ABSL_GUARDED_BY(mu_);
  TaskMetrics* last_metrics_ ABSL_GUARDED_BY(mu_) = nullptr;
  WaitRegistry waits_ ABSL_GUARDED_BY(mu_);
  std::unordered_map<uint64_t, Watcher> watchers_ ABSL_GUARDED_BY(mu_);
  // Cluster: task ids watched by watchers here (counts), whose terminal
  // state the remote-wait thread reads like a remote wait's.
  std::unordered_map<std::string, int> watched_ids_ ABSL_GUARDED_BY(mu_);
  std::vector<IdleWaiter> idle_waiters_ ABSL_GUARDED_BY(mu_);
  std::function<void(absl::string_view, std::string,
                     std::function<void(absl::StatusOr<std::string>)>)>
      call_handler_;
  std::function<void(absl::string_view)> attempt_end_handler_;
  std::function<void(const absl::Status&)> pool_lost_handler_;

  std::thread thread_;
  bool started_ = false;
  bool shut_down_ = false;
};

// A new task id: 12 hex digits of Unix milliseconds, 8 of a per-process
// sequence and 4 random, so ids sort by creation time.
std::string NewTaskId();

}  // namespace forq::server

#endif  // FORQ_SERVER_SCHEDULER_SCHEDULER_H_
