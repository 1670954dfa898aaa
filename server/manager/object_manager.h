// The Manager's object core: named shared objects (dict, list, value, array,
// namespace, queue, pipe, lock, rlock, semaphores, condition, event),
// sessions with leases, fencing tokens, parked waiters and persistence.
// Pure C++: the gRPC service and the task bridge both translate into
// worker::ManagerRequest and call Execute().
#ifndef FORQ_SERVER_MANAGER_OBJECT_MANAGER_H_
#define FORQ_SERVER_MANAGER_OBJECT_MANAGER_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/inlined_vector.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

#include "common/mutex.h"
#include "server/manager/ordered_map.h"
#include "server/manager/row_log.h"
#include "server/manager/timer_queue.h"
#include "server/metrics/metrics.h"
#include "server/store/store.h"
#include "worker/manager_protocol.h"

namespace forq::server {

struct ManagerObjectInfo {
  std::string name;
  worker::ManagerType type = worker::ManagerType::kDict;
  int64_t size = 0;
  int64_t waiters = 0;
  uint64_t version = 0;
};

// One change of an object, as delivered to watchers.
struct ManagerChange {
  std::string name;
  worker::ManagerType type = worker::ManagerType::kDict;
  std::string op;
  std::string key;
  std::string value;
  uint64_t version = 0;
  absl::Time time;
};

// Receives the changes of one watched object.
class ManagerWatchSink {
 public:
  virtual ~ManagerWatchSink() = default;
  // Called with the manager's lock held, in version order: must only buffer
  // the change (no blocking, no gRPC calls, no calls into the manager).
  virtual void Push(const ManagerChange& change) = 0;
  // Called with no lock held after one or more Push calls: deliver them.
  virtual void Flush() = 0;
};

struct ObjectManagerOptions {
  // Session lease when OpenSession names none, and the allowed range.
  absl::Duration default_session_ttl = absl::Seconds(30);
  absl::Duration min_session_ttl = absl::Milliseconds(100);
  absl::Duration max_session_ttl = absl::Hours(1);
  // Caps that turn unbounded growth into RESOURCE_EXHAUSTED.
  size_t max_objects = 100000;
  size_t max_waiters = 100000;
  size_t max_sessions = 100000;
  // Entries (items, keys, elements, queued messages) per object.
  size_t max_entries = 1u << 20;
  // Bytes of one value (dict value or key, list/queue item, message, ...).
  size_t max_value_bytes = 1u << 20;
  // Bytes of one object's keys and values, and of all objects together.
  size_t max_object_bytes = 64u << 20;
  size_t max_total_bytes = 512u << 20;
  // Group commits in flight at once (a second one goes to the store while
  // the first commits). 1 = one at a time.
  size_t max_batches_in_flight = 2;
  // How group commits reach the store (one log record each, compacted
  // from time to time; see row_log.h).
  RowLogOptions row_log;
};

// Thread-safe. One mutex guards all objects and sessions (operations are
// short; blocking ones park a callback instead of a thread). Callbacks
// (`done`, sink Flush) are always invoked with no manager lock held, from
// the calling thread, the timer thread or the store's writer thread.
//
// Persistence: a change to a data object (dict, list, value, array,
// namespace, queue, pipe, event) is written incrementally — its header row
// plus the rows it touched (a dict key, a chunk of 32 list/queue/array
// elements) — through Store::WriteObjects, one atomic batch each, up to
// two in flight (applied in order). The
// replies of that operation wait until the batch is durable (per the
// store's durability mode); so do reads of an object with changes still
// in flight, so no client sees a value before it is durable. When a batch
// fails, every object it (or any batch behind it) touched is
// reloaded from the store and those replies fail with Unavailable: only
// what was persisted stays applied. Locks, RLocks, semaphores
// and conditions are not persisted: their owners are sessions, which do not
// survive a restart. Fencing tokens are (epoch << 40 | grant counter) where
// the epoch is persisted and bumped by Recover(), so tokens keep growing
// across restarts.
// A process-wide id for a parked Manager call: unique across every
// ObjectManager (a cluster node replaces its core when it becomes the
// Manager owner again) and the calls a ManagerRouter forwards, so a late
// Cancel never reaches another call. Never 0.
uint64_t NextManagerCallId();

class ObjectManager {
 public:
  using Done = std::function<void(absl::StatusOr<worker::ManagerReply>)>;

