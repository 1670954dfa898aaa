// libforq Manager proxies: shared objects on a forqd (multiprocessing.Manager
// over the network). Objects are created on first use; values are bytes.
//
//   forq::Manager m(client->channel());
//   m.dict("cfg").Set("k", "v");
//   forq::Queue q = m.queue("jobs");
//   q.Put("a");  auto item = q.Get(absl::Seconds(5));
//   { auto guard = m.lock("l1").Guard();  // RAII: released at scope end
//     if (guard.ok()) UseFencedResource(guard->token()); }
//
// Sessions: locks, RLocks, Conditions and semaphore permits are owned by the
// Manager's session. It is opened on first use with options.session_ttl and
// renewed by a background thread every ttl/3 (and by every call naming it).
// If the process dies or stalls past the TTL, forqd releases what it held
// and later holders get larger fencing tokens. If the session is lost (e.g.
// forqd restarted), the next lock operation opens a fresh one; the old
// holdings are gone, which is what fencing tokens are for.
//
// Errors are absl::Status with the server's code: FailedPrecondition for a
// name used with another type or a release without holding, Aborted for a
// compare-and-set conflict, OutOfRange for a bad index, DeadlineExceeded for
// a queue get / pipe recv timeout, ResourceExhausted for a queue put
// timeout on a full queue.
#ifndef FORQ_CLIENT_MANAGER_H_
#define FORQ_CLIENT_MANAGER_H_

#include <cstdint>
#include <future>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

#include "common/mutex.h"
#include "forq/v1/manager.pb.h"

namespace grpc {
class Channel;
}  // namespace grpc

namespace forq {

class Client;
class Manager;

struct ManagerOptions {
  // Deadline of non-blocking calls, and the slack added to blocking ones.
  absl::Duration rpc_timeout = absl::Seconds(30);
  // Lease of the session that owns this Manager's locks and permits.
  absl::Duration session_ttl = absl::Seconds(30);
  // Shown in forqd's logs.
  std::string client_name = "libforq";
  // Send operations over one pipelined ManagerService.Session stream
  // (many in flight, see Manager::Async); a blocking call made while none
  // is in flight goes as one unary Call (same order, and no hand-off from
  // the stream's reader thread). false = one unary Call each.
  bool pipelined = true;
  // A client on forqd's host: the path of forqd's local Manager socket
  // (forqd --manager_socket). Blocking calls that would go as a unary Call
  // go over it instead, each on a connection of its own taken from a small
  // pool (about a third of a unary gRPC call's time; docs/manager.md,
  // "Local socket"). Pipelined calls (Async) keep the Session stream.
  // Empty = gRPC only.
  std::string local_socket;
  // Bearer token presented on the local socket when forqd checks tokens.
  // Empty: Manager(const Client&) takes the Client's token.
  std::string token;
};

// The result of an operation sent with Manager::Async. Move-only.
class ManagerFuture {
 public:
  ManagerFuture() = default;
  // Blocks until the result arrives (or the stream breaks: Unavailable).
  absl::StatusOr<v1::ManagerResult> Get();
  // True once Get would not block.
  bool Ready() const;

 private:
  friend class Manager;
  explicit ManagerFuture(std::future<absl::StatusOr<v1::ManagerResult>> f)
      : f_(std::move(f)) {}
  std::future<absl::StatusOr<v1::ManagerResult>> f_;
};

// Proxies are cheap handles (the Manager plus a name), valid while their
// Manager lives. Thread-safe.
class ManagerProxy {
 public:
  // A value that refers to this object, to store inside another object
  // (Python's `l.append(manager.dict())`); see Manager::ParseRef. The
  // object must exist (any operation creates it) when the value is stored.
  std::string Ref() const;
  const std::string& name() const { return name_; }

