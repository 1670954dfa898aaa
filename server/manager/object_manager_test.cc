#include "server/manager/object_manager.h"

#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include "common/mutex.h"
#include "common/notification.h"
#include "server/store/memory_store.h"
#include "tests/testing/status_matchers.h"

namespace forq::server {
namespace {

using ::forq::testing::IsOk;
using ::forq::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::Pair;
using worker::ManagerOp;
using worker::ManagerReply;
using worker::ManagerRequest;
using worker::ManagerType;

ManagerRequest Req(ManagerType type, ManagerOp op, std::string name) {
  ManagerRequest r;
  r.type = type;
  r.op = op;
  r.name = std::move(name);
  return r;
}

// A parked (or immediate) call whose outcome the test waits for.
class Call {
 public:
  ObjectManager::Done done() {
    return [this](absl::StatusOr<ManagerReply> r) {
      MutexLock lock(&mu_);
      result_ = std::move(r);
      done_.Notify();
    };
  }
  bool Wait(absl::Duration d = absl::Seconds(10)) {
    return done_.WaitForNotificationWithTimeout(d);
  }
  bool HasResult() { return done_.HasBeenNotified(); }
  absl::StatusOr<ManagerReply> result() {
    MutexLock lock(&mu_);
    return result_;
  }

 private:
  Notification done_;
  Mutex mu_;
  absl::StatusOr<ManagerReply> result_ = absl::UnknownError("pending");
};

class ObjectManagerTest : public ::testing::Test {
 protected:
  absl::StatusOr<ManagerReply> Run(ManagerRequest r) {
    Call c;
    mgr_->Execute(std::move(r), c.done());
    EXPECT_TRUE(c.Wait()) << "operation did not complete";
    return c.result();
  }
  // Starts an operation expected to park; returns its call.
  std::unique_ptr<Call> Start(ManagerRequest r, uint64_t* id = nullptr) {
    auto c = std::make_unique<Call>();
    uint64_t wid = mgr_->Execute(std::move(r), c->done());
    if (id != nullptr) *id = wid;
    return c;
  }
  std::string OpenSession(int64_t ttl_ms = 30000) {
    ManagerRequest r = Req(ManagerType::kSession, ManagerOp::kOpen, "");
    r.ttl_ms = ttl_ms;
    absl::StatusOr<ManagerReply> rep = Run(r);
    EXPECT_THAT(rep, IsOk());
    return rep.ok() ? rep->value : "";
  }
  ManagerRequest Lock(ManagerType t, ManagerOp op, const std::string& name,
                      const std::string& session, int64_t timeout_ms = -1) {
    ManagerRequest r = Req(t, op, name);
    r.session = session;
    r.timeout_ms = timeout_ms;
    return r;
  }