  // `store` and `metrics` are borrowed, may be null, and must outlive this.
  ObjectManager(Store* store, Metrics* metrics,
                ObjectManagerOptions options = {});
  // Shuts down (parked waiters fail with Unavailable) and waits for store
  // writes in flight to call back.
  ~ObjectManager();
  ObjectManager(const ObjectManager&) = delete;
  ObjectManager& operator=(const ObjectManager&) = delete;

  // Loads persisted objects and bumps the persisted token epoch (waiting
  // for that write). Call once, before serving. Corrupt blobs are skipped
  // with a log line.
  absl::Status Recover() ABSL_LOCKS_EXCLUDED(mu_);

  // Runs `request`. `done` is called exactly once: inline for operations
  // that complete at once, later for parked ones (on timeout, cancellation,
  // completion by another operation, session expiry or shutdown). `tag`
  // groups waiters for CancelTagged (the task bridge uses the task id).
  // Returns the waiter id when the request parked (for Cancel), else 0.
  uint64_t Execute(worker::ManagerRequest request, Done done,
                   absl::string_view tag = "") ABSL_LOCKS_EXCLUDED(mu_);
  // Holds back group commits until the matching ReleaseWrites: what the
  // operations executed meanwhile (one session message's) change reaches
  // the store in one batch, instead of the first operation alone and the
  // rest behind it. Holds nest; keep them short (other callers' writes
  // wait too).
  void HoldWrites() ABSL_LOCKS_EXCLUDED(mu_);
  void ReleaseWrites() ABSL_LOCKS_EXCLUDED(mu_);
  // Removes a parked waiter; its `done` gets Cancelled. No-op if it already
  // completed.
  void Cancel(uint64_t waiter_id) ABSL_LOCKS_EXCLUDED(mu_);
  // Cancels every parked waiter with this tag; returns how many.
  int CancelTagged(absl::string_view tag) ABSL_LOCKS_EXCLUDED(mu_);

  std::vector<ManagerObjectInfo> ListObjects(absl::string_view prefix)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Removes an object of any type; parked waiters fail with Aborted,
  // holdings vanish. Returns false if there was no such object.
  absl::StatusOr<bool> DeleteObject(absl::string_view name)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Streams changes of `name` to `sink` until Unwatch. The sink is shared
  // because a Flush may still be running on another thread when Unwatch
  // returns. Returns the watch id.
  uint64_t Watch(absl::string_view name, std::shared_ptr<ManagerWatchSink> sink)
      ABSL_LOCKS_EXCLUDED(mu_);
  void Unwatch(uint64_t id) ABSL_LOCKS_EXCLUDED(mu_);

  // Fails every parked waiter with Unavailable; later calls fail the same
  // way. Idempotent.
  void Shutdown() ABSL_LOCKS_EXCLUDED(mu_);

  size_t waiter_count() ABSL_LOCKS_EXCLUDED(mu_);
  // Blocks until exactly `n` operations are parked or `timeout` passes;
  // returns whether the count was reached. For tests and benchmarks.
  bool AwaitWaiterCount(size_t n, absl::Duration timeout)
      ABSL_LOCKS_EXCLUDED(mu_);
  size_t session_count() ABSL_LOCKS_EXCLUDED(mu_);
  size_t object_count() ABSL_LOCKS_EXCLUDED(mu_);
  uint64_t epoch() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  using Clock = TimerQueue::Clock;
  using Reply = worker::ManagerReply;
  using Request = worker::ManagerRequest;

  enum class WaitKind {
    kQueueGet,
    kQueuePut,
    kQueueJoin,
    kPipeRecv,
    kAcquire,
    kCondWait,       // waiting for notify
    kCondReacquire,  // notified or timed out; waiting for the lock again
    kEventWait,
    kBarrierWait,  // restore_count holds the arrival index
  };

