// The Manager's operation table: every operation of every shared-object
// type, once. The gRPC handlers (server/manager/manager_service.cc), the
// generic Call/Session dispatch, the task-side codec's validation
// (worker/manager_protocol.cc), the C++ proxies and the `forq manager` CLI
// are all driven by FORQ_MANAGER_OPS below; manager.proto declares one RPC
// per row (a test checks both agree). Adding an operation is one row here,
// one rpc line in manager.proto, and its semantics in server/manager/.
//
// Plain C++ (no protobuf), so worker/ can use it too.
#ifndef FORQ_API_FORQ_V1_MANAGER_OPS_H_
#define FORQ_API_FORQ_V1_MANAGER_OPS_H_

#include <cstdint>
#include <string>
#include <string_view>

namespace forq::v1 {

// X(Token, number, name). Numbers match forq.v1.ObjectType.
#define FORQ_MANAGER_TYPES(X)                  \
  X(Dict, 1, "dict")                           \
  X(List, 2, "list")                           \
  X(Value, 3, "value")                         \
  X(Array, 4, "array")                         \
  X(Namespace, 5, "namespace")                 \
  X(Queue, 6, "queue")                         \
  X(Pipe, 7, "pipe")                           \
  X(Lock, 8, "lock")                           \
  X(RLock, 9, "rlock")                         \
  X(Semaphore, 10, "semaphore")                \
  X(BoundedSemaphore, 11, "bounded_semaphore") \
  X(Condition, 12, "condition")                \
  X(Event, 13, "event")                        \
  X(Barrier, 15, "barrier")                    \
  /* Not an object: open/keepalive/close. */   \
  X(Session, 14, "session")

// X(Token, number, name). The name is the op's wire name in
// ManagerCall.op and its CLI verb.
#define FORQ_MANAGER_OP_NAMES(X)          \
  X(Get, 1, "get")                        \
  X(Set, 2, "set")                        \
  X(Delete, 3, "delete")                  \
  X(Contains, 4, "contains")              \
  X(Keys, 5, "keys")                      \
  X(Items, 6, "items")                    \
  X(Len, 7, "len")                        \
  X(Update, 8, "update")                  \
  X(Clear, 9, "clear")                    \
  X(CompareAndSet, 10, "compare_and_set") \
  X(SetIfAbsent, 11, "set_if_absent")     \
  X(Append, 12, "append")                 \
  X(Extend, 13, "extend")                 \
  X(Pop, 14, "pop")                       \
  X(Insert, 15, "insert")                 \
  X(Remove, 16, "remove")                 \
  X(Slice, 17, "slice")                   \
  X(Add, 18, "add")                       \
  X(Put, 19, "put")                       \
  X(Size, 20, "size")                     \
  X(TaskDone, 21, "task_done")            \
  X(Join, 22, "join")                     \
  X(Send, 23, "send")                     \
  X(Recv, 24, "recv")                     \
  X(Poll, 25, "poll")                     \
  X(Acquire, 26, "acquire")               \
  X(Release, 27, "release")               \
  X(Value, 28, "value")                   \
  X(Wait, 29, "wait")                     \
  X(Notify, 30, "notify")                 \
  X(NotifyAll, 31, "notify_all")          \
  X(IsSet, 32, "is_set")                  \
  X(Open, 33, "open")                     \
  X(KeepAlive, 34, "keepalive")           \
  X(Close, 35, "close")                   \
  X(Index, 36, "index")                   \
  X(Count, 37, "count")                   \
  X(Reverse, 38, "reverse")               \
  X(Sort, 39, "sort")                     \
  X(Repeat, 40, "repeat")                 \
  X(SetSlice, 41, "set_slice")            \
  X(DeleteSlice, 42, "delete_slice")      \
  X(PopItem, 43, "popitem")               \
  X(Values, 44, "values")                 \
  X(Abort, 45, "abort")                   \
  X(Reset, 46, "reset")

enum class ManagerType : uint8_t {
#define FORQ_X(T, n, name) k##T = n,
  FORQ_MANAGER_TYPES(FORQ_X)
#undef FORQ_X
};
inline constexpr uint8_t kMaxManagerType = 15;

enum class ManagerOp : uint8_t {
#define FORQ_X(T, n, name) k##T = n,
  FORQ_MANAGER_OP_NAMES(FORQ_X)
#undef FORQ_X
};
inline constexpr uint8_t kMaxManagerOp = 46;

// Flags of an operation.
enum ManagerOpFlag : uint32_t {
  kManagerReads = 0,
  // May park server-side (takes a timeout).
  kManagerBlocks = 1u << 0,
  // Changes a persisted object: its reply waits until the change is durable.
  kManagerMutates = 1u << 1,
  // Needs a session (lock holds and permits are owned by sessions).
  kManagerSession = 1u << 2,
};

// What the CLI prints from a successful reply.
enum class ManagerOut : uint8_t {
  kNone,
  kValue,       // the value
  kFound,       // true/false from `found`
  kLength,      // the length / size / permits
  kLines,       // values, one per line
  kWords,       // values, space-separated
  kItems,       // KEY=VALUE lines, in order
  kFlag,        // true/false from `flag`
  kFlagOrFail,  // as kFlag, but exit 1 when false (wait timed out)
  kCount,       // woken / released / index / count
  kGrant,       // session=ID token=N (lock and condition acquire)
  kPermit,      // session=ID value=N (semaphore acquire)
  kSession,     // the session id
};

// The table. X(TYPE, OP, Rpc, Family, flags, "CLI ARGS", out):
//   Rpc     the ManagerService method (manager.proto);
//   Family  its message pair <Family>Request / <Family>Response;
//   CLI ARGS positional arguments, parsed by the CLI: KEY ATTR VALUE ITEM
//           MESSAGE EXPECTED DELTA INDEX [INDEX] [START] [STOP] [N] VALUES...
//           KEY=VALUE... (see client/cli/cmd_manager.cc).
// clang-format off
#define FORQ_MANAGER_OPS(X)                                                                              \
  X(Dict, Get, DictGet, Dict, kManagerReads, "KEY", kValue)                                              \
  X(Dict, Set, DictSet, Dict, kManagerMutates, "KEY VALUE", kNone)                                       \
  X(Dict, Delete, DictDelete, Dict, kManagerMutates, "KEY", kFound)                                      \
  X(Dict, Contains, DictContains, Dict, kManagerReads, "KEY", kFound)                                    \
  X(Dict, Keys, DictKeys, Dict, kManagerReads, "", kLines)                                               \
  X(Dict, Items, DictItems, Dict, kManagerReads, "", kItems)                                             \
  X(Dict, Len, DictLen, Dict, kManagerReads, "", kLength)                                                \
  X(Dict, Update, DictUpdate, Dict, kManagerMutates, "KEY=VALUE...", kLength)                            \
  X(Dict, Clear, DictClear, Dict, kManagerMutates, "", kNone)                                            \
  X(Dict, CompareAndSet, DictCompareAndSet, Dict, kManagerMutates, "KEY EXPECTED VALUE", kNone)          \
  X(Dict, SetIfAbsent, DictSetIfAbsent, Dict, kManagerMutates, "KEY VALUE", kValue)                      \
  X(Dict, Values, DictValues, Dict, kManagerReads, "", kLines)                                           \
  X(Dict, PopItem, DictPopItem, Dict, kManagerMutates, "", kItems)                                       \
  X(List, Append, ListAppend, List, kManagerMutates, "VALUE", kLength)                                   \
  X(List, Extend, ListExtend, List, kManagerMutates, "VALUES...", kLength)                               \
  X(List, Get, ListGet, List, kManagerReads, "INDEX", kValue)                                            \
  X(List, Set, ListSet, List, kManagerMutates, "INDEX VALUE", kNone)                                     \
  X(List, Pop, ListPop, List, kManagerMutates, "[INDEX]", kValue)                                        \
  X(List, Insert, ListInsert, List, kManagerMutates, "INDEX VALUE", kNone)                               \
  X(List, Remove, ListRemove, List, kManagerMutates, "VALUE", kNone)                                     \
  X(List, Len, ListLen, List, kManagerReads, "", kLength)                                                \
  X(List, Slice, ListSlice, List, kManagerReads, "[START] [STOP]", kLines)                               \
  X(List, Clear, ListClear, List, kManagerMutates, "", kNone)                                            \
  X(List, Add, ListAdd, List, kManagerMutates, "INDEX DELTA", kValue)                                    \
  X(List, Index, ListIndex, List, kManagerReads, "VALUE [START] [STOP]", kCount)                         \
  X(List, Count, ListCount, List, kManagerReads, "VALUE", kCount)                                        \
  X(List, Contains, ListContains, List, kManagerReads, "VALUE", kFound)                                  \
  X(List, Reverse, ListReverse, List, kManagerMutates, "", kNone)                                        \
  X(List, Sort, ListSort, List, kManagerMutates, "[KEY]", kNone)                                              \
  X(List, Repeat, ListRepeat, List, kManagerMutates, "N", kLength)                                       \
  X(List, SetSlice, ListSetSlice, List, kManagerMutates, "START STOP VALUES...", kLength)                 \
  X(List, DeleteSlice, ListDeleteSlice, List, kManagerMutates, "START STOP", kLength)                    \
  X(Value, Get, ValueGet, Value, kManagerReads, "", kValue)                                              \
  X(Value, Set, ValueSet, Value, kManagerMutates, "VALUE", kNone)                                        \
  X(Value, Add, ValueAdd, Value, kManagerMutates, "DELTA", kValue)                                       \
  X(Value, CompareAndSet, ValueCompareAndSet, Value, kManagerMutates, "EXPECTED VALUE", kValue)          \
  X(Array, Get, ArrayGet, Array, kManagerReads, "INDEX", kValue)                                         \
  X(Array, Set, ArraySet, Array, kManagerMutates, "INDEX VALUE", kValue)                                 \
  X(Array, Add, ArrayAdd, Array, kManagerMutates, "INDEX DELTA", kValue)                                 \
  X(Array, Slice, ArraySlice, Array, kManagerReads, "[START] [STOP]", kWords)                            \
  X(Array, Len, ArrayLen, Array, kManagerReads, "", kLength)                                             \
  X(Array, SetSlice, ArraySetSlice, Array, kManagerMutates, "START STOP VALUES...", kLength)              \
  X(Namespace, Get, NamespaceGet, Namespace, kManagerReads, "ATTR", kValue)                              \
  X(Namespace, Set, NamespaceSet, Namespace, kManagerMutates, "ATTR VALUE", kNone)                       \
  X(Namespace, Delete, NamespaceDelete, Namespace, kManagerMutates, "ATTR", kNone)                       \
  X(Namespace, Items, NamespaceList, Namespace, kManagerReads, "", kItems)                               \
  X(Queue, Put, QueuePut, Queue, kManagerMutates | kManagerBlocks, "ITEM", kNone)                        \
  X(Queue, Get, QueueGet, Queue, kManagerMutates | kManagerBlocks, "", kValue)                           \
  X(Queue, Size, QueueSize, Queue, kManagerReads, "", kLength)                                           \
  X(Queue, TaskDone, QueueTaskDone, Queue, kManagerMutates, "", kNone)                                   \
  X(Queue, Join, QueueJoin, Queue, kManagerBlocks, "", kNone)                                            \
  X(Pipe, Send, PipeSend, Pipe, kManagerMutates, "MESSAGE", kNone)                                       \
  X(Pipe, Recv, PipeRecv, Pipe, kManagerMutates | kManagerBlocks, "", kValue)                            \
  X(Pipe, Poll, PipePoll, Pipe, kManagerReads, "", kFlag)                                                \
  X(Lock, Acquire, LockAcquire, Lock, kManagerBlocks | kManagerSession, "", kGrant)                      \
  X(Lock, Release, LockRelease, Lock, kManagerSession, "", kNone)                                        \
  X(RLock, Acquire, RLockAcquire, Lock, kManagerBlocks | kManagerSession, "", kGrant)                    \
  X(RLock, Release, RLockRelease, Lock, kManagerSession, "", kNone)                                      \
  X(Semaphore, Acquire, SemaphoreAcquire, Semaphore, kManagerBlocks | kManagerSession, "", kPermit)      \
  X(Semaphore, Release, SemaphoreRelease, Semaphore, kManagerReads, "", kLength)                         \
  X(Semaphore, Value, SemaphoreValue, Semaphore, kManagerReads, "", kLength)                             \
  X(BoundedSemaphore, Acquire, BoundedSemaphoreAcquire, Semaphore, kManagerBlocks | kManagerSession, "", kPermit) \
  X(BoundedSemaphore, Release, BoundedSemaphoreRelease, Semaphore, kManagerReads, "", kLength)           \
  X(BoundedSemaphore, Value, BoundedSemaphoreValue, Semaphore, kManagerReads, "", kLength)               \
  X(Condition, Acquire, ConditionAcquire, Condition, kManagerBlocks | kManagerSession, "", kGrant)       \
  X(Condition, Release, ConditionRelease, Condition, kManagerSession, "", kNone)                         \
  X(Condition, Wait, ConditionWait, Condition, kManagerBlocks | kManagerSession, "", kFlagOrFail)        \
  X(Condition, Notify, ConditionNotify, Condition, kManagerSession, "[N]", kCount)                       \
  X(Condition, NotifyAll, ConditionNotifyAll, Condition, kManagerSession, "", kCount)                    \
  X(Event, Set, EventSet, Event, kManagerMutates, "", kNone)                                             \
  X(Event, Clear, EventClear, Event, kManagerMutates, "", kNone)                                         \
  X(Event, IsSet, EventIsSet, Event, kManagerReads, "", kFlag)                                           \
  X(Event, Wait, EventWait, Event, kManagerBlocks, "", kFlagOrFail)                                      \
  X(Barrier, Wait, BarrierWait, Barrier, kManagerBlocks, "", kCount)                                     \
  X(Barrier, Abort, BarrierAbort, Barrier, kManagerReads, "", kNone)                                     \
  X(Barrier, Reset, BarrierReset, Barrier, kManagerReads, "", kNone)                                     \
  X(Barrier, Size, BarrierState, Barrier, kManagerReads, "", kLength)                                     \
  X(Session, Open, OpenSession, OpenSession, kManagerReads, "", kSession)                                \
  X(Session, KeepAlive, KeepAlive, KeepAlive, kManagerReads, "", kNone)                                  \
  X(Session, Close, CloseSession, CloseSession, kManagerReads, "", kCount)
// clang-format on

struct ManagerOpSpec {
  ManagerType type;
  ManagerOp op;
  const char* rpc;
  uint32_t flags;
  const char* cli_args;
  ManagerOut out;