 protected:
  ManagerProxy(Manager* m, std::string name, v1::ObjectType type)
      : m_(m), name_(std::move(name)), type_(type) {}
  Manager* m_;
  std::string name_;
  v1::ObjectType type_;
};

class Dict : public ManagerProxy {
 public:
  // NotFound when the key is absent.
  absl::StatusOr<std::string> Get(absl::string_view key) const;
  absl::Status Set(absl::string_view key, absl::string_view value) const;
  // True if the key was present.
  absl::StatusOr<bool> Delete(absl::string_view key) const;
  absl::StatusOr<bool> Contains(absl::string_view key) const;
  // Keys, values and items in insertion order, as Python's dict.
  absl::StatusOr<std::vector<std::string>> Keys() const;
  absl::StatusOr<std::vector<std::string>> Values() const;
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> Items()
      const;
  // dict.copy(): a local snapshot of the entries.
  absl::StatusOr<std::map<std::string, std::string>> Copy() const;
  // Removes and returns the last inserted entry; NotFound when empty.
  absl::StatusOr<std::pair<std::string, std::string>> PopItem() const;
  absl::StatusOr<int64_t> Len() const;
  absl::Status Update(const std::map<std::string, std::string>& items) const;
  absl::Status Clear() const;
  // Sets key to `value` if it holds `expected` (nullopt: if it is absent);
  // Aborted otherwise.
  absl::Status CompareAndSet(absl::string_view key,
                             std::optional<std::string> expected,
                             absl::string_view value) const;
  // dict.setdefault: returns the value stored after the call.
  absl::StatusOr<std::string> SetIfAbsent(absl::string_view key,
                                          absl::string_view value) const;
  // Pipelined forms of Get and Set (see Manager::Async): the result's
  // `value` is the value read.
  ManagerFuture GetAsync(absl::string_view key) const;
  ManagerFuture SetAsync(absl::string_view key, absl::string_view value) const;

 private:
  friend class Manager;
  Dict(Manager* m, std::string name)
      : ManagerProxy(m, std::move(name), v1::OBJECT_TYPE_DICT) {}
};

class List : public ManagerProxy {
 public:
  // Mutators return the length afterwards.
  absl::StatusOr<int64_t> Append(absl::string_view value) const;
  absl::StatusOr<int64_t> Extend(const std::vector<std::string>& values) const;
  // Negative indices count from the end; OutOfRange when outside.
  absl::StatusOr<std::string> Get(int64_t index) const;
  absl::Status Set(int64_t index, absl::string_view value) const;
  absl::StatusOr<std::string> Pop(std::optional<int64_t> index = {}) const;
  absl::Status Insert(int64_t index, absl::string_view value) const;
  // NotFound when no item equals `value`.
  absl::Status Remove(absl::string_view value) const;
  absl::StatusOr<int64_t> Len() const;
  absl::StatusOr<std::vector<std::string>> Slice(
      std::optional<int64_t> start = {},
      std::optional<int64_t> stop = {}) const;
  absl::Status Clear() const;
  // Atomically adds a decimal `delta` to the number at `index`; returns the
  // new value.
  absl::StatusOr<std::string> Add(int64_t index, absl::string_view delta) const;
  // list.index(value, start, stop): NotFound when absent.
  absl::StatusOr<int64_t> Index(absl::string_view value,
                                std::optional<int64_t> start = {},
                                std::optional<int64_t> stop = {}) const;
  absl::StatusOr<int64_t> Count(absl::string_view value) const;
  // `value in l`.
  absl::StatusOr<bool> Contains(absl::string_view value) const;
  absl::Status Reverse() const;
  // list.sort(key=..., reverse=...) with a key the server computes: "bytes"
  // (default), "int" or "float". InvalidArgument (list unchanged) if an
  // item does not parse.
  absl::Status Sort(absl::string_view key = "bytes",
                    bool reverse = false) const;
  // l *= n; returns the new length.
  absl::StatusOr<int64_t> Repeat(int64_t n) const;
  // l[start:stop] = values / del l[start:stop]; return the new length.
  absl::StatusOr<int64_t> SetSlice(
      std::optional<int64_t> start, std::optional<int64_t> stop,
      const std::vector<std::string>& values) const;
  absl::StatusOr<int64_t> DeleteSlice(std::optional<int64_t> start,
                                      std::optional<int64_t> stop) const;

 private:
  friend class Manager;
  List(Manager* m, std::string name)
      : ManagerProxy(m, std::move(name), v1::OBJECT_TYPE_LIST) {}
};

class Value : public ManagerProxy {
 public:
  absl::StatusOr<std::string> Get() const;
  absl::Status Set(absl::string_view value) const;
  absl::StatusOr<std::string> Add(absl::string_view delta) const;
  // Aborted when the stored value is not `expected`.
  absl::Status CompareAndSet(absl::string_view expected,
                             absl::string_view value) const;

