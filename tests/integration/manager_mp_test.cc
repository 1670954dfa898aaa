// The Manager-related cases of CPython's Lib/test/_test_multiprocessing.py
// (3.11: _TestContainers, _TestQueue, _TestLock, _TestSemaphore,
// _TestCondition, _TestEvent, _TestValue, _TestArray, _TestBarrier),
// ported to the C++ proxies against a real forqd, with the same
// expectations. Python's "other process" is another thread with its own
// Manager (its own session and stream). Each case names its origin and runs
// twice: over gRPC, and over forqd's local Manager socket
// (--manager_socket, ManagerOptions::local_socket).
#include <algorithm>
#include <atomic>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include "forq/client.h"
#include "forq/manager.h"
#include "tests/testing/forqd_process.h"
#include "tests/testing/grpc_calls.h"
#include "tests/testing/status_matchers.h"

namespace forq {
namespace {

using ::forq::testing::ForqdProcess;
using ::forq::testing::GrpcCalls;
using ::forq::testing::IsOk;
using ::forq::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::Pair;

std::vector<std::string> Range(int n) {
  std::vector<std::string> out;
  out.reserve(n);
  for (int i = 0; i < n; ++i) out.push_back(absl::StrCat(i));
  return out;
}

class MpManagerBase : public ::testing::Test {
 protected:
  static constexpr char kCall[] = "forq.v1.ManagerService/Call";

  static void SetUpTestSuite() {
    socket_dir_ = new std::string(testing::MakeTempDir("mp-manager"));
    auto p = ForqdProcess::Start(
        {.workers = 1,
         .flags = {absl::StrCat("--manager_socket=", LocalSocket())}});
    if (p.ok()) {
      forqd_ = p->release();
    } else {
      start_error_ = new std::string(p.status().ToString());
    }
  }
  static void TearDownTestSuite() {
    delete forqd_;
    forqd_ = nullptr;
    std::error_code ec;
    std::filesystem::remove_all(*socket_dir_, ec);
    delete socket_dir_;
    socket_dir_ = nullptr;
  }
  static std::string LocalSocket() {
    return absl::StrCat(*socket_dir_, "/manager.sock");
  }
  void SetUp() override {
    // A failed start fails every case (a failure in SetUpTestSuite would
    // only skip them).
    ASSERT_NE(forqd_, nullptr) << (start_error_ ? *start_error_ : "");
    m_ = NewManager();
    // A fresh prefix per test keeps the cases independent on one forqd.
    prefix_ = absl::StrCat(
        ::testing::UnitTest::GetInstance()->current_test_info()->name(), "/");
  }
  static std::unique_ptr<Manager> NewManager(bool pipelined = true) {
    ClientOptions co;
    co.address = forqd_->grpc_address();
    auto c = Client::Connect(co);
    EXPECT_TRUE(c.ok()) << c.status();
    ManagerOptions mo;
    mo.pipelined = pipelined;
    if (local_) mo.local_socket = LocalSocket();
    return std::make_unique<Manager>((*c)->channel(), mo);
  }
  std::string N(absl::string_view name) { return absl::StrCat(prefix_, name); }
  // True once `n` operations are parked on condition `name` while nobody
  // holds its lock: then all of them are in wait (a thread parked on
  // acquire implies a holder).
  bool AwaitCondWaiters(const std::string& name, int n) {
    for (int i = 0; i < 3000; ++i) {
      absl::StatusOr<v1::ListObjectsResponse> objs = m_->ListObjects(name);
      if (objs.ok() && objs->objects_size() == 1 &&
          objs->objects(0).waiters() == n && objs->objects(0).size() == 0) {
        return true;
      }
      absl::SleepFor(absl::Milliseconds(10));
    }
    return false;
  }