  struct Waiter {
    uint64_t id = 0;
    std::string object;
    WaitKind kind = WaitKind::kAcquire;
    Request req;
    Done done;
    std::string tag;
    uint64_t timer = 0;
    int64_t restore_count = 1;  // condition: RLock depth to restore
    bool notified = false;      // condition
  };

  struct Object {
    worker::ManagerType type = worker::ManagerType::kDict;
    uint64_t version = 0;
    OrderedMap map;                 // dict, namespace
    std::vector<std::string> list;  // list
    // List and queue: the absolute position of element 0 in the store's
    // rows (pop(0) and queue get advance it, so they rewrite one chunk).
    int64_t head = 0;
    // List, queue and pipe: bytes of their elements.
    size_t seq_bytes = 0;
    // The list/queue/array positions [stored_lo, stored_hi) the store has
    // rows for, and the generation of dict/namespace key rows.
    int64_t stored_lo = 0;
    int64_t stored_hi = 0;
    uint64_t gen = 0;
    // Loaded from a whole-object blob of an older forqd: the next write
    // rewrites every row.
    bool needs_full_write = false;
    std::string value;  // value
    char typecode = 0;  // array; value: 0 = untyped bytes
    std::vector<int64_t> ints;
    std::vector<double> doubles;
    std::deque<std::string> items;  // queue
    int64_t maxsize = 0;
    int64_t unfinished = 0;
    std::array<std::deque<std::string>, 2> inbox;  // pipe
    bool one_way = false;
    std::string holder_session;  // lock, rlock, condition
    std::string holder_owner;
    int64_t hold_count = 0;
    uint64_t token = 0;
    int64_t permits = 0;  // semaphores
    int64_t initial = 1;
    std::map<std::string, int64_t> held;  // session -> permits
    bool is_set = false;                  // event
    std::list<uint64_t> waiters;          // FIFO of waiter ids
  };

  struct Session {
    std::string id;
    std::string client_name;
    Clock::duration ttl{};
    Clock::time_point expiry;
    uint64_t timer = 0;
    // Objects where this session holds a lock or permits.
    std::set<std::string> holdings;
  };

  using Completion = std::pair<Done, absl::StatusOr<Reply>>;

  // What one locked section produced, acted on after unlocking.
  // The rows one locked section changed in one object.
  // Flat and inline, so that marking a row costs no allocation.
  struct Dirty {
    bool all = false;  // rewrite every row
    // Dict/namespace keys and list/queue/array positions; they may repeat
    // (RowWritesLocked writes each row once).
    absl::InlinedVector<std::string, 1> keys;
    absl::InlinedVector<int64_t, 2> positions;
    std::optional<int64_t> from;  // ... and every position from here on
    void Merge(Dirty&& d);
  };
  // The rows a locked section changed, per object (usually one).
  using DirtyList = absl::InlinedVector<std::pair<std::string, Dirty>, 1>;
  static Dirty& DirtyOf(DirtyList& list, const std::string& name);

  // The next group commit: changes made since the last batch went to the
  // store. Rows are serialized from the objects' state when the batch goes
  // out, so a row (and an object's header) changed by many operations is
  // written once per batch.
  struct PendingPersist {
    std::map<std::string, Dirty> dirty;
    // Writes serialized already (rows of deleted objects).
    std::vector<Store::ObjectWrite> writes;
    // Every object the batch touches (each counted once in unpersisted_).
    std::set<std::string> objects;
    // Replies released when the batch is durable.
    std::vector<Completion> replies;
    bool empty() const {
      return dirty.empty() && writes.empty() && objects.empty() &&
             replies.empty();
    }
  };

  // A batch on its way to the store.
  struct PersistSend {
    std::vector<std::string> objects;
    // Released when this batch and every one before it are durable.
    std::vector<Completion> replies;
    bool compaction = false;
    // Set under mu_ when the store called back.
    bool done = false;
    absl::Status status;
    // The store refused it inline (a closed store): Finish reports it.
    bool refused = false;
  };