 private:
  friend class Manager;
  Value(Manager* m, std::string name, std::string typecode = "")
      : ManagerProxy(m, std::move(name), v1::OBJECT_TYPE_VALUE),
        typecode_(std::move(typecode)) {}
  std::string typecode_;
};

// Fixed-length numbers as decimal text, typed by an `array` typecode
// (b B h H i I l L q Q f d; none = "q", int64). Out-of-range elements fail
// with OutOfRange, as Python's OverflowError.
class Array : public ManagerProxy {
 public:
  absl::StatusOr<std::string> Get(int64_t index) const;
  absl::Status Set(int64_t index, absl::string_view value) const;
  absl::StatusOr<std::string> Add(int64_t index, absl::string_view delta) const;
  absl::StatusOr<std::vector<std::string>> Slice(
      std::optional<int64_t> start = {},
      std::optional<int64_t> stop = {}) const;
  absl::StatusOr<int64_t> Len() const;
  // a[start:stop] = values; the count must match (InvalidArgument).
  absl::Status SetSlice(std::optional<int64_t> start,
                        std::optional<int64_t> stop,
                        const std::vector<std::string>& values) const;

 private:
  friend class Manager;
  Array(Manager* m, std::string name, int64_t length, std::string typecode,
        std::vector<std::string> initial = {})
      : ManagerProxy(m, std::move(name), v1::OBJECT_TYPE_ARRAY),
        length_(length),
        typecode_(std::move(typecode)),
        initial_(std::move(initial)) {}
  v1::ManagerCall Base(absl::string_view op) const;
  int64_t length_;
  std::string typecode_;
  std::vector<std::string> initial_;
};

class Namespace : public ManagerProxy {
 public:
  absl::StatusOr<std::string> Get(absl::string_view attr) const;
  absl::Status Set(absl::string_view attr, absl::string_view value) const;
  absl::Status Delete(absl::string_view attr) const;
  absl::StatusOr<std::map<std::string, std::string>> List() const;

 private:
  friend class Manager;
  Namespace(Manager* m, std::string name)
      : ManagerProxy(m, std::move(name), v1::OBJECT_TYPE_NAMESPACE) {}
};

class Queue : public ManagerProxy {
 public:
  // Blocks while full; ResourceExhausted after `timeout` (zero = no wait).
  absl::Status Put(absl::string_view item,
                   absl::Duration timeout = absl::InfiniteDuration()) const;
  // Blocks while empty; DeadlineExceeded after `timeout`.
  absl::StatusOr<std::string> Get(
      absl::Duration timeout = absl::InfiniteDuration()) const;
  // size, maxsize, empty, full, unfinished.
  absl::StatusOr<v1::QueueResponse> Size() const;
  absl::Status TaskDone() const;
  absl::Status Join(absl::Duration timeout = absl::InfiniteDuration()) const;
  // put_nowait / get_nowait: ResourceExhausted (Full) / DeadlineExceeded
  // (Empty) instead of waiting.
  absl::Status PutNowait(absl::string_view item) const {
    return Put(item, absl::ZeroDuration());
  }
  absl::StatusOr<std::string> GetNowait() const {
    return Get(absl::ZeroDuration());
  }

 private:
  friend class Manager;
  Queue(Manager* m, std::string name, int64_t maxsize)
      : ManagerProxy(m, std::move(name), v1::OBJECT_TYPE_QUEUE),
        maxsize_(maxsize) {}
  int64_t maxsize_;
};

// End 0 and end 1; each sends to the other.
class Pipe : public ManagerProxy {
 public:
  absl::Status Send(int end, absl::string_view message) const;
  absl::StatusOr<std::string> Recv(
      int end, absl::Duration timeout = absl::InfiniteDuration()) const;
  absl::StatusOr<bool> Poll(int end) const;

 private:
  friend class Manager;
  Pipe(Manager* m, std::string name, bool one_way)
      : ManagerProxy(m, std::move(name), v1::OBJECT_TYPE_PIPE),
        one_way_(one_way) {}
  bool one_way_;
};

// Releases a held lock when destroyed. Move-only.
class LockGuard {
 public:
  LockGuard(LockGuard&& other) noexcept;
  LockGuard& operator=(LockGuard&& other) noexcept;
  ~LockGuard();
  uint64_t token() const { return token_; }
  // Releases now (idempotent); the error of the release RPC, if any.
  absl::Status Release();

