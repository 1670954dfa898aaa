#include "worker/shm_ring.h"

#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include "tests/testing/status_matchers.h"

namespace forq::worker {
namespace {

using ::forq::testing::IsOk;
using ::forq::testing::StatusIs;

constexpr uint64_t kCap = 4096;

// A ring in ordinary memory; producer and consumer views share it like two
// processes share a memfd.
struct TestRing {
  TestRing() : data(kCap, 0) { control = std::make_unique<RingControl>(); }
  ShmRing Producer() { return ShmRing(control.get(), data.data(), kCap); }
  ShmRing Consumer() { return ShmRing(control.get(), data.data(), kCap); }
  // Header of the frame at byte position `pos` (no wrap in these tests).
  FrameHeader* HeaderAt(uint64_t pos) {
    return reinterpret_cast<FrameHeader*>(data.data() + (pos % kCap));
  }
  std::unique_ptr<RingControl> control;
  std::vector<char> data;
};

TEST(ShmRingTest, PopOnEmptyRingReturnsNothing) {
  TestRing r;
  ShmRing c = r.Consumer();
  auto f = c.Pop();
  ASSERT_THAT(f, IsOk());
  EXPECT_FALSE(f->has_value());
}

TEST(ShmRingTest, FramesRoundTripInOrderAcrossWrapAround) {
  TestRing r;
  ShmRing p = r.Producer();
  ShmRing c = r.Consumer();
  for (int i = 0; i < 1000; ++i) {
    std::string body(static_cast<size_t>(i * 7 % 900), static_cast<char>(i));
    ASSERT_THAT(p.Push(5, 0, body), IsOk());
    auto f = c.Pop();
    ASSERT_THAT(f, IsOk());
    ASSERT_TRUE(f->has_value());
    EXPECT_EQ((*f)->type, 5);
    EXPECT_EQ((*f)->seq, static_cast<uint64_t>(i + 1));
    EXPECT_EQ((*f)->body, body);
  }
}

TEST(ShmRingTest, PushOnFullRingIsResourceExhausted) {
  TestRing r;
  ShmRing p = r.Producer();
  std::string body(p.max_body(), 'a');
  int pushed = 0;
  while (p.Push(1, 0, body).ok()) ++pushed;
  EXPECT_EQ(pushed, 4);  // max_body() frames are a quarter of the ring
  EXPECT_THAT(p.Push(1, 0, body),
              StatusIs(absl::StatusCode::kResourceExhausted));
  ShmRing c = r.Consumer();
  ASSERT_THAT(c.Pop(), IsOk());
  EXPECT_THAT(p.Push(1, 0, body), IsOk());
}

TEST(ShmRingTest, OversizedBodyIsRefusedByProducer) {
  TestRing r;
  ShmRing p = r.Producer();
  EXPECT_THAT(p.Push(1, 0, std::string(p.max_body() + 1, 'x')),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(ShmRingTest, RejectsTailBeyondCapacity) {
  TestRing r;
  r.control->tail.value.store(kCap + 8);
  ShmRing c = r.Consumer();
  EXPECT_THAT(c.Pop(), StatusIs(absl::StatusCode::kDataLoss));
}

TEST(ShmRingTest, RejectsTailBehindHead) {
  TestRing r;
  ShmRing p = r.Producer();
  ShmRing c = r.Consumer();
  ASSERT_THAT(p.Push(1, 0, "abc"), IsOk());
  ASSERT_THAT(c.Pop(), IsOk());
  r.control->tail.value.store(8);  // moved backwards
  EXPECT_THAT(c.Pop(), StatusIs(absl::StatusCode::kDataLoss));
}

TEST(ShmRingTest, RejectsUnalignedTail) {
  TestRing r;
  r.control->tail.value.store(21);
  ShmRing c = r.Consumer();
  EXPECT_THAT(c.Pop(), StatusIs(absl::StatusCode::kDataLoss));
}

TEST(ShmRingTest, RejectsLengthLargerThanPublished) {
  TestRing r;
  ShmRing p = r.Producer();
  ASSERT_THAT(p.Push(1, 0, "abcd"), IsOk());
  r.HeaderAt(0)->length = 200;  // frame claims more than tail covers
  ShmRing c = r.Consumer();
  EXPECT_THAT(c.Pop(), StatusIs(absl::StatusCode::kDataLoss));
}

TEST(ShmRingTest, RejectsOversizedFrameLength) {
  TestRing r;
  ShmRing p = r.Producer();
  ASSERT_THAT(p.Push(1, 0, "abcd"), IsOk());
  r.HeaderAt(0)->length = 0xffffffff;
  ShmRing c = r.Consumer();
  EXPECT_THAT(c.Pop(), StatusIs(absl::StatusCode::kDataLoss));
}

TEST(ShmRingTest, RejectsBadSequence) {
  TestRing r;
  ShmRing p = r.Producer();
  ASSERT_THAT(p.Push(1, 0, "a"), IsOk());
  r.HeaderAt(0)->seq = 7;
  ShmRing c = r.Consumer();
  EXPECT_THAT(c.Pop(), StatusIs(absl::StatusCode::kDataLoss,
                                ::testing::HasSubstr("seq")));
}

TEST(ShmRingTest, RejectsReplayedFrame) {
  TestRing r;
  ShmRing p = r.Producer();
  ShmRing c = r.Consumer();
  ASSERT_THAT(p.Push(1, 0, "a"), IsOk());
  ASSERT_THAT(c.Pop(), IsOk());
  // Producer rewinds nothing but republishes the same frame bytes.
  std::memcpy(r.data.data() + 24, r.data.data(), 24);
  r.control->tail.value.store(48);
  EXPECT_THAT(c.Pop(), StatusIs(absl::StatusCode::kDataLoss));
}

TEST(ShmRingTest, RejectsBadVersionAndFlags) {
  {
    TestRing r;
    ShmRing p = r.Producer();
    ASSERT_THAT(p.Push(1, 0, "a"), IsOk());
    r.HeaderAt(0)->version = 9;
    ShmRing c = r.Consumer();
    EXPECT_THAT(c.Pop(), StatusIs(absl::StatusCode::kDataLoss));
  }
  {
    TestRing r;
    ShmRing p = r.Producer();
    ASSERT_THAT(p.Push(1, 0, "a"), IsOk());
    r.HeaderAt(0)->flags = 0x80;
    ShmRing c = r.Consumer();
    EXPECT_THAT(c.Pop(), StatusIs(absl::StatusCode::kDataLoss));
  }
}

TEST(ShmRingTest, ProducerRejectsImpossibleConsumerIndex) {
  TestRing r;
  ShmRing p = r.Producer();
  r.control->head.value.store(uint64_t{4096} * 10);  // head ahead of our tail
  EXPECT_THAT(p.Push(1, 0, "a"), StatusIs(absl::StatusCode::kDataLoss));
}

// Random garbage in indices and data must only ever produce frames or
// DataLoss, never a crash (run under ASan/UBSan too).
TEST(ShmRingTest, SurvivesRandomGarbage) {
  std::mt19937_64 rng(42);
  for (int iter = 0; iter < 2000; ++iter) {
    TestRing r;
    ShmRing p = r.Producer();
    for (int i = 0; i < static_cast<int>(rng() % 4); ++i) {
      ASSERT_THAT(p.Push(1, 0, std::string(rng() % 300, 'z')), IsOk());
    }
    const int scribbles = static_cast<int>(rng() % 16);
    for (int i = 0; i < scribbles; ++i) {
      r.data[rng() % kCap] = static_cast<char>(rng());
    }
    switch (rng() % 3) {
      case 0:
        r.control->tail.value.store(rng());
        break;
      case 1:
        r.control->tail.value.store(rng() % (2 * kCap));
        break;
      default:
        break;
    }
    ShmRing c = r.Consumer();
    for (int i = 0; i < 8; ++i) {
      auto f = c.Pop();
      if (!f.ok()) {
        EXPECT_EQ(f.status().code(), absl::StatusCode::kDataLoss);
        break;
      }
      if (!f->has_value()) break;
      EXPECT_LE((*f)->body.size(), c.max_body());
    }
  }
}

}  // namespace
}  // namespace forq::worker