  struct Batch {
    std::vector<Completion> replies;
    DirtyList dirty;
    // Set by Mark*Locked, consumed by TouchLocked: the op named its rows
    // (otherwise the whole object is rewritten).
    bool op_marked = false;
    // The replies read data not yet durable: they wait for its batch.
    bool hold = false;
    // Rows of deleted objects, and the objects they belong to.
    std::vector<Store::ObjectWrite> writes;
    std::vector<std::string> written;
    // Batches the store refused inline, reported by Finish.
    std::vector<std::shared_ptr<PersistSend>> refused;
    std::vector<std::shared_ptr<ManagerWatchSink>> flush;
    std::vector<uint64_t> cancel_timers;
  };

  // Counts of operations per (type, op), added to forq_manager_ops_total
  // when metrics are scraped (one relaxed increment per operation instead
  // of a labelled lookup).
  static constexpr int kOpCounterTypes = v1::kMaxManagerType + 1;
  static constexpr int kOpCounterOps = v1::kMaxManagerOp + 1;

  struct Gauges {
    std::atomic<int64_t> waiters{0};
    std::atomic<int64_t> sessions{0};
    std::atomic<int64_t> objects{0};
    std::atomic<uint64_t> ops[kOpCounterTypes][kOpCounterOps] = {};
  };

  // Op dispatch; each returns the immediate reply, or sets *park to wait.
  struct Parking {
    bool park = false;
    WaitKind kind = WaitKind::kAcquire;
    int64_t restore_count = 1;
  };
  absl::StatusOr<Reply> RunLocked(Request& req, Parking& parking, Batch& b)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<Reply> SessionOpLocked(Request& req, Batch& b)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<Reply> MapOpLocked(const std::string& name, Object& o,
                                    Request& req, Batch& b)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<Reply> ListOpLocked(const std::string& name, Object& o,
                                     Request& req, Batch& b)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<Reply> ValueOpLocked(const std::string& name, Object& o,
                                      Request& req, Batch& b)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<Reply> ArrayOpLocked(const std::string& name, Object& o,
                                      Request& req, Batch& b)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<Reply> QueueOpLocked(const std::string& name, Object& o,
                                      Request& req, Parking& p, Batch& b)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<Reply> PipeOpLocked(const std::string& name, Object& o,
                                     Request& req, Parking& p, Batch& b)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<Reply> LockOpLocked(const std::string& name, Object& o,
                                     Request& req, Parking& p, Batch& b)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<Reply> SemaphoreOpLocked(const std::string& name, Object& o,
                                          Request& req, Parking& p, Batch& b)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<Reply> EventOpLocked(const std::string& name, Object& o,
                                      Request& req, Parking& p, Batch& b)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Barrier state: initial = parties, permits = arrivals waiting, is_set =
  // broken.
  absl::StatusOr<Reply> BarrierOpLocked(const std::string& name, Object& o,
                                        Request& req, Parking& p, Batch& b)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Fails every waiter of the barrier with BrokenBarrier (FailedPrecondition)
  // and resets its count; `broken` is its state afterwards.
  void BreakBarrierLocked(const std::string& name, Object& o, bool broken,
                          Batch& b) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Breaks the barrier a cancelled waiter was waiting at, if any.
  void BreakIfBarrierLocked(const Waiter& w, Batch& b)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Renews and returns the session named by `req`, NotFound if unknown.
  absl::StatusOr<Session*> SessionLocked(const Request& req)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RenewLocked(Session& s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void OnSessionTimer(const std::string& id) ABSL_LOCKS_EXCLUDED(mu_);
  // Releases everything `id` holds and fails its parked waiters.
  int EndSessionLocked(const std::string& id, absl::string_view why, Batch& b)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Grants whatever the object's state now allows to its waiters; one
  // pump per family, dispatched by PumpLocked.
  void PumpLocked(const std::string& name, Object& o, Batch& b)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PumpQueueLocked(const std::string& name, Object& o, Batch& b)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PumpPipeLocked(const std::string& name, Object& o, Batch& b)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PumpLockLocked(const std::string& name, Object& o, Batch& b)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PumpSemaphoreLocked(const std::string& name, Object& o, Batch& b)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PumpEventLocked(const std::string& name, Object& o, Batch& b)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The first parked waiter of `o` (FIFO) that `pred` accepts, or null.
  template <typename Pred>
  Waiter* FirstWaiterLocked(Object& o, Pred pred)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    for (uint64_t id : o.waiters) {
      Waiter& w = waiters_.at(id);
      if (pred(w)) return &w;
    }
    return nullptr;
  }
  // The session of a parked acquire; null (and `w` failed) when it expired.
  Session* WaiterSessionLocked(Waiter* w, Batch& b)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Unparks `w` and queues `reply` for it.
  void CompleteWaiterLocked(Waiter* w, Batch& b, absl::StatusOr<Reply> reply)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void GrantLockLocked(const std::string& name, Object& o, Session& s,
                       const std::string& owner, int64_t count)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // `s` lets go of the lock entirely (release, condition wait): the change
  // is recorded as `op` and the next waiter gets it.
  void FreeLockLocked(const std::string& name, Object& o, Session& s,
                      absl::string_view op, Batch& b)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Records a change: bumps the version, marks it for persistence and
  // pushes it to watchers.
  void TouchLocked(const std::string& name, Object& o, absl::string_view op,
                   absl::string_view key, absl::string_view value, Batch& b)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  uint64_t ParkLocked(const std::string& name, Object& o, Request req,
                      const Parking& p, Done done, absl::string_view tag,
                      Batch& b) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Unlinks a waiter from its object and the index.
  std::optional<Waiter> TakeWaiterLocked(uint64_t id, Batch& b)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Takes every waiter of `o` and answers each with `why`.
  void FailWaitersLocked(const Object& o, const absl::Status& why, Batch& b)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void OnWaiterTimer(uint64_t id) ABSL_LOCKS_EXCLUDED(mu_);
  // The reply a timed-out waiter gets (Condition waits re-park instead).
  absl::StatusOr<Reply> TimeoutReplyLocked(const Waiter& w, Object* o)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  uint64_t NextTokenLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Name the rows the running op changed (before its TouchLocked).
  void MarkKeyLocked(Batch& b, const std::string& name, const std::string& key);
  void MarkPosLocked(Batch& b, const std::string& name, int64_t pos);
  void MarkFromLocked(Batch& b, const std::string& name, int64_t pos);
  // The op changed only what the header holds.
  static void MarkHeaderLocked(Batch& b) { b.op_marked = true; }

