#include "server/store/idle_pool.h"

#include <memory>

#include "gtest/gtest.h"

namespace forq::server {
namespace {

// Counts how many are open, as a connection would.
struct Handle {
  explicit Handle(int id, int& open) : id(id), open(open) { ++open; }
  ~Handle() { --open; }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  const int id;
  int& open;
};

TEST(IdlePoolTest, TakesTheLastGivenBackAndKeepsAtMostMaxIdle) {
  int open = 0;
  IdlePool<Handle> pool(2);
  EXPECT_EQ(pool.Take(), nullptr);
  pool.Give(std::make_unique<Handle>(1, open));
  pool.Give(std::make_unique<Handle>(2, open));
  pool.Give(std::make_unique<Handle>(3, open));  // pool full: closed
  EXPECT_EQ(open, 2);
  EXPECT_EQ(pool.idle(), 2u);
  std::unique_ptr<Handle> h = pool.Take();
  ASSERT_NE(h, nullptr);
  EXPECT_EQ(h->id, 2);
  EXPECT_EQ(pool.idle(), 1u);
  pool.Give(nullptr);  // nothing to keep
  EXPECT_EQ(pool.idle(), 1u);
  pool.Give(std::move(h));
  EXPECT_EQ(pool.Take()->id, 2);
}

TEST(IdlePoolTest, ClearClosesEveryIdleOne) {
  int open = 0;
  IdlePool<Handle> pool(4);
  pool.Give(std::make_unique<Handle>(1, open));
  pool.Give(std::make_unique<Handle>(2, open));
  std::unique_ptr<Handle> taken = pool.Take();
  pool.Clear();
  EXPECT_EQ(open, 1);  // only the one taken
  EXPECT_EQ(pool.Take(), nullptr);
  pool.Give(std::move(taken));
  EXPECT_EQ(pool.idle(), 1u);
}

}  // namespace
}  // namespace forq::server