  std::unique_ptr<ObjectManager> mgr_ =
      std::make_unique<ObjectManager>(nullptr, nullptr);
};

TEST_F(ObjectManagerTest, DictOperations) {
  ManagerRequest set = Req(ManagerType::kDict, ManagerOp::kSet, "cfg");
  set.key = "k";
  set.value = "v";
  ASSERT_THAT(Run(set), IsOk());
  ManagerRequest get = Req(ManagerType::kDict, ManagerOp::kGet, "cfg");
  get.key = "k";
  EXPECT_EQ(Run(get)->value, "v");
  get.key = "missing";
  EXPECT_THAT(Run(get), StatusIs(absl::StatusCode::kNotFound));

  ManagerRequest upd = Req(ManagerType::kDict, ManagerOp::kUpdate, "cfg");
  upd.items = {{"a", "1"}, {"b", "2"}};
  EXPECT_EQ(Run(upd)->length, 3);
  EXPECT_THAT(Run(Req(ManagerType::kDict, ManagerOp::kKeys, "cfg"))->values,
              ElementsAre("k", "a", "b"));  // insertion order, as Python
  EXPECT_THAT(Run(Req(ManagerType::kDict, ManagerOp::kItems, "cfg"))->items,
              ElementsAre(Pair("k", "v"), Pair("a", "1"), Pair("b", "2")));
  ManagerRequest has = Req(ManagerType::kDict, ManagerOp::kContains, "cfg");
  has.key = "a";
  EXPECT_TRUE(Run(has)->found);
  ManagerRequest del = Req(ManagerType::kDict, ManagerOp::kDelete, "cfg");
  del.key = "a";
  EXPECT_EQ(Run(del)->value, "1");
  EXPECT_FALSE(Run(has)->found);
  EXPECT_FALSE(Run(del)->found);
  EXPECT_EQ(Run(Req(ManagerType::kDict, ManagerOp::kLen, "cfg"))->length, 2);
  EXPECT_EQ(Run(Req(ManagerType::kDict, ManagerOp::kClear, "cfg"))->length, 0);
}

TEST_F(ObjectManagerTest, DictCompareAndSetConflictIsAborted) {
  ManagerRequest cas = Req(ManagerType::kDict, ManagerOp::kCompareAndSet, "d");
  cas.key = "k";
  cas.expect_absent = true;
  cas.value = "1";
  ASSERT_THAT(Run(cas), IsOk());
  EXPECT_THAT(Run(cas), StatusIs(absl::StatusCode::kAborted));
  cas.expect_absent = false;
  cas.expected = "0";
  cas.value = "2";
  EXPECT_THAT(Run(cas), StatusIs(absl::StatusCode::kAborted));
  cas.expected = "1";
  EXPECT_THAT(Run(cas), IsOk());

  ManagerRequest sd = Req(ManagerType::kDict, ManagerOp::kSetIfAbsent, "d");
  sd.key = "k";
  sd.value = "9";
  absl::StatusOr<ManagerReply> r = Run(sd);
  EXPECT_TRUE(r->found);
  EXPECT_EQ(r->value, "2");
  sd.key = "new";
  r = Run(sd);
  EXPECT_FALSE(r->found);
  EXPECT_EQ(r->value, "9");
}

TEST_F(ObjectManagerTest, WrongTypeIsFailedPrecondition) {
  ASSERT_THAT(Run(Req(ManagerType::kList, ManagerOp::kLen, "x")), IsOk());
  EXPECT_THAT(Run(Req(ManagerType::kDict, ManagerOp::kLen, "x")),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       ::testing::HasSubstr("is a list, not a dict")));
  EXPECT_THAT(Run(Req(ManagerType::kList, ManagerOp::kLen, "bad name!")),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(Run(Req(ManagerType::kList, ManagerOp::kAcquire, "x")),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_F(ObjectManagerTest, ListNegativeIndicesSliceAndAdd) {
  ManagerRequest ext = Req(ManagerType::kList, ManagerOp::kExtend, "l");
  ext.values = {"a", "b", "c", "d"};
  ASSERT_EQ(Run(ext)->length, 4);
  ManagerRequest get = Req(ManagerType::kList, ManagerOp::kGet, "l");
  get.has_index = true;
  get.index = -1;
  EXPECT_EQ(Run(get)->value, "d");
  get.index = -4;
  EXPECT_EQ(Run(get)->value, "a");
  get.index = -5;
  EXPECT_THAT(Run(get), StatusIs(absl::StatusCode::kOutOfRange));
  get.index = 4;
  EXPECT_THAT(Run(get), StatusIs(absl::StatusCode::kOutOfRange));

  ManagerRequest set = Req(ManagerType::kList, ManagerOp::kSet, "l");
  set.has_index = true;
  set.index = -2;
  set.value = "C";
  ASSERT_THAT(Run(set), IsOk());
  ManagerRequest slice = Req(ManagerType::kList, ManagerOp::kSlice, "l");
  slice.has_start = true;
  slice.start = -3;
  slice.has_stop = true;
  slice.stop = -1;
  EXPECT_THAT(Run(slice)->values, ElementsAre("b", "C"));
  slice.has_stop = false;
  slice.start = 10;
  EXPECT_TRUE(Run(slice)->values.empty());

  ManagerRequest pop = Req(ManagerType::kList, ManagerOp::kPop, "l");
  EXPECT_EQ(Run(pop)->value, "d");
  pop.has_index = true;
  pop.index = 0;
  EXPECT_EQ(Run(pop)->value, "a");
  ManagerRequest ins = Req(ManagerType::kList, ManagerOp::kInsert, "l");
  ins.has_index = true;
  ins.index = -100;  // clamps like Python
  ins.value = "0";
  EXPECT_EQ(Run(ins)->length, 3);
  ManagerRequest rm = Req(ManagerType::kList, ManagerOp::kRemove, "l");
  rm.value = "b";
  EXPECT_EQ(Run(rm)->length, 2);
  EXPECT_THAT(Run(rm), StatusIs(absl::StatusCode::kNotFound));

  ManagerRequest add = Req(ManagerType::kList, ManagerOp::kAdd, "l");
  add.has_index = true;
  add.index = 0;
  add.delta = "-5";
  EXPECT_EQ(Run(add)->value, "-5");
  add.delta = "0.5";
  EXPECT_EQ(Run(add)->value, "-4.5");
  add.index = -1;  // "C" is not a number
  EXPECT_THAT(Run(add), StatusIs(absl::StatusCode::kInvalidArgument));
  ASSERT_THAT(Run(Req(ManagerType::kList, ManagerOp::kClear, "l")), IsOk());
  EXPECT_THAT(Run(Req(ManagerType::kList, ManagerOp::kPop, "l")),
              StatusIs(absl::StatusCode::kOutOfRange));
}

TEST_F(ObjectManagerTest, ValueAddAndCompareAndSet) {
  ManagerRequest add = Req(ManagerType::kValue, ManagerOp::kAdd, "v");
  add.delta = "3";
  EXPECT_EQ(Run(add)->value, "3");
  ManagerRequest cas = Req(ManagerType::kValue, ManagerOp::kCompareAndSet, "v");
  cas.expected = "2";
  cas.value = "10";
  EXPECT_THAT(Run(cas), StatusIs(absl::StatusCode::kAborted));
  cas.expected = "3";
  EXPECT_EQ(Run(cas)->value, "10");
  ManagerRequest set = Req(ManagerType::kValue, ManagerOp::kSet, "v");
  set.value = "9223372036854775807";
  ASSERT_THAT(Run(set), IsOk());
  add.delta = "1";
  EXPECT_THAT(Run(add), StatusIs(absl::StatusCode::kOutOfRange));
}

TEST_F(ObjectManagerTest, ArrayIsFixedLengthAndTyped) {
  EXPECT_THAT(Run(Req(ManagerType::kArray, ManagerOp::kLen, "a")),
              StatusIs(absl::StatusCode::kInvalidArgument));
  ManagerRequest mk = Req(ManagerType::kArray, ManagerOp::kLen, "a");
  mk.length = 3;
  EXPECT_EQ(Run(mk)->length, 3);
  ManagerRequest set = Req(ManagerType::kArray, ManagerOp::kSet, "a");
  set.index = -1;
  set.value = "7";
  EXPECT_EQ(Run(set)->value, "7");
  set.value = "1.5";
  EXPECT_THAT(Run(set), StatusIs(absl::StatusCode::kInvalidArgument));
  ManagerRequest add = Req(ManagerType::kArray, ManagerOp::kAdd, "a");
  add.index = 0;
  add.delta = "2";
  EXPECT_EQ(Run(add)->value, "2");
  EXPECT_THAT(Run(Req(ManagerType::kArray, ManagerOp::kSlice, "a"))->values,
              ElementsAre("2", "0", "7"));
  mk.length = 4;
  EXPECT_THAT(Run(mk), StatusIs(absl::StatusCode::kFailedPrecondition));
  ManagerRequest d = Req(ManagerType::kArray, ManagerOp::kAdd, "f");
  d.length = 2;
  d.typecode = "d";
  d.index = 1;
  d.delta = "0.25";
  EXPECT_EQ(Run(d)->value, "0.25");
}

TEST_F(ObjectManagerTest, NamespaceAttributes) {
  ManagerRequest set = Req(ManagerType::kNamespace, ManagerOp::kSet, "ns");
  set.key = "x";
  set.value = "1";
  ASSERT_THAT(Run(set), IsOk());
  ManagerRequest get = Req(ManagerType::kNamespace, ManagerOp::kGet, "ns");
  get.key = "x";
  EXPECT_EQ(Run(get)->value, "1");
  EXPECT_THAT(Run(Req(ManagerType::kNamespace, ManagerOp::kItems, "ns"))->items,
              ElementsAre(Pair("x", "1")));
  ManagerRequest del = Req(ManagerType::kNamespace, ManagerOp::kDelete, "ns");
  del.key = "x";
  ASSERT_THAT(Run(del), IsOk());
  EXPECT_THAT(Run(del), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(Run(get), StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(ObjectManagerTest, QueueMaxsizeBlocksPutUntilGet) {
  ManagerRequest put = Req(ManagerType::kQueue, ManagerOp::kPut, "q");
  put.maxsize = 1;
  put.value = "a";
  ASSERT_THAT(Run(put), IsOk());
  put.value = "b";
  put.timeout_ms = 0;
  EXPECT_THAT(Run(put), StatusIs(absl::StatusCode::kResourceExhausted));
  put.timeout_ms = 20;
  EXPECT_THAT(Run(put), StatusIs(absl::StatusCode::kResourceExhausted));
  put.timeout_ms = -1;
  std::unique_ptr<Call> blocked = Start(put);
  EXPECT_FALSE(blocked->HasResult());
  EXPECT_EQ(mgr_->waiter_count(), 1u);
  EXPECT_EQ(Run(Req(ManagerType::kQueue, ManagerOp::kGet, "q"))->value, "a");
  ASSERT_TRUE(blocked->Wait());
  EXPECT_THAT(blocked->result(), IsOk());
  absl::StatusOr<ManagerReply> size =
      Run(Req(ManagerType::kQueue, ManagerOp::kSize, "q"));
  EXPECT_EQ(size->length, 1);
  EXPECT_TRUE(size->flag);  // full
  EXPECT_EQ(Run(Req(ManagerType::kQueue, ManagerOp::kGet, "q"))->value, "b");
  put.maxsize = 5;
  EXPECT_THAT(Run(put), StatusIs(absl::StatusCode::kFailedPrecondition));
}

TEST_F(ObjectManagerTest, QueueGetTimesOutThenWakesOnPut) {
  ManagerRequest get = Req(ManagerType::kQueue, ManagerOp::kGet, "q");
  get.timeout_ms = 30;
  EXPECT_THAT(Run(get), StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_EQ(mgr_->waiter_count(), 0u);
  get.timeout_ms = -1;
  std::unique_ptr<Call> g1 = Start(get);
  std::unique_ptr<Call> g2 = Start(get);
  ManagerRequest put = Req(ManagerType::kQueue, ManagerOp::kPut, "q");
  put.value = "first";
  ASSERT_THAT(Run(put), IsOk());
  ASSERT_TRUE(g1->Wait());
  EXPECT_EQ(g1->result()->value, "first");  // FIFO among waiters
  EXPECT_FALSE(g2->HasResult());
  put.value = "second";
  ASSERT_THAT(Run(put), IsOk());
  ASSERT_TRUE(g2->Wait());
  EXPECT_EQ(g2->result()->value, "second");
}

// A timeout too long for the clock (a task may send any int64) overflowed
// the deadline: INT64_MAX ms wrapped to 1 ms in the past and the get gave
// up at once (UBSan: signed overflow, found by fuzz_manager_codec). It now
// waits as if no timeout was given.
TEST_F(ObjectManagerTest, TimeoutBeyondTheClockWaitsWithoutGivingUp) {
  ManagerRequest get = Req(ManagerType::kQueue, ManagerOp::kGet, "q");
  get.timeout_ms = std::numeric_limits<int64_t>::max();
  std::unique_ptr<Call> forever = Start(get);
  // Timers fire in deadline order, each answering before the next runs:
  // once this 20 ms one has, a deadline in the past would have fired too.
  ManagerRequest other = Req(ManagerType::kQueue, ManagerOp::kGet, "other");
  other.timeout_ms = 20;
  EXPECT_THAT(Run(other), StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_FALSE(forever->HasResult());
  EXPECT_EQ(mgr_->waiter_count(), 1u);
  ManagerRequest put = Req(ManagerType::kQueue, ManagerOp::kPut, "q");
  put.value = "x";
  ASSERT_THAT(Run(put), IsOk());
  ASSERT_TRUE(forever->Wait());
  EXPECT_EQ(forever->result()->value, "x");
}

TEST_F(ObjectManagerTest, QueueTaskDoneAndJoin) {
  ManagerRequest put = Req(ManagerType::kQueue, ManagerOp::kPut, "q");
  put.value = "x";
  ASSERT_THAT(Run(put), IsOk());
  std::unique_ptr<Call> join =
      Start(Req(ManagerType::kQueue, ManagerOp::kJoin, "q"));
  ASSERT_THAT(Run(Req(ManagerType::kQueue, ManagerOp::kGet, "q")), IsOk());
  EXPECT_FALSE(join->HasResult());
  ASSERT_THAT(Run(Req(ManagerType::kQueue, ManagerOp::kTaskDone, "q")), IsOk());
  ASSERT_TRUE(join->Wait());
  EXPECT_THAT(join->result(), IsOk());
  EXPECT_THAT(Run(Req(ManagerType::kQueue, ManagerOp::kTaskDone, "q")),
              StatusIs(absl::StatusCode::kFailedPrecondition));
}

TEST_F(ObjectManagerTest, PipeEndsSendToEachOther) {
  ManagerRequest send = Req(ManagerType::kPipe, ManagerOp::kSend, "p");
  send.end = 0;
  send.value = "ping";
  ASSERT_THAT(Run(send), IsOk());
  ManagerRequest recv = Req(ManagerType::kPipe, ManagerOp::kRecv, "p");
  recv.end = 1;
  EXPECT_EQ(Run(recv)->value, "ping");
  recv.end = 0;
  std::unique_ptr<Call> waiting = Start(recv);
  send.end = 1;
  send.value = "pong";
  ASSERT_THAT(Run(send), IsOk());
  ASSERT_TRUE(waiting->Wait());
  EXPECT_EQ(waiting->result()->value, "pong");
  recv.timeout_ms = 0;
  EXPECT_THAT(Run(recv), StatusIs(absl::StatusCode::kDeadlineExceeded));

  ManagerRequest oneway = Req(ManagerType::kPipe, ManagerOp::kSend, "ow");
  oneway.one_way = true;
  oneway.end = 0;
  EXPECT_THAT(Run(oneway), StatusIs(absl::StatusCode::kFailedPrecondition));
  oneway.end = 1;
  oneway.value = "m";
  ASSERT_THAT(Run(oneway), IsOk());
  ManagerRequest poll = Req(ManagerType::kPipe, ManagerOp::kPoll, "ow");
  EXPECT_TRUE(Run(poll)->flag);
  oneway.end = 2;
  EXPECT_THAT(Run(oneway), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_F(ObjectManagerTest, LockFencingTokensStrictlyIncrease) {
  const std::string s1 = OpenSession();
  const std::string s2 = OpenSession();
  EXPECT_THAT(Run(Lock(ManagerType::kLock, ManagerOp::kAcquire, "l", "")),
              StatusIs(absl::StatusCode::kInvalidArgument));
  uint64_t last = 0;
  for (int i = 0; i < 5; ++i) {
    absl::StatusOr<ManagerReply> a =
        Run(Lock(ManagerType::kLock, ManagerOp::kAcquire, "l", s1));
    ASSERT_TRUE(a->flag);
    EXPECT_GT(a->token, last);
    last = a->token;
    // Held: a try by another session fails, a release by it is refused.
    EXPECT_FALSE(
        Run(Lock(ManagerType::kLock, ManagerOp::kAcquire, "l", s2, 0))->flag);
    EXPECT_THAT(Run(Lock(ManagerType::kLock, ManagerOp::kRelease, "l", s2)),
                StatusIs(absl::StatusCode::kFailedPrecondition));
    ASSERT_THAT(Run(Lock(ManagerType::kLock, ManagerOp::kRelease, "l", s1)),
                IsOk());
  }
  // A parked waiter gets the lock, with a larger token, on release.
  ASSERT_TRUE(
      Run(Lock(ManagerType::kLock, ManagerOp::kAcquire, "l", s1))->flag);
  std::unique_ptr<Call> w =
      Start(Lock(ManagerType::kLock, ManagerOp::kAcquire, "l", s2));
  EXPECT_FALSE(w->HasResult());
  ASSERT_THAT(Run(Lock(ManagerType::kLock, ManagerOp::kRelease, "l", s1)),
              IsOk());
  ASSERT_TRUE(w->Wait());
  EXPECT_TRUE(w->result()->flag);
  EXPECT_GT(w->result()->token, last);
}

TEST_F(ObjectManagerTest, SessionExpiryReleasesLockAndWakesWaiter) {
  const std::string holder = OpenSession(/*ttl_ms=*/200);
  const std::string other = OpenSession();
  absl::StatusOr<ManagerReply> first =
      Run(Lock(ManagerType::kLock, ManagerOp::kAcquire, "l", holder));
  ASSERT_TRUE(first->flag);
  const absl::Time start = absl::Now();
  std::unique_ptr<Call> w =
      Start(Lock(ManagerType::kLock, ManagerOp::kAcquire, "l", other));
  ASSERT_TRUE(w->Wait(absl::Seconds(5)));
  const absl::Duration waited = absl::Now() - start;
  EXPECT_TRUE(w->result()->flag);
  EXPECT_GT(w->result()->token, first->token);
  EXPECT_GE(waited, absl::Milliseconds(150));  // never early
  EXPECT_EQ(mgr_->session_count(), 1u);
  // The expired session is gone for good.
  EXPECT_THAT(Run(Lock(ManagerType::kLock, ManagerOp::kRelease, "l", holder)),
              StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(ObjectManagerTest, KeepAliveAndCloseSession) {
  const std::string s = OpenSession(200);
  ManagerRequest ka = Req(ManagerType::kSession, ManagerOp::kKeepAlive, "");
  ka.session = s;
  EXPECT_EQ(Run(ka)->length, 200);
  ASSERT_TRUE(
      Run(Lock(ManagerType::kSemaphore, ManagerOp::kAcquire, "sem", s))->flag);
  ManagerRequest close = Req(ManagerType::kSession, ManagerOp::kClose, "");
  close.session = s;
  EXPECT_EQ(Run(close)->count, 1);
  EXPECT_THAT(Run(ka), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(Run(Req(ManagerType::kSemaphore, ManagerOp::kValue, "sem"))->length,
            1);
}

TEST_F(ObjectManagerTest, RLockIsReentrantPerOwner) {
  const std::string s = OpenSession();
  ManagerRequest a = Lock(ManagerType::kRLock, ManagerOp::kAcquire, "r", s);
  a.owner = "t1";
  absl::StatusOr<ManagerReply> r1 = Run(a);
  absl::StatusOr<ManagerReply> r2 = Run(a);
  EXPECT_EQ(r2->count, 2);
  EXPECT_EQ(r1->token, r2->token);
  ManagerRequest other = a;
  other.owner = "t2";
  other.timeout_ms = 0;
  EXPECT_FALSE(Run(other)->flag);
  ManagerRequest rel = Lock(ManagerType::kRLock, ManagerOp::kRelease, "r", s);
  rel.owner = "t2";
  EXPECT_THAT(Run(rel), StatusIs(absl::StatusCode::kFailedPrecondition));
  rel.owner = "t1";
  EXPECT_EQ(Run(rel)->count, 1);
  EXPECT_EQ(Run(rel)->count, 0);
  absl::StatusOr<ManagerReply> r3 = Run(other);
  EXPECT_TRUE(r3->flag);
  EXPECT_GT(r3->token, r1->token);
}

TEST_F(ObjectManagerTest, SemaphoreAndBoundedOverRelease) {
  const std::string s = OpenSession();
  ManagerRequest acq =
      Lock(ManagerType::kBoundedSemaphore, ManagerOp::kAcquire, "b", s);
  acq.has_initial = true;
  acq.initial = 2;
  EXPECT_EQ(Run(acq)->length, 1);
  EXPECT_EQ(Run(acq)->length, 0);
  acq.timeout_ms = 0;
  EXPECT_FALSE(Run(acq)->flag);
  ManagerRequest rel =
      Lock(ManagerType::kBoundedSemaphore, ManagerOp::kRelease, "b", s);
  ASSERT_THAT(Run(rel), IsOk());
  ASSERT_THAT(Run(rel), IsOk());
  EXPECT_THAT(Run(rel), StatusIs(absl::StatusCode::kFailedPrecondition,
                                 ::testing::HasSubstr("too many")));
  // A plain Semaphore may be released beyond its start value.
  ManagerRequest srel = Req(ManagerType::kSemaphore, ManagerOp::kRelease, "s");
  ASSERT_THAT(Run(srel), IsOk());
  EXPECT_EQ(Run(srel)->length, 3);
}

TEST_F(ObjectManagerTest, ConditionNotifyWakesWaiterWithLock) {
  const std::string s1 = OpenSession();
  const std::string s2 = OpenSession();
  EXPECT_THAT(Run(Lock(ManagerType::kCondition, ManagerOp::kWait, "c", s1)),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  ASSERT_TRUE(
      Run(Lock(ManagerType::kCondition, ManagerOp::kAcquire, "c", s1))->flag);
  std::unique_ptr<Call> waiter =
      Start(Lock(ManagerType::kCondition, ManagerOp::kWait, "c", s1));
  // The wait released the lock: s2 can take it and notify.
  ASSERT_TRUE(
      Run(Lock(ManagerType::kCondition, ManagerOp::kAcquire, "c", s2))->flag);
  EXPECT_EQ(
      Run(Lock(ManagerType::kCondition, ManagerOp::kNotify, "c", s2))->count,
      1);
  EXPECT_FALSE(waiter->HasResult());  // needs the lock back first
  ASSERT_THAT(Run(Lock(ManagerType::kCondition, ManagerOp::kRelease, "c", s2)),
              IsOk());
  ASSERT_TRUE(waiter->Wait());
  EXPECT_TRUE(waiter->result()->flag);  // notified
  // Timed-out wait: returns false, lock held again.
  absl::StatusOr<ManagerReply> timed =
      Run(Lock(ManagerType::kCondition, ManagerOp::kWait, "c", s1, 20));
  EXPECT_FALSE(timed->flag);
  EXPECT_FALSE(
      Run(Lock(ManagerType::kCondition, ManagerOp::kAcquire, "c", s2, 0))
          ->flag);
  EXPECT_THAT(Run(Lock(ManagerType::kCondition, ManagerOp::kRelease, "c", s1)),
              IsOk());
}

TEST_F(ObjectManagerTest, EventWaitTimesOutAndWakesOnSet) {
  ManagerRequest wait = Req(ManagerType::kEvent, ManagerOp::kWait, "e");
  wait.timeout_ms = 20;
  absl::StatusOr<ManagerReply> r = Run(wait);
  ASSERT_THAT(r, IsOk());
  EXPECT_FALSE(r->flag);
  wait.timeout_ms = -1;
  std::unique_ptr<Call> a = Start(wait);
  std::unique_ptr<Call> b = Start(wait);
  ASSERT_THAT(Run(Req(ManagerType::kEvent, ManagerOp::kSet, "e")), IsOk());
  ASSERT_TRUE(a->Wait());
  ASSERT_TRUE(b->Wait());
  EXPECT_TRUE(a->result()->flag);
  EXPECT_TRUE(Run(Req(ManagerType::kEvent, ManagerOp::kIsSet, "e"))->flag);
  ASSERT_THAT(Run(Req(ManagerType::kEvent, ManagerOp::kClear, "e")), IsOk());
  EXPECT_FALSE(Run(Req(ManagerType::kEvent, ManagerOp::kIsSet, "e"))->flag);
}

TEST_F(ObjectManagerTest, CancelRemovesWaiter) {
  uint64_t id = 0;
  std::unique_ptr<Call> g =
      Start(Req(ManagerType::kQueue, ManagerOp::kGet, "q"), &id);
  ASSERT_NE(id, 0u);
  mgr_->Cancel(id);
  ASSERT_TRUE(g->Wait());
  EXPECT_THAT(g->result(), StatusIs(absl::StatusCode::kCancelled));
  EXPECT_EQ(mgr_->waiter_count(), 0u);
  // The cancelled getter does not swallow the next item.
  ManagerRequest put = Req(ManagerType::kQueue, ManagerOp::kPut, "q");
  put.value = "kept";
  ASSERT_THAT(Run(put), IsOk());
  EXPECT_EQ(Run(Req(ManagerType::kQueue, ManagerOp::kSize, "q"))->length, 1);

  Call tagged;
  mgr_->Execute(Req(ManagerType::kEvent, ManagerOp::kWait, "e"), tagged.done(),
                "task-1");
  EXPECT_EQ(mgr_->CancelTagged("task-1"), 1);
  ASSERT_TRUE(tagged.Wait());
  EXPECT_THAT(tagged.result(), StatusIs(absl::StatusCode::kCancelled));
}

TEST_F(ObjectManagerTest, ShutdownFailsParkedWaiters) {
  std::unique_ptr<Call> g =
      Start(Req(ManagerType::kQueue, ManagerOp::kGet, "q"));
  mgr_->Shutdown();
  ASSERT_TRUE(g->Wait());
  EXPECT_THAT(g->result(), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(Run(Req(ManagerType::kQueue, ManagerOp::kSize, "q")),
              StatusIs(absl::StatusCode::kUnavailable));
}

TEST_F(ObjectManagerTest, DeleteObjectAbortsWaiters) {
  std::unique_ptr<Call> g =
      Start(Req(ManagerType::kQueue, ManagerOp::kGet, "q"));
  EXPECT_EQ(*mgr_->DeleteObject("q"), true);
  ASSERT_TRUE(g->Wait());
  EXPECT_THAT(g->result(), StatusIs(absl::StatusCode::kAborted));
  // The name is free for another type now.
  EXPECT_THAT(Run(Req(ManagerType::kDict, ManagerOp::kLen, "q")), IsOk());
}

class RecordingSink : public ManagerWatchSink {
 public:
  void Push(const ManagerChange& c) override {
    MutexLock lock(&mu_);
    ops_.push_back(c.op + ":" + c.value);
  }
  void Flush() override {}
  std::vector<std::string> ops() {
    MutexLock lock(&mu_);
    return ops_;
  }

 private:
  Mutex mu_;
  std::vector<std::string> ops_;
};

TEST_F(ObjectManagerTest, WatchSeesChangesInOrder) {
  auto sink = std::make_shared<RecordingSink>();
  uint64_t id = mgr_->Watch("l", sink);
  ManagerRequest app = Req(ManagerType::kList, ManagerOp::kAppend, "l");
  app.value = "1";
  ASSERT_THAT(Run(app), IsOk());
  ASSERT_THAT(Run(Req(ManagerType::kList, ManagerOp::kPop, "l")), IsOk());
  mgr_->Unwatch(id);
  ASSERT_THAT(Run(app), IsOk());
  EXPECT_THAT(sink->ops(), ElementsAre("snapshot:", "append:1", "pop:1"));
}

TEST(ObjectManagerPersistenceTest, ObjectsAndTokenEpochSurviveRestart) {
  MemoryStore store;
  uint64_t old_token = 0;
  auto run = [](ObjectManager& m, ManagerRequest r) {
    Call c;
    m.Execute(std::move(r), c.done());
    EXPECT_TRUE(c.Wait());
    return c.result();
  };
  {
    ObjectManager m(&store, nullptr);
    ASSERT_THAT(m.Recover(), IsOk());
    ManagerRequest set = Req(ManagerType::kDict, ManagerOp::kSet, "cfg");
    set.key = "k";
    set.value = "v";
    ASSERT_THAT(run(m, set), IsOk());
    ManagerRequest ext = Req(ManagerType::kList, ManagerOp::kExtend, "l");
    ext.values = {"1", "2"};
    ASSERT_THAT(run(m, ext), IsOk());
    ManagerRequest put = Req(ManagerType::kQueue, ManagerOp::kPut, "q");
    put.maxsize = 3;
    put.value = "a";
    ASSERT_THAT(run(m, put), IsOk());
    ManagerRequest arr = Req(ManagerType::kArray, ManagerOp::kSet, "arr");
    arr.length = 2;
    arr.typecode = "d";
    arr.index = 1;
    arr.value = "2.5";
    ASSERT_THAT(run(m, arr), IsOk());
    ASSERT_THAT(run(m, Req(ManagerType::kEvent, ManagerOp::kSet, "ev")),
                IsOk());
    ManagerRequest open = Req(ManagerType::kSession, ManagerOp::kOpen, "");
    std::string s = run(m, open)->value;
    ManagerRequest acq = Req(ManagerType::kLock, ManagerOp::kAcquire, "lk");
    acq.session = s;
    old_token = run(m, acq)->token;
    // Deleted objects stay deleted.
    ASSERT_THAT(run(m, Req(ManagerType::kValue, ManagerOp::kGet, "gone")),
                IsOk());
    ManagerRequest vset = Req(ManagerType::kValue, ManagerOp::kSet, "gone");
    vset.value = "x";
    ASSERT_THAT(run(m, vset), IsOk());
    ASSERT_THAT(m.DeleteObject("gone"), IsOk());
  }
  ObjectManager m(&store, nullptr);
  ASSERT_THAT(m.Recover(), IsOk());
  ManagerRequest get = Req(ManagerType::kDict, ManagerOp::kGet, "cfg");
  get.key = "k";
  EXPECT_EQ(run(m, get)->value, "v");
  EXPECT_THAT(run(m, Req(ManagerType::kList, ManagerOp::kSlice, "l"))->values,
              ElementsAre("1", "2"));
  absl::StatusOr<ManagerReply> q =
      run(m, Req(ManagerType::kQueue, ManagerOp::kSize, "q"));
  EXPECT_EQ(q->length, 1);
  EXPECT_EQ(q->maxsize, 3);
  EXPECT_EQ(q->unfinished, 1);
  EXPECT_THAT(
      run(m, Req(ManagerType::kArray, ManagerOp::kSlice, "arr"))->values,
      ElementsAre("0", "2.5"));
  EXPECT_TRUE(run(m, Req(ManagerType::kEvent, ManagerOp::kIsSet, "ev"))->flag);
  std::vector<ManagerObjectInfo> all = m.ListObjects("");
  for (const auto& info : all) EXPECT_NE(info.name, "gone");
  // Locks do not survive (their sessions died), but tokens keep growing.
  ManagerRequest open = Req(ManagerType::kSession, ManagerOp::kOpen, "");
  ManagerRequest acq = Req(ManagerType::kLock, ManagerOp::kAcquire, "lk");
  acq.session = run(m, open)->value;
  absl::StatusOr<ManagerReply> again = run(m, acq);
  ASSERT_TRUE(again->flag);
  EXPECT_GT(again->token, old_token);
  EXPECT_EQ(m.epoch(), 2u);
}

// Shared objects inside shared objects: a stored reference must name an
// existing object of its type, and a referenced object cannot be deleted.
TEST_F(ObjectManagerTest, ReferencesNeverDangle) {
  const std::string inner = v1::MakeManagerRef(ManagerType::kDict, "inner");
  ManagerRequest append = Req(ManagerType::kList, ManagerOp::kAppend, "outer");
  append.value = inner;
  EXPECT_THAT(Run(append), StatusIs(absl::StatusCode::kNotFound));

  ManagerRequest set = Req(ManagerType::kDict, ManagerOp::kSet, "inner");
  set.key = "k";
  set.value = "v";
  ASSERT_THAT(Run(set), IsOk());
  ManagerRequest wrong = append;
  wrong.value = v1::MakeManagerRef(ManagerType::kList, "inner");
  EXPECT_THAT(Run(wrong), StatusIs(absl::StatusCode::kFailedPrecondition));
  ASSERT_THAT(Run(append), IsOk());
  // Also as a dict value and a queue item.
  ManagerRequest in_dict = Req(ManagerType::kDict, ManagerOp::kSet, "by_key");
  in_dict.key = "child";
  in_dict.value = inner;
  ASSERT_THAT(Run(in_dict), IsOk());
  ManagerRequest put = Req(ManagerType::kQueue, ManagerOp::kPut, "q");
  put.value = inner;
  put.timeout_ms = 0;
  ASSERT_THAT(Run(put), IsOk());

  // The list element reads back as the reference.
  ManagerRequest get = Req(ManagerType::kList, ManagerOp::kGet, "outer");
  get.has_index = true;
  get.index = 0;
  auto got = Run(get);
  ASSERT_THAT(got, IsOk());
  ManagerType type{};
  std::string_view name;
  ASSERT_TRUE(v1::ParseManagerRef(got->value, &type, &name));
  EXPECT_EQ(type, ManagerType::kDict);
  EXPECT_EQ(name, "inner");

  // Deleting it is refused while any of the three refers to it.
  EXPECT_THAT(mgr_->DeleteObject("inner"),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  ASSERT_THAT(Run(Req(ManagerType::kList, ManagerOp::kClear, "outer")), IsOk());
  ManagerRequest del = Req(ManagerType::kDict, ManagerOp::kDelete, "by_key");
  del.key = "child";
  ASSERT_THAT(Run(del), IsOk());
  EXPECT_THAT(mgr_->DeleteObject("inner"),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  ManagerRequest take = Req(ManagerType::kQueue, ManagerOp::kGet, "q");
  take.timeout_ms = 0;
  ASSERT_THAT(Run(take), IsOk());
  EXPECT_THAT(mgr_->DeleteObject("inner"),
              ::testing::Eq(absl::StatusOr<bool>(true)));
  // A value that merely starts like a reference but names no type is data.
  ManagerRequest plain = Req(ManagerType::kValue, ManagerOp::kSet, "raw");
  plain.value = std::string(v1::kManagerRefPrefix) + "nonsense";
  EXPECT_THAT(Run(plain), IsOk());
}

}  // namespace
}  // namespace forq::server
