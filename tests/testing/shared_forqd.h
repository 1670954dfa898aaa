// A test suite whose cases share one real forqd (started once per suite)
// and one Client connected to it; a failed case adds forqd's log tail.
//
//   class MapTest : public SharedForqdTest<MapTest> {
//    public:  // optional: the suite's forqd flags
//     static ForqdOptions Options() { return {.workers = 1}; }
//   };
#ifndef FORQ_TESTS_TESTING_SHARED_FORQD_H_
#define FORQ_TESTS_TESTING_SHARED_FORQD_H_

#include "gtest/gtest.h"

#include "forq/client.h"
#include "tests/testing/forqd_process.h"

namespace forq::testing {

// `Suite` is the derived fixture; its static Options() (if it declares one)
// hides this one.
template <typename Suite>
class SharedForqdTest : public ::testing::Test {
 public:
  static ForqdOptions Options() { return ForqdOptions(); }

  static void SetUpTestSuite() {
    auto p = ForqdProcess::Start(Suite::Options());
    ASSERT_TRUE(p.ok()) << p.status();
    forqd_ = p->release();
    auto c = Client::Connect({.address = forqd_->grpc_address()});
    ASSERT_TRUE(c.ok()) << c.status();
    client_ = c->release();
  }
  static void TearDownTestSuite() {
    delete client_;
    client_ = nullptr;
    delete forqd_;
    forqd_ = nullptr;
  }

 protected:
  void TearDown() override {
    if (HasFailure() && forqd_ != nullptr) {
      ADD_FAILURE() << "forqd log tail:\n" << forqd_->LogTail();
    }
  }

  static inline ForqdProcess* forqd_ = nullptr;
  static inline Client* client_ = nullptr;
};

}  // namespace forq::testing

#endif  // FORQ_TESTS_TESTING_SHARED_FORQD_H_