 private:
  friend class BasicLock;
  LockGuard(Manager* m, std::string name, bool reentrant, uint64_t token)
      : m_(m), name_(std::move(name)), reentrant_(reentrant), token_(token) {}
  Manager* m_;
  std::string name_;
  bool reentrant_;
  uint64_t token_;
};

struct LockGrant {
  bool acquired = false;
  // Strictly increasing per lock; pass it to the protected resource.
  uint64_t token = 0;
};

// Lock and RLock. An RLock is re-entrant per calling thread (its owner is
// session + thread); a Lock is not.
class BasicLock : public ManagerProxy {
 public:
  // acquired = false when `timeout` passed first.
  absl::StatusOr<LockGrant> Acquire(
      absl::Duration timeout = absl::InfiniteDuration()) const;
  absl::Status Release() const;
  // Acquires and returns a guard; DeadlineExceeded when `timeout` passed.
  absl::StatusOr<LockGuard> Guard(
      absl::Duration timeout = absl::InfiniteDuration()) const;

 protected:
  BasicLock(Manager* m, std::string name, bool reentrant)
      : ManagerProxy(m, std::move(name),
                     reentrant ? v1::OBJECT_TYPE_RLOCK : v1::OBJECT_TYPE_LOCK),
        reentrant_(reentrant) {}

 private:
  bool reentrant_;
};

class Lock final : public BasicLock {
 private:
  friend class Manager;
  Lock(Manager* m, std::string name) : BasicLock(m, std::move(name), false) {}
};

class RLock final : public BasicLock {
 private:
  friend class Manager;
  RLock(Manager* m, std::string name) : BasicLock(m, std::move(name), true) {}
};

class Semaphore : public ManagerProxy {
 public:
  // False when `timeout` passed first.
  absl::StatusOr<bool> Acquire(
      absl::Duration timeout = absl::InfiniteDuration()) const;
  // BoundedSemaphore: FailedPrecondition beyond the initial value.
  absl::Status Release() const;
  absl::StatusOr<int64_t> Value() const;

 private:
  friend class Manager;
  Semaphore(Manager* m, std::string name, int64_t initial, bool bounded)
      : ManagerProxy(m, std::move(name),
                     bounded ? v1::OBJECT_TYPE_BOUNDED_SEMAPHORE
                             : v1::OBJECT_TYPE_SEMAPHORE),
        initial_(initial),
        bounded_(bounded) {}
  v1::ManagerCall Base(absl::string_view op) const;
  int64_t initial_;
  bool bounded_;
};

class Event : public ManagerProxy {
 public:
  absl::Status Set() const;
  absl::Status Clear() const;
  absl::StatusOr<bool> IsSet() const;
  // False when `timeout` passed first.
  absl::StatusOr<bool> Wait(
      absl::Duration timeout = absl::InfiniteDuration()) const;

 private:
  friend class Manager;
  Event(Manager* m, std::string name)
      : ManagerProxy(m, std::move(name), v1::OBJECT_TYPE_EVENT) {}
};

// multiprocessing.Barrier: Wait returns this party's arrival index (0 ..
// parties-1); a broken barrier (a wait timed out, Abort, a party cancelled)
// fails Wait with FailedPrecondition until Reset.
class Barrier : public ManagerProxy {
 public:
  absl::StatusOr<int64_t> Wait(
      absl::Duration timeout = absl::InfiniteDuration()) const;
  absl::Status Abort() const;
  absl::Status Reset() const;
  // parties / n_waiting / broken.
  absl::StatusOr<v1::BarrierResponse> State() const;

 private:
  friend class Manager;
  Barrier(Manager* m, std::string name, int64_t parties)
      : ManagerProxy(m, std::move(name), v1::OBJECT_TYPE_BARRIER),
        parties_(parties) {}
  v1::ManagerCall Base(absl::string_view op) const;
  int64_t parties_;
};

// Condition with its own re-entrant lock; owner = session + thread.
class Condition : public ManagerProxy {
 public:
  absl::StatusOr<bool> Acquire(
      absl::Duration timeout = absl::InfiniteDuration()) const;
  absl::Status Release() const;
  // Requires holding the lock. Returns false when `timeout` passed first;
  // the lock is held again either way.
  absl::StatusOr<bool> Wait(
      absl::Duration timeout = absl::InfiniteDuration()) const;
  // Returns how many waiters were woken.
  absl::StatusOr<int> Notify(int n = 1) const;
  absl::StatusOr<int> NotifyAll() const;

 private:
  friend class Manager;
  Condition(Manager* m, std::string name)
      : ManagerProxy(m, std::move(name), v1::OBJECT_TYPE_CONDITION) {}
  v1::ManagerCall Base(absl::string_view op, absl::Duration timeout) const;
};

// A connection to forqd's ManagerService. Thread-safe; share one per
// process (one session).
class Manager {
 public:
  explicit Manager(std::shared_ptr<grpc::Channel> channel,
                   ManagerOptions options = {});
  explicit Manager(const Client& client, ManagerOptions options = {});
  // Stops the keepalive thread and closes the session (releasing whatever
  // it still holds).
  ~Manager();
  Manager(const Manager&) = delete;
  Manager& operator=(const Manager&) = delete;

