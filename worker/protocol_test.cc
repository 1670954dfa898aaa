#include "worker/protocol.h"

#include <random>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include "tests/testing/status_matchers.h"

namespace forq::worker {
namespace {

using ::forq::testing::IsOk;
using ::forq::testing::StatusIs;

TEST(ProtocolTest, AssignRoundTrips) {
  AssignMessage m;
  m.task_seq = 42;
  m.task_id = "task-1";
  m.attempt = 3;
  m.timeout_ns = 5'000'000'000;
  m.kind = "echo";
  m.payload = std::string("a\0b", 3);
  auto d = DecodeAssign(Encode(m));
  ASSERT_THAT(d, IsOk());
  EXPECT_EQ(d->task_seq, 42u);
  EXPECT_EQ(d->task_id, "task-1");
  EXPECT_EQ(d->attempt, 3);
  EXPECT_EQ(d->timeout_ns, 5'000'000'000);
  EXPECT_EQ(d->kind, "echo");
  EXPECT_EQ(d->payload, std::string("a\0b", 3));
}

TEST(ProtocolTest, ResultRoundTripsAndRejectsNegativeRuntime) {
  ResultMessage m;
  m.task_seq = 9;
  m.code = 5;
  m.message = "nope";
  m.result = "r";
  m.runtime_ns = 12;
  auto d = DecodeResult(Encode(m));
  ASSERT_THAT(d, IsOk());
  EXPECT_EQ(d->code, 5);
  EXPECT_EQ(d->message, "nope");
  m.runtime_ns = -1;
  EXPECT_THAT(DecodeResult(Encode(m)), StatusIs(absl::StatusCode::kDataLoss));
}

TEST(ProtocolTest, RejectsTruncationAndTrailingBytes) {
  CallMessage m;
  m.task_seq = 1;
  m.call_id = 2;
  m.request = "hello";
  const std::string wire = Encode(m);
  for (size_t n = 0; n < wire.size(); ++n) {
    EXPECT_THAT(DecodeCall(wire.substr(0, n)),
                StatusIs(absl::StatusCode::kDataLoss));
  }
  EXPECT_THAT(DecodeCall(wire + "x"), StatusIs(absl::StatusCode::kDataLoss));
}

TEST(ProtocolTest, RejectsHugeStringLength) {
  std::string wire(8 + 8, '\0');
  wire += std::string("\xff\xff\xff\x7f", 4);  // request length 2^31-1
  EXPECT_THAT(DecodeCall(wire), StatusIs(absl::StatusCode::kDataLoss));
}

TEST(ProtocolTest, ProgressRejectsNanAndClampsFraction) {
  ProgressMessage m;
  m.fraction = 7.5;
  auto d = DecodeProgress(Encode(m));
  ASSERT_THAT(d, IsOk());
  EXPECT_EQ(d->fraction, 1.0);
  m.fraction = std::nan("");
  EXPECT_THAT(DecodeProgress(Encode(m)), StatusIs(absl::StatusCode::kDataLoss));
}

TEST(ProtocolTest, ReadyRejectsOtherVersionsAndBadPids) {
  ReadyMessage m;
  m.pid = 10;
  EXPECT_THAT(DecodeReady(Encode(m)), IsOk());
  m.protocol_version = 99;
  EXPECT_THAT(DecodeReady(Encode(m)), StatusIs(absl::StatusCode::kDataLoss));
  m.protocol_version = kProtocolVersion;
  m.pid = -1;
  EXPECT_THAT(DecodeReady(Encode(m)), StatusIs(absl::StatusCode::kDataLoss));
}

TEST(ProtocolTest, StatusFromWireRejectsUnknownCodes) {
  ASSERT_TRUE(StatusFromWire(0, "").has_value());
  EXPECT_THAT(*StatusFromWire(0, ""), IsOk());
  auto s = StatusFromWire(3, "bad");
  ASSERT_TRUE(s.has_value());
  EXPECT_THAT(*s, StatusIs(absl::StatusCode::kInvalidArgument, "bad"));
  EXPECT_FALSE(StatusFromWire(17, "").has_value());
  EXPECT_FALSE(StatusFromWire(-1, "").has_value());
}

TEST(ProtocolTest, RandomBytesNeverCrashDecoders) {
  std::mt19937 rng(7);
  for (int i = 0; i < 5000; ++i) {
    std::string b(rng() % 64, '\0');
    for (char& c : b) c = static_cast<char>(rng());
    (void)DecodeAssign(b);
    (void)DecodeReady(b);
    (void)DecodeResult(b);
    (void)DecodeProgress(b);
    (void)DecodeCall(b);
    (void)DecodeCallReply(b);
  }
}

}  // namespace
}  // namespace forq::worker