  // Adds the rows the locked section changed (and the replies that must
  // wait for them) to the next group commit, and starts it unless a batch
  // is in flight.
  void QueueWritesLocked(Batch& b) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Counts `name` in the next group commit.
  void PendObjectLocked(const std::string& name)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Serializes the next group commit and hands it to the store, unless
  // there is nothing to send, writes are held (HoldWrites),
  // max_batches_in_flight are in flight, or the batch in flight cannot
  // have one behind it (a compaction, a failure being rolled back, a full
  // log).
  void StartPersistLocked(Batch& b) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SendLocked(std::shared_ptr<PersistSend> send,
                  std::vector<Store::ObjectWrite> writes, Batch& b)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The oldest batch in flight is done: its replies go to `b` (failed ones
  // as Unavailable, and every later batch fails with it).
  void CompleteSendLocked(PersistSend& sent, Batch& b)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Once nothing is in flight after a failure: reloads what the batches
  // and the pending changes touched, failing the pending replies.
  void RollbackFailedLocked(Batch& b) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RowWritesLocked(const std::string& name, Object& o, Dirty& d,
                       std::vector<Store::ObjectWrite>& out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Writes that remove every row of `o` from the store (after writing out
  // what the next group commit holds for it, so no row is left behind).
  void DeleteRowsLocked(const std::string& name, Object& o, Batch& b)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Delivers a batch: timers, persistence, replies, watcher flushes.
  void Finish(Batch& b) ABSL_LOCKS_EXCLUDED(mu_);
  void OnPersisted(absl::Status status,
                   const std::shared_ptr<PersistSend>& sent)
      ABSL_LOCKS_EXCLUDED(mu_, persist_mu_);
  // Replaces `names` by what the store holds (a failed batch), failing the
  // parked waiters of objects the store never had.
  void RollbackLocked(const std::set<std::string>& names, Batch& b)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // An object as the store holds it: its header blob and its rows (key
  // suffix after "<name>|", blob).
  struct StoredRows {
    std::string header;
    std::vector<std::pair<std::string, std::string>> rows;
  };
  // Groups LoadObjects output by object; the epoch blob goes to `epoch`.
  static std::map<std::string, StoredRows> GroupRows(
      std::vector<std::pair<std::string, std::string>> blobs,
      std::string* epoch);
  // Rebuilds an object; false when corrupt. Keys of rows that belong to no
  // current generation are appended to `orphans`.
  bool ParseStoredObject(const std::string& name, const StoredRows& in,
                         Object* o, std::vector<std::string>* orphans) const;
  // Request-size and byte-budget checks before an op runs.
  // A mutating request's values that are references (kManagerRefPrefix)
  // must name existing objects of their type.
  absl::Status CheckRefsLocked(const Request& req)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // "list 'outer'" when a stored value of another object refers to `name`,
  // else "".
  std::string ReferrerLocked(const std::string& name)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status CheckBytesLocked(const Request& req)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Bytes an object holds (keys and values).
  static size_t ObjectBytes(const Object& o);
  void UpdateGaugesLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Store* const store_;
  Metrics* const metrics_;
  const ObjectManagerOptions options_;
  // Shared with the metrics refresh hook, which may outlive this object.
  const std::shared_ptr<Gauges> gauges_;

  Mutex mu_;
  CondVar waiters_changed_;
  std::map<std::string, Object> objects_ ABSL_GUARDED_BY(mu_);
  std::unordered_map<uint64_t, Waiter> waiters_ ABSL_GUARDED_BY(mu_);
  std::unordered_map<std::string, Session> sessions_ ABSL_GUARDED_BY(mu_);
  std::multimap<std::string,
                std::pair<uint64_t, std::shared_ptr<ManagerWatchSink>>>
      watchers_ ABSL_GUARDED_BY(mu_);
  uint64_t next_watch_id_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t epoch_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t grants_ ABSL_GUARDED_BY(mu_) = 0;
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
  // Bytes of all objects (ObjectBytes summed).
  size_t total_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  // Objects with writes pending or in flight (count of batches), whose
  // reads wait for durability.
  std::unordered_map<std::string, int> unpersisted_ ABSL_GUARDED_BY(mu_);
  // The next group commit, and the batches in flight, oldest first. A
  // second batch goes to the store while the first commits (the store
  // applies them in order); each is a log record, and replay stops at a
  // missing one, so the store holds a prefix of them whatever fails.
  PendingPersist pending_ ABSL_GUARDED_BY(mu_);
  std::deque<std::shared_ptr<PersistSend>> in_flight_ ABSL_GUARDED_BY(mu_);
  int write_holds_ ABSL_GUARDED_BY(mu_) = 0;
  // Set by the first failed batch until RollbackFailedLocked: no batch
  // starts, and the batches in flight fail with it.
  absl::Status failed_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> failed_objects_ ABSL_GUARDED_BY(mu_);
  // Turns each batch's rows into the store's writes (a log record or a
  // compaction); knows which log records the store holds.
  RowLog row_log_ ABSL_GUARDED_BY(mu_);
  // Signalled (with mu_) when a batch is done (Shutdown waits for the last).
  CondVar persist_cv_;

  // Lock order: mu_ before persist_mu_.
  Mutex persist_mu_;
  // Store write callbacks not yet returned: they use `this` after they
  // deliver their replies, so the destructor waits for them.
  int persist_callbacks_ ABSL_GUARDED_BY(persist_mu_) = 0;
  CondVar persist_callbacks_done_;

  // Declared last: destroyed (thread joined) first.
  TimerQueue timers_;
};

}  // namespace forq::server

#endif  // FORQ_SERVER_MANAGER_OBJECT_MANAGER_H_