  static ForqdProcess* forqd_;
  static std::string* start_error_;
  static std::string* socket_dir_;
  // Managers made by NewManager use the local socket.
  static bool local_;
  std::unique_ptr<Manager> m_;
  std::string prefix_;
};

ForqdProcess* MpManagerBase::forqd_ = nullptr;
std::string* MpManagerBase::start_error_ = nullptr;
std::string* MpManagerBase::socket_dir_ = nullptr;
bool MpManagerBase::local_ = false;

// The ported cases, with `true`: over the local socket. Then no blocking
// call of the case went as a unary gRPC Call.
class MpManagerTest : public MpManagerBase,
                      public ::testing::WithParamInterface<bool> {
 protected:
  void SetUp() override {
    local_ = GetParam();
    MpManagerBase::SetUp();
    if (forqd_ != nullptr) calls0_ = GrpcCalls(forqd_->http_address(), kCall);
  }
  void TearDown() override {
    if (local_ && forqd_ != nullptr) {
      EXPECT_EQ(GrpcCalls(forqd_->http_address(), kCall), calls0_);
    }
  }
  double calls0_ = 0;
};

INSTANTIATE_TEST_SUITE_P(Transports, MpManagerTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "LocalSocket" : "Grpc";
                         });

// How the client uses gRPC: the Session stream and unary Call.
using MpManagerSessionTest = MpManagerBase;

// _TestContainers.test_list
TEST_P(MpManagerTest, ContainersList) {
  List a = m_->list(N("a"));
  ASSERT_THAT(a.Extend(Range(10)), IsOk());
  EXPECT_THAT(*a.Slice(), ::testing::ContainerEq(Range(10)));
  List b = m_->list(N("b"));
  EXPECT_THAT(*b.Slice(), ElementsAre());
  ASSERT_THAT(b.Extend(Range(5)), IsOk());
  EXPECT_THAT(*b.Slice(), ::testing::ContainerEq(Range(5)));
  EXPECT_EQ(*b.Get(2), "2");
  EXPECT_THAT(*b.Slice(2, 10), ElementsAre("2", "3", "4"));
  EXPECT_EQ(*b.Repeat(2), 10);  // b *= 2
  EXPECT_THAT(*b.Slice(),
              ElementsAre("0", "1", "2", "3", "4", "0", "1", "2", "3", "4"));
  EXPECT_THAT(*a.Slice(), ::testing::ContainerEq(Range(10)));
}

// _TestContainers.test_dict_proxy_nested: dicts inside a dict and a list,
// reached through the references the outer objects hold. (C++ proxies
// resolve a stored reference with Manager::ParseRef.)
TEST_P(MpManagerTest, ContainersDictProxyNested) {
  Dict pets = m_->dict(N("pets"));
  ASSERT_THAT(pets.Update({{"ferrets", "2"}, {"hamsters", "4"}}), IsOk());
  Dict supplies = m_->dict(N("supplies"));
  ASSERT_THAT(supplies.Update({{"water", "10"}, {"feed", "3"}}), IsOk());
  Dict d = m_->dict(N("d"));
  ASSERT_THAT(d.Update({{"pets", pets.Ref()}, {"supplies", supplies.Ref()}}),
              IsOk());
  auto at = [&](Dict& outer, const std::string& key) {
    absl::StatusOr<std::string> v = outer.Get(key);
    EXPECT_THAT(v, IsOk());
    std::optional<Manager::ObjectRef> r = Manager::ParseRef(v.ok() ? *v : "");
    EXPECT_TRUE(r.has_value() && r->type == v1::OBJECT_TYPE_DICT);
    return m_->dict(r ? r->name : "missing");
  };
  EXPECT_EQ(*supplies.Get("water"), "10");
  EXPECT_EQ(*at(d, "supplies").Get("water"), "10");
  ASSERT_THAT(at(d, "supplies").Set("blankets", "5"), IsOk());
  EXPECT_EQ(*supplies.Get("blankets"), "5");
  EXPECT_EQ(*at(d, "supplies").Get("blankets"), "5");
  ASSERT_THAT(at(d, "supplies").Set("water", "7"), IsOk());
  EXPECT_EQ(*supplies.Get("water"), "7");
  EXPECT_EQ(*at(d, "pets").Get("ferrets"), "2");
  Dict pets2 = at(d, "pets");
  Dict supplies2 = at(d, "supplies");
  ASSERT_THAT(d.Clear(), IsOk());
  EXPECT_EQ(*d.Len(), 0);
  EXPECT_EQ(*supplies2.Get("water"), "7");
  EXPECT_EQ(*pets2.Get("hamsters"), "4");
  List l = m_->list(N("l"));
  ASSERT_THAT(l.Extend({pets2.Ref(), supplies2.Ref()}), IsOk());
  auto item = [&](List& outer, int64_t i) {
    absl::StatusOr<std::string> v = outer.Get(i);
    EXPECT_THAT(v, IsOk());
    std::optional<Manager::ObjectRef> r = Manager::ParseRef(v.ok() ? *v : "");
    EXPECT_TRUE(r.has_value());
    return r ? r->name : "missing";
  };
  ASSERT_THAT(m_->dict(item(l, 0)).Set("marmots", "1"), IsOk());
  EXPECT_EQ(*pets2.Get("marmots"), "1");
  // outer = [[88, 99], l]: a plain value next to a list reference.
  List outer = m_->list(N("outer"));
  ASSERT_THAT(outer.Extend({"[88, 99]", l.Ref()}), IsOk());
  EXPECT_FALSE(Manager::ParseRef(*outer.Get(0)).has_value());
  List inner = m_->list(item(outer, -1));
  EXPECT_EQ(*m_->dict(item(inner, -1)).Get("feed"), "3");
  // Deleting an object a stored value refers to is refused (forq's choice
  // over reference counting: nothing disappears behind a holder's back).
  EXPECT_THAT(m_->DeleteObject(N("supplies")),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  // Storing a reference to an object that does not exist is refused.
  EXPECT_THAT(l.Append(m_->dict(N("never-used")).Ref()),
              StatusIs(absl::StatusCode::kNotFound));
}

// _TestContainers.test_list_isinstance / index, count, reverse, sort,
// contains, slices (the ListProxy methods the test module exercises).
TEST_P(MpManagerTest, ContainersListMethods) {
  List l = m_->list(N("l"));
  ASSERT_THAT(l.Extend({"3", "1", "2", "1"}), IsOk());
  EXPECT_EQ(*l.Index("1"), 1);
  EXPECT_EQ(*l.Index("1", 2), 3);
  EXPECT_THAT(l.Index("9"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(*l.Count("1"), 2);
  EXPECT_TRUE(*l.Contains("2"));
  EXPECT_FALSE(*l.Contains("9"));
  ASSERT_THAT(l.Reverse(), IsOk());
  EXPECT_THAT(*l.Slice(), ElementsAre("1", "2", "1", "3"));
  ASSERT_THAT(l.Sort("int"), IsOk());
  EXPECT_THAT(*l.Slice(), ElementsAre("1", "1", "2", "3"));
  ASSERT_THAT(l.Sort("int", /*reverse=*/true), IsOk());
  EXPECT_THAT(*l.Slice(), ElementsAre("3", "2", "1", "1"));
  ASSERT_THAT(l.Insert(1, "x"), IsOk());
  EXPECT_THAT(l.Sort("int"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(*l.Slice(), ElementsAre("3", "x", "2", "1", "1"));  // untouched
  EXPECT_EQ(*l.Pop(1), "x");
  EXPECT_EQ(*l.SetSlice(1, 3, {"a", "b", "c"}), 5);  // l[1:3] = [a, b, c]
  EXPECT_THAT(*l.Slice(), ElementsAre("3", "a", "b", "c", "1"));
  EXPECT_EQ(*l.DeleteSlice(-2, {}), 3);  // del l[-2:]
  EXPECT_THAT(*l.Slice(), ElementsAre("3", "a", "b"));
  ASSERT_THAT(l.Remove("a"), IsOk());
  EXPECT_THAT(l.Remove("a"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(*l.Repeat(0), 0);  // l *= 0
}

// _TestContainers.test_dict
TEST_P(MpManagerTest, ContainersDict) {
  Dict d = m_->dict(N("d"));
  std::map<std::string, std::string> expected;
  for (int i = 65; i < 70; ++i) {
    const std::string k = absl::StrCat(i), v(1, static_cast<char>(i));
    ASSERT_THAT(d.Set(k, v), IsOk());
    expected[k] = v;
  }
  EXPECT_EQ(*d.Copy(), expected);
  EXPECT_THAT(*d.Keys(), ElementsAre("65", "66", "67", "68", "69"));
  EXPECT_THAT(*d.Values(), ElementsAre("A", "B", "C", "D", "E"));
  EXPECT_THAT(*d.Items(),
              ElementsAre(Pair("65", "A"), Pair("66", "B"), Pair("67", "C"),
                          Pair("68", "D"), Pair("69", "E")));
}

// dict methods of DictProxy: popitem, setdefault, update, clear, and
// insertion order kept by re-setting a key.
TEST_P(MpManagerTest, ContainersDictMethods) {
  Dict d = m_->dict(N("d"));
  ASSERT_THAT(d.Update({{"b", "1"}, {"a", "2"}}), IsOk());
  ASSERT_THAT(d.Set("c", "3"), IsOk());
  ASSERT_THAT(d.Set("b", "9"), IsOk());  // keeps its place
  EXPECT_THAT(*d.Keys(), ElementsAre("a", "b", "c"));
  EXPECT_EQ(*d.SetIfAbsent("a", "x"), "2");
  EXPECT_EQ(*d.SetIfAbsent("z", "26"), "26");
  EXPECT_THAT(*d.PopItem(), Pair("z", "26"));
  EXPECT_THAT(*d.PopItem(), Pair("c", "3"));
  EXPECT_EQ(*d.Len(), 2);
  EXPECT_TRUE(*d.Delete("a"));
  EXPECT_FALSE(*d.Delete("a"));
  ASSERT_THAT(d.Clear(), IsOk());
  EXPECT_THAT(d.PopItem(), StatusIs(absl::StatusCode::kNotFound));
}

// _TestContainers.test_namespace
TEST_P(MpManagerTest, ContainersNamespace) {
  Namespace n = m_->ns(N("n"));
  ASSERT_THAT(n.Set("name", "Bob"), IsOk());
  ASSERT_THAT(n.Set("job", "Builder"), IsOk());
  EXPECT_EQ(*n.Get("name"), "Bob");
  EXPECT_EQ(*n.Get("job"), "Builder");
  ASSERT_THAT(n.Delete("job"), IsOk());
  EXPECT_THAT(*n.List(), ElementsAre(Pair("name", "Bob")));
  EXPECT_THAT(n.Get("job"), StatusIs(absl::StatusCode::kNotFound));
}

// _TestQueue.test_put
TEST_P(MpManagerTest, QueuePut) {
  constexpr int kMaxsize = 6;
  Queue q = m_->queue(N("q"), kMaxsize);
  EXPECT_TRUE(q.Size()->empty());
  EXPECT_FALSE(q.Size()->full());
  ASSERT_THAT(q.Put("1"), IsOk());
  ASSERT_THAT(q.Put("2", absl::InfiniteDuration()), IsOk());
  ASSERT_THAT(q.Put("3", absl::Seconds(1)), IsOk());
  ASSERT_THAT(q.PutNowait("4"), IsOk());
  ASSERT_THAT(q.Put("5", absl::ZeroDuration()), IsOk());
  ASSERT_THAT(q.Put("6", absl::ZeroDuration()), IsOk());
  EXPECT_EQ(q.Size()->size(), kMaxsize);
  EXPECT_FALSE(q.Size()->empty());
  EXPECT_TRUE(q.Size()->full());
  EXPECT_THAT(q.Put("7", absl::ZeroDuration()),
              StatusIs(absl::StatusCode::kResourceExhausted));  // Full
  EXPECT_THAT(q.PutNowait("7"), StatusIs(absl::StatusCode::kResourceExhausted));
  const absl::Time start = absl::Now();
  EXPECT_THAT(q.Put("7", absl::Milliseconds(200)),
              StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(190));
  // Another "process" drains it.
  std::thread t([name = N("q")] {
    std::unique_ptr<Manager> m = NewManager();
    Queue q2 = m->queue(name, kMaxsize);
    for (int i = 0; i < kMaxsize; ++i) EXPECT_THAT(q2.Get(), IsOk());
  });
  t.join();
  EXPECT_TRUE(q.Size()->empty());
}

// _TestQueue.test_get
TEST_P(MpManagerTest, QueueGet) {
  Queue q = m_->queue(N("q"));
  EXPECT_THAT(q.GetNowait(), StatusIs(absl::StatusCode::kDeadlineExceeded));
  std::thread t([this] {
    std::unique_ptr<Manager> m = NewManager();
    Queue q2 = m->queue(N("q"));
    for (int i = 1; i <= 4; ++i) EXPECT_THAT(q2.Put(absl::StrCat(i)), IsOk());
  });
  EXPECT_EQ(*q.Get(), "1");
  EXPECT_EQ(*q.Get(absl::InfiniteDuration()), "2");
  EXPECT_EQ(*q.Get(absl::Seconds(1)), "3");
  t.join();
  EXPECT_EQ(*q.GetNowait(), "4");
  EXPECT_TRUE(q.Size()->empty());
  const absl::Time start = absl::Now();
  EXPECT_THAT(q.Get(absl::Milliseconds(200)),
              StatusIs(absl::StatusCode::kDeadlineExceeded));  // Empty
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(190));
}

// _TestQueue.test_qsize
TEST_P(MpManagerTest, QueueQsize) {
  Queue q = m_->queue(N("q"));
  EXPECT_EQ(q.Size()->size(), 0);
  ASSERT_THAT(q.Put("1"), IsOk());
  EXPECT_EQ(q.Size()->size(), 1);
  ASSERT_THAT(q.Put("5"), IsOk());
  EXPECT_EQ(q.Size()->size(), 2);
  ASSERT_THAT(q.Get(), IsOk());
  EXPECT_EQ(q.Size()->size(), 1);
  ASSERT_THAT(q.Get(), IsOk());
  EXPECT_EQ(q.Size()->size(), 0);
}

// _TestQueue.test_task_done
TEST_P(MpManagerTest, QueueTaskDone) {
  Queue q = m_->queue(N("q"));
  std::vector<std::thread> workers;
  workers.reserve(4);
  for (int w = 0; w < 4; ++w) {
    workers.emplace_back([this] {
      std::unique_ptr<Manager> m = NewManager();
      Queue wq = m->queue(N("q"));
      while (true) {
        absl::StatusOr<std::string> item = wq.Get();
        ASSERT_THAT(item, IsOk());
        if (*item == "None") {
          ASSERT_THAT(wq.TaskDone(), IsOk());
          return;
        }
        ASSERT_THAT(wq.TaskDone(), IsOk());
      }
    });
  }
  for (int i = 0; i < 10; ++i) ASSERT_THAT(q.Put(absl::StrCat(i)), IsOk());
  ASSERT_THAT(q.Join(absl::Seconds(30)), IsOk());
  for (int w = 0; w < 4; ++w) ASSERT_THAT(q.Put("None"), IsOk());
  for (auto& t : workers) t.join();
  ASSERT_THAT(q.Join(absl::Seconds(30)), IsOk());
  EXPECT_THAT(q.TaskDone(), StatusIs(absl::StatusCode::kFailedPrecondition));
}

// _TestLock.test_lock
TEST_P(MpManagerTest, LockLock) {
  Lock lock = m_->lock(N("l"));
  EXPECT_TRUE(lock.Acquire()->acquired);
  EXPECT_FALSE(lock.Acquire(absl::ZeroDuration())->acquired);  // not re-entrant
  ASSERT_THAT(lock.Release(), IsOk());
  EXPECT_THAT(lock.Release(), StatusIs(absl::StatusCode::kFailedPrecondition));
}

// _TestLock.test_rlock
TEST_P(MpManagerTest, LockRlock) {
  RLock lock = m_->rlock(N("r"));
  EXPECT_TRUE(lock.Acquire()->acquired);
  EXPECT_TRUE(lock.Acquire()->acquired);
  EXPECT_TRUE(lock.Acquire()->acquired);
  ASSERT_THAT(lock.Release(), IsOk());
  ASSERT_THAT(lock.Release(), IsOk());
  ASSERT_THAT(lock.Release(), IsOk());
  EXPECT_THAT(lock.Release(), StatusIs(absl::StatusCode::kFailedPrecondition));
}

// _TestLock.test_lock_context
TEST_P(MpManagerTest, LockContext) {
  {
    absl::StatusOr<LockGuard> g = m_->lock(N("l")).Guard();
    ASSERT_THAT(g, IsOk());
  }
  EXPECT_TRUE(m_->lock(N("l")).Acquire(absl::ZeroDuration())->acquired);
}

// _TestSemaphore.test_semaphore
TEST_P(MpManagerTest, SemaphoreSemaphore) {
  Semaphore sem = m_->semaphore(N("s"), 2);
  EXPECT_EQ(*sem.Value(), 2);
  EXPECT_TRUE(*sem.Acquire());
  EXPECT_EQ(*sem.Value(), 1);
  EXPECT_TRUE(*sem.Acquire());
  EXPECT_EQ(*sem.Value(), 0);
  EXPECT_FALSE(*sem.Acquire(absl::ZeroDuration()));
  EXPECT_EQ(*sem.Value(), 0);
  ASSERT_THAT(sem.Release(), IsOk());
  EXPECT_EQ(*sem.Value(), 1);
  ASSERT_THAT(sem.Release(), IsOk());
  EXPECT_EQ(*sem.Value(), 2);
}

// _TestSemaphore.test_bounded_semaphore
TEST_P(MpManagerTest, SemaphoreBounded) {
  Semaphore sem = m_->bounded_semaphore(N("b"), 2);
  EXPECT_TRUE(*sem.Acquire());
  EXPECT_TRUE(*sem.Acquire());
  ASSERT_THAT(sem.Release(), IsOk());
  ASSERT_THAT(sem.Release(), IsOk());
  EXPECT_EQ(*sem.Value(), 2);
  EXPECT_THAT(sem.Release(), StatusIs(absl::StatusCode::kFailedPrecondition));
}

// _TestSemaphore.test_timeout
TEST_P(MpManagerTest, SemaphoreTimeout) {
  Semaphore sem = m_->semaphore(N("s"), 0);
  EXPECT_FALSE(*sem.Acquire(absl::ZeroDuration()));
  const absl::Time start = absl::Now();
  EXPECT_FALSE(*sem.Acquire(absl::Milliseconds(200)));
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(190));
}

// _TestCondition.test_notify
TEST_P(MpManagerTest, ConditionNotify) {
  Condition cond = m_->condition(N("c"));
  std::atomic<int> woken{0};
  std::thread t([this, &woken] {
    std::unique_ptr<Manager> m = NewManager();
    Condition c = m->condition(N("c"));
    ASSERT_TRUE(*c.Acquire());
    EXPECT_TRUE(*c.Wait(absl::Seconds(30)));
    ++woken;
    ASSERT_THAT(c.Release(), IsOk());
  });
  // Notify only once the waiter is parked in wait (a notify before the wait
  // is lost, as in Python): one waiter and the lock free.
  ASSERT_TRUE(AwaitCondWaiters(N("c"), 1));
  ASSERT_TRUE(*cond.Acquire());
  const int notified = *cond.Notify();
  ASSERT_THAT(cond.Release(), IsOk());
  t.join();
  EXPECT_EQ(notified, 1);
  EXPECT_EQ(woken.load(), 1);
}

// _TestCondition.test_notify_all / test_notify_n
TEST_P(MpManagerTest, ConditionNotifyAllAndN) {
  constexpr int kWaiters = 3;
  Condition cond = m_->condition(N("c"));
  std::vector<std::thread> ts;
  ts.reserve(kWaiters);
  std::atomic<int> woken{0};
  for (int i = 0; i < kWaiters; ++i) {
    ts.emplace_back([this, &woken] {
      std::unique_ptr<Manager> m = NewManager();
      Condition c = m->condition(N("c"));
      ASSERT_TRUE(*c.Acquire());
      EXPECT_TRUE(*c.Wait(absl::Seconds(30)));
      ++woken;
      ASSERT_THAT(c.Release(), IsOk());
    });
  }
  ASSERT_TRUE(AwaitCondWaiters(N("c"), kWaiters));
  ASSERT_TRUE(*cond.Acquire());
  EXPECT_EQ(*cond.Notify(2), 2);  // notify(n=2)
  EXPECT_EQ(*cond.NotifyAll(), 1);
  ASSERT_THAT(cond.Release(), IsOk());
  for (auto& t : ts) t.join();
  EXPECT_EQ(woken.load(), kWaiters);
}

// _TestCondition.test_timeout
TEST_P(MpManagerTest, ConditionTimeout) {
  Condition cond = m_->condition(N("c"));
  ASSERT_TRUE(*cond.Acquire());
  const absl::Time start = absl::Now();
  EXPECT_FALSE(*cond.Wait(absl::Milliseconds(200)));
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(190));
  ASSERT_THAT(cond.Release(), IsOk());  // held again after the timeout
}

// _TestEvent.test_event
TEST_P(MpManagerTest, EventEvent) {
  Event ev = m_->event(N("e"));
  EXPECT_FALSE(*ev.IsSet());
  EXPECT_FALSE(*ev.Wait(absl::ZeroDuration()));
  const absl::Time start = absl::Now();
  EXPECT_FALSE(*ev.Wait(absl::Milliseconds(200)));
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(190));
  ASSERT_THAT(ev.Set(), IsOk());
  EXPECT_TRUE(*ev.IsSet());
  EXPECT_TRUE(*ev.Wait());
  EXPECT_TRUE(*ev.Wait(absl::Milliseconds(200)));
  ASSERT_THAT(ev.Clear(), IsOk());
  EXPECT_FALSE(*ev.IsSet());
  std::thread t([this] {
    std::unique_ptr<Manager> m = NewManager();
    EXPECT_THAT(m->event(N("e")).Set(), IsOk());
  });
  EXPECT_TRUE(*ev.Wait(absl::Seconds(30)));
  t.join();
}

// _TestValue.test_value (codes of the test module that forq has)
TEST_P(MpManagerTest, ValueTypecodes) {
  struct Case {
    const char* code;
    const char* value;
    const char* value2;
  };
  for (const Case& c :
       {Case{"i", "4343", "24234"}, Case{"d", "3.625", "-4.25"},
        Case{"h", "-232", "234"}, Case{"q", "8589934592", "17179869184"}}) {
    Value v = m_->value(N(absl::StrCat("v", c.code)), c.code);
    EXPECT_EQ(*v.Get(), "0") << c.code;
    ASSERT_THAT(v.Set(c.value), IsOk());
    EXPECT_EQ(*v.Get(), c.value);
    ASSERT_THAT(v.Set(c.value2), IsOk());
    EXPECT_EQ(*v.Get(), c.value2);
  }
  Value h = m_->value(N("vh"), "h");
  EXPECT_THAT(h.Set("40000"), StatusIs(absl::StatusCode::kOutOfRange));
  Value b = m_->value(N("vb"), "B");
  EXPECT_THAT(b.Set("-1"), StatusIs(absl::StatusCode::kOutOfRange));
  Value i = m_->value(N("vi"), "i");
  EXPECT_THAT(i.Set("1.5"), StatusIs(absl::StatusCode::kInvalidArgument));
}

// _TestArray.test_array
TEST_P(MpManagerTest, ArrayArray) {
  for (const char* code : {"i", "d"}) {
    std::vector<std::string> seq = {"681", "-98", "43", "98", "0"};
    if (std::string(code) == "d") seq = {"681.5", "-98", "43.25", "98", "0"};
    Array arr = m_->array(N(absl::StrCat("a", code)), code, seq);
    EXPECT_EQ(*arr.Len(), 5);
    for (int i = 0; i < 5; ++i) EXPECT_EQ(*arr.Get(i), seq[i]);
    EXPECT_EQ(*arr.Get(-1), seq[4]);
    EXPECT_THAT(*arr.Slice(), ::testing::ContainerEq(seq));
    EXPECT_THAT(*arr.Slice(1, 3), ElementsAre(seq[1], seq[2]));
    ASSERT_THAT(arr.SetSlice(1, 3, {"7", "8"}), IsOk());  // arr[1:3] = ...
    EXPECT_THAT(*arr.Slice(1, 3), ElementsAre("7", "8"));
    EXPECT_THAT(arr.SetSlice(1, 3, {"7"}),
                StatusIs(absl::StatusCode::kInvalidArgument));
    EXPECT_THAT(arr.Get(5), StatusIs(absl::StatusCode::kOutOfRange));
  }
  Array bytes = m_->array(N("ab"), "b", {"1", "2"});
  EXPECT_THAT(bytes.Set(0, "128"), StatusIs(absl::StatusCode::kOutOfRange));
}

// _TestBarrier.test_barrier / test_single_thread
TEST_P(MpManagerTest, BarrierBarrier) {
  constexpr int kParties = 5;
  std::vector<std::thread> ts;
  std::mutex mu;
  std::set<int64_t> indices;
  ts.reserve(kParties);
  for (int i = 0; i < kParties; ++i) {
    ts.emplace_back([&, this] {
      std::unique_ptr<Manager> m = NewManager();
      absl::StatusOr<int64_t> idx =
          m->barrier(N("b"), kParties).Wait(absl::Seconds(30));
      ASSERT_THAT(idx, IsOk());
      std::lock_guard<std::mutex> l(mu);
      indices.insert(*idx);
    });
  }
  for (auto& t : ts) t.join();
  EXPECT_THAT(indices, ElementsAre(0, 1, 2, 3, 4));
  EXPECT_EQ(m_->barrier(N("b")).State()->n_waiting(), 0);
  Barrier one = m_->barrier(N("one"), 1);
  EXPECT_EQ(*one.Wait(), 0);
  EXPECT_EQ(*one.Wait(), 0);
}

// _TestBarrier.test_timeout / test_abort / test_reset
TEST_P(MpManagerTest, BarrierBreaks) {
  Barrier b = m_->barrier(N("b"), 2);
  EXPECT_THAT(b.Wait(absl::Milliseconds(100)),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_TRUE(b.State()->broken());
  EXPECT_THAT(b.Wait(), StatusIs(absl::StatusCode::kFailedPrecondition));
  ASSERT_THAT(b.Reset(), IsOk());
  EXPECT_FALSE(b.State()->broken());
  std::thread t([this] {
    std::unique_ptr<Manager> m = NewManager();
    EXPECT_THAT(m->barrier(N("b")).Wait(absl::Seconds(30)),
                StatusIs(absl::StatusCode::kFailedPrecondition));
  });
  for (int i = 0; i < 3000 && b.State()->n_waiting() == 0; ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  ASSERT_THAT(b.Abort(), IsOk());  // the waiter gets BrokenBarrierError
  t.join();
  EXPECT_TRUE(b.State()->broken());
}

// The same operations work without the pipelined stream (unary Call).
TEST_F(MpManagerSessionTest, UnaryCallsAgreeWithTheSession) {
  std::unique_ptr<Manager> unary = NewManager(/*pipelined=*/false);
  ASSERT_THAT(unary->dict(N("d")).Set("k", "v"), IsOk());
  EXPECT_EQ(*m_->dict(N("d")).Get("k"), "v");
  ASSERT_THAT(unary->list(N("l")).Extend({"b", "a"}), IsOk());
  ASSERT_THAT(unary->list(N("l")).Sort(), IsOk());
  EXPECT_THAT(*m_->list(N("l")).Slice(), ElementsAre("a", "b"));
}

// Many operations in flight on one stream complete in any order: a parked
// get does not hold up the sets behind it.
TEST_F(MpManagerSessionTest, SessionPipelinesAroundParkedOps) {
  Queue q = m_->queue(N("q"));
  ManagerFuture parked = m_->Async([&] {
    v1::ManagerCall c = Manager::MakeCall(v1::OBJECT_TYPE_QUEUE, "get", N("q"));
    return c;
  }());
  std::vector<ManagerFuture> sets;
  sets.reserve(1000);
  Dict d = m_->dict(N("d"));
  for (int i = 0; i < 1000; ++i) {
    sets.push_back(d.SetAsync(absl::StrCat(i), absl::StrCat(i)));
  }
  for (ManagerFuture& f : sets) ASSERT_THAT(f.Get(), IsOk());
  EXPECT_FALSE(parked.Ready());
  EXPECT_EQ(*d.Len(), 1000);
  ASSERT_THAT(q.Put("x"), IsOk());
  absl::StatusOr<v1::ManagerResult> got = parked.Get();
  ASSERT_THAT(got, IsOk());
  EXPECT_EQ(got->value(), "x");
}

// A blocking call made while nothing is in flight goes as one unary Call;
// behind operations in flight it rides the stream after them, so it sees
// their effects.
TEST_F(MpManagerSessionTest, BlockingCallsGoUnaryOnlyWhenNothingIsInFlight) {
  const double calls0 = GrpcCalls(forqd_->http_address(), kCall);
  Dict d = m_->dict(N("d"));
  ASSERT_THAT(d.Set("k", "v"), IsOk());
  EXPECT_EQ(*d.Get("k"), "v");
  EXPECT_EQ(GrpcCalls(forqd_->http_address(), kCall), calls0 + 2);

  // A parked get keeps the stream busy: the sets and the blocking Len
  // behind them go on it, in order.
  ManagerFuture parked =
      m_->Async(Manager::MakeCall(v1::OBJECT_TYPE_QUEUE, "get", N("q")));
  std::vector<ManagerFuture> sets;
  sets.reserve(500);
  for (int i = 0; i < 500; ++i) {
    sets.push_back(d.SetAsync(absl::StrCat(i), "x"));
  }
  EXPECT_EQ(*d.Len(), 501);
  ASSERT_THAT(m_->queue(N("q")).Put("y"), IsOk());
  EXPECT_EQ(GrpcCalls(forqd_->http_address(), kCall), calls0 + 2);
  ASSERT_THAT(parked.Get(), IsOk());
  for (ManagerFuture& f : sets) ASSERT_THAT(f.Get(), IsOk());

  // Everything answered: unary again.
  EXPECT_EQ(*d.Get("7"), "x");
  EXPECT_EQ(GrpcCalls(forqd_->http_address(), kCall), calls0 + 3);
}

}  // namespace
}  // namespace forq
