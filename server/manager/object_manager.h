// The Manager's object core: named shared objects (dict, list, value, array,
// namespace, queue, pipe, lock, rlock, semaphores, condition, event),
// sessions with leases, fencing tokens, parked waiters and persistence.
// Pure C++: the gRPC service and the task bridge both translate into
// worker::ManagerRequest and call Execute().
#ifndef FORQ_SERVER_MANAGER_OBJECT_MANAGER_H_
#define FORQ_SERVER_MANAGER_OBJECT_MANAGER_H_

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
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

#include "common/mutex.h"
#include "server/manager/timer_queue.h"
#include "server/metrics/metrics.h"
#include "server/store/store.h"
#include "worker/manager_client.h"

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
};

// Thread-safe. One mutex guards all objects and sessions (operations are
// short; blocking ones park a callback instead of a thread). Callbacks
// (`done`, sink Flush) are always invoked with no manager lock held, from
// the calling thread, the timer thread or the store's writer thread.
//
// Persistence: after a change to a data object (dict, list, value, array,
// namespace, queue, pipe, event) its whole state is written through
// Store::PutObject, and the replies of that operation wait until the write
// is durable (per the store's durability mode). Locks, RLocks, semaphores
// and conditions are not persisted: their owners are sessions, which do not
// survive a restart. Fencing tokens are (epoch << 40 | grant counter) where
// the epoch is persisted and bumped by Recover(), so tokens keep growing
// across restarts.
class ObjectManager {
 public:
  using Done = std::function<void(absl::StatusOr<worker::ManagerReply>)>;

  // `store` and `metrics` are borrowed, may be null, and must outlive this.
  ObjectManager(Store* store, Metrics* metrics,
                ObjectManagerOptions options = {});
  // Shuts down (parked waiters fail with Unavailable).
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
    std::map<std::string, std::string> map;  // dict, namespace
    std::vector<std::string> list;           // list
    std::string value;                       // value
    char typecode = 'i';                     // array
    std::vector<int64_t> ints;
    std::vector<double> doubles;
    std::deque<std::string> items;  // queue
    int64_t maxsize = 0;
    int64_t unfinished = 0;
    std::deque<std::string> inbox[2];  // pipe
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
  struct Batch {
    std::vector<Completion> replies;
    std::set<std::string> dirty;
    std::vector<std::pair<std::string, std::optional<std::string>>> writes;
    std::vector<std::shared_ptr<ManagerWatchSink>> flush;
    std::vector<uint64_t> cancel_timers;
  };

  struct PersistGroup {
    std::vector<std::pair<std::string, std::optional<std::string>>> writes;
    std::vector<Completion> replies;
  };

  struct Gauges {
    std::atomic<int64_t> waiters{0};
    std::atomic<int64_t> sessions{0};
    std::atomic<int64_t> objects{0};
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

  // Renews and returns the session named by `req`, NotFound if unknown.
  absl::StatusOr<Session*> SessionLocked(const Request& req)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RenewLocked(Session& s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void OnSessionTimer(std::string id) ABSL_LOCKS_EXCLUDED(mu_);
  // Releases everything `id` holds and fails its parked waiters.
  int EndSessionLocked(const std::string& id, absl::string_view why, Batch& b)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Grants whatever the object's state now allows to its waiters.
  void PumpLocked(const std::string& name, Object& o, Batch& b)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void GrantLockLocked(const std::string& name, Object& o, Session& s,
                       const std::string& owner, int64_t count)
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
  void OnWaiterTimer(uint64_t id) ABSL_LOCKS_EXCLUDED(mu_);
  // The reply a timed-out waiter gets (Condition waits re-park instead).
  absl::StatusOr<Reply> TimeoutReplyLocked(const Waiter& w, Object* o)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  uint64_t NextTokenLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Serializes dirty objects into b.writes (under the lock, so writes are
  // queued in the order the changes happened).
  void QueueWritesLocked(Batch& b) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Delivers a batch: timers, persistence, replies, watcher flushes.
  void Finish(Batch& b) ABSL_LOCKS_EXCLUDED(mu_);
  void DrainPersist() ABSL_LOCKS_EXCLUDED(mu_, persist_mu_);
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
  uint64_t next_waiter_id_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t next_watch_id_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t epoch_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t grants_ ABSL_GUARDED_BY(mu_) = 0;
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;

  // Lock order: mu_ before persist_mu_.
  Mutex persist_mu_;
  std::deque<PersistGroup> persist_queue_ ABSL_GUARDED_BY(persist_mu_);
  bool persisting_ ABSL_GUARDED_BY(persist_mu_) = false;

  // Declared last: destroyed (thread joined) first.
  TimerQueue timers_;
};

}  // namespace forq::server

#endif  // FORQ_SERVER_MANAGER_OBJECT_MANAGER_H_