  bool blocks() const { return (flags & kManagerBlocks) != 0; }
  bool mutates() const { return (flags & kManagerMutates) != 0; }
  bool needs_session() const { return (flags & kManagerSession) != 0; }
};

inline constexpr ManagerOpSpec kManagerOps[] = {
#define FORQ_X(T, O, Rpc, Family, flags, args, out) \
  {                                                 \
      ManagerType::k##T,                            \
      ManagerOp::k##O,                              \
      #Rpc,                                         \
      static_cast<uint32_t>(flags),                 \
      args,                                         \
      ManagerOut::out},
    FORQ_MANAGER_OPS(FORQ_X)
#undef FORQ_X
};

// The row of (type, op), or nullptr when the type has no such operation.
constexpr const ManagerOpSpec* FindManagerOp(ManagerType type, ManagerOp op) {
  for (const ManagerOpSpec& s : kManagerOps) {
    if (s.type == type && s.op == op) return &s;
  }
  return nullptr;
}

// Lower-case names ("dict", "get"); "unknown" for a number out of range.
constexpr const char* ManagerTypeName(ManagerType type) {
  switch (type) {
#define FORQ_X(T, n, name) \
  case ManagerType::k##T:  \
    return name;
    FORQ_MANAGER_TYPES(FORQ_X)
#undef FORQ_X
  }
  return "unknown";
}

constexpr const char* ManagerOpName(ManagerOp op) {
  switch (op) {
#define FORQ_X(T, n, name) \
  case ManagerOp::k##T:    \
    return name;
    FORQ_MANAGER_OP_NAMES(FORQ_X)
#undef FORQ_X
  }
  return "unknown";
}

// Reverse lookups by name; false when there is none.
constexpr bool ParseManagerType(std::string_view name, ManagerType* type) {
#define FORQ_X(T, n, str)      \
  if (name == str) {           \
    *type = ManagerType::k##T; \
    return true;               \
  }
  FORQ_MANAGER_TYPES(FORQ_X)
#undef FORQ_X
  return false;
}

constexpr bool ParseManagerOp(std::string_view name, ManagerOp* op) {
#define FORQ_X(T, n, str)  \
  if (name == str) {       \
    *op = ManagerOp::k##T; \
    return true;           \
  }
  FORQ_MANAGER_OP_NAMES(FORQ_X)
#undef FORQ_X
  return false;
}

// Shared objects inside shared objects (as Python's `l.append(
// manager.dict())`): a stored value that is exactly kManagerRefPrefix +
// type name + ":" + object name refers to that object. The server refuses
// to store a reference to an object that does not exist or has another
// type, and to delete an object while a stored value refers to it.
inline constexpr std::string_view kManagerRefPrefix{"\0forq.ref:", 10};

inline std::string MakeManagerRef(ManagerType type, std::string_view name) {
  std::string r(kManagerRefPrefix);
  r.append(ManagerTypeName(type));
  r.push_back(':');
  r.append(name);
  return r;
}

// True when `value` is a reference (then `type` and `name` are set).
constexpr bool ParseManagerRef(std::string_view value, ManagerType* type,
                               std::string_view* name) {
  if (value.substr(0, kManagerRefPrefix.size()) != kManagerRefPrefix) {
    return false;
  }
  value.remove_prefix(kManagerRefPrefix.size());
  const size_t colon = value.find(':');
  if (colon == std::string_view::npos ||
      !ParseManagerType(value.substr(0, colon), type)) {
    return false;
  }
  *name = value.substr(colon + 1);
  return true;
}

}  // namespace forq::v1

#endif  // FORQ_API_FORQ_V1_MANAGER_OPS_H_