  Dict dict(absl::string_view name) { return Dict(this, std::string(name)); }
  List list(absl::string_view name) { return List(this, std::string(name)); }
  Value value(absl::string_view name) { return Value(this, std::string(name)); }
  // Value(typecode, 0): a number range-checked by `typecode`.
  Value value(absl::string_view name, absl::string_view typecode) {
    return Value(this, std::string(name), std::string(typecode));
  }
  // `length` and `typecode` create the array on first use.
  Array array(absl::string_view name, int64_t length = 0,
              absl::string_view typecode = "") {
    return Array(this, std::string(name), length, std::string(typecode));
  }
  // Array(typecode, [initial values]).
  Array array(absl::string_view name, absl::string_view typecode,
              std::vector<std::string> initial) {
    return Array(this, std::string(name), 0, std::string(typecode),
                 std::move(initial));
  }
  Barrier barrier(absl::string_view name, int64_t parties = 0) {
    return Barrier(this, std::string(name), parties);
  }
  Namespace ns(absl::string_view name) {
    return Namespace(this, std::string(name));
  }
  Queue queue(absl::string_view name, int64_t maxsize = 0) {
    return Queue(this, std::string(name), maxsize);
  }
  Pipe pipe(absl::string_view name, bool one_way = false) {
    return Pipe(this, std::string(name), one_way);
  }
  Lock lock(absl::string_view name) { return Lock(this, std::string(name)); }
  RLock rlock(absl::string_view name) { return RLock(this, std::string(name)); }
  Semaphore semaphore(absl::string_view name, int64_t value = 1) {
    return Semaphore(this, std::string(name), value, false);
  }
  Semaphore bounded_semaphore(absl::string_view name, int64_t value = 1) {
    return Semaphore(this, std::string(name), value, true);
  }
  Event event(absl::string_view name) { return Event(this, std::string(name)); }
  Condition condition(absl::string_view name) {
    return Condition(this, std::string(name));
  }

  // The object a stored value refers to (a proxy's Ref()); nullopt for a
  // plain value. Resolve it with the accessor of its type, e.g.
  //   auto r = Manager::ParseRef(*outer.Get(0));
  //   if (r && r->type == v1::OBJECT_TYPE_DICT) manager.dict(r->name).Set(..);
  struct ObjectRef {
    v1::ObjectType type = v1::OBJECT_TYPE_UNSPECIFIED;
    std::string name;
  };
  static std::optional<ObjectRef> ParseRef(absl::string_view value);

  // The session id, opening the session (and the keepalive thread) if
  // needed.
  absl::StatusOr<std::string> session() ABSL_LOCKS_EXCLUDED(mu_);
  // Closes the session now; its holdings are released.
  absl::Status CloseSession() ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<v1::ListObjectsResponse> ListObjects(absl::string_view prefix);
  absl::StatusOr<bool> DeleteObject(absl::string_view name);

  // Runs any operation (type + op name + fields, see docs/manager.md) and
  // waits for its result; the proxies above are shorthands for this.
  // `wait` is how long the server may block it (infinite: no limit).
  absl::StatusOr<v1::ManagerResult> Call(
      const v1::ManagerCall& call, absl::Duration wait = absl::ZeroDuration());
  // Sends an operation without waiting: with options.pipelined, any number
  // may be in flight on the session stream and they complete in any order
  // (a blocking one delays none of the others). Without it, runs the call
  // now and returns a ready future.
  ManagerFuture Async(const v1::ManagerCall& call);
  // A call with type, op and name filled in.
  static v1::ManagerCall MakeCall(v1::ObjectType type, absl::string_view op,
                                  absl::string_view name);

  const ManagerOptions& options() const { return options_; }

  // Internal: the RPC plumbing.
  struct Rpc;

 private:
  void KeepAliveLoop() ABSL_LOCKS_EXCLUDED(mu_);

  const ManagerOptions options_;
  std::unique_ptr<Rpc> rpc_;
  Mutex mu_;
  CondVar cv_;
  std::string session_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread keepalive_;
};

}  // namespace forq

#endif  // FORQ_CLIENT_MANAGER_H_
