#include "server/manager/task_bridge.h"

#include <random>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include "common/notification.h"
#include "server/manager/object_manager.h"
#include "tests/testing/status_matchers.h"
#include "worker/manager_client.h"

namespace forq::server {
namespace {

using ::forq::testing::IsOk;
using ::forq::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::Pair;
using worker::DecodeManagerReply;
using worker::DecodeManagerRequest;
using worker::EncodeManagerReply;
using worker::EncodeManagerRequest;
using worker::ManagerOp;
using worker::ManagerReply;
using worker::ManagerRequest;
using worker::ManagerType;

ManagerRequest FullRequest() {
  ManagerRequest r;
  r.type = ManagerType::kQueue;
  r.op = ManagerOp::kPut;
  r.name = "q";
  r.session = "s";
  r.owner = "o";
  r.key = "k";
  r.value = std::string("v\0v", 3);
  r.expected = "e";
  r.expect_absent = true;
  r.values = {"a", "", "c"};
  r.items = {{"x", "1"}, {"y", ""}};
  r.has_index = true;
  r.index = -3;
  r.has_start = true;
  r.start = -1;
  r.has_stop = true;
  r.stop = 7;
  r.delta = "-2.5";
  r.timeout_ms = 1500;
  r.maxsize = 4;
  r.length = 9;
  r.typecode = "d";
  r.has_initial = true;
  r.initial = 0;
  r.one_way = true;
  r.end = 1;
  r.n = 5;
  r.ttl_ms = 3000;
  return r;
}

TEST(ManagerCodecTest, RequestRoundTrips) {
  const ManagerRequest in = FullRequest();
  FORQ_ASSERT_OK_AND_ASSIGN(ManagerRequest out,
                            DecodeManagerRequest(EncodeManagerRequest(in)));
  EXPECT_EQ(out.type, in.type);
  EXPECT_EQ(out.op, in.op);
  EXPECT_EQ(out.name, "q");
  EXPECT_EQ(out.value, in.value);
  EXPECT_TRUE(out.expect_absent);
  EXPECT_THAT(out.values, ElementsAre("a", "", "c"));
  EXPECT_THAT(out.items, ElementsAre(Pair("x", "1"), Pair("y", "")));
  EXPECT_TRUE(out.has_index);
  EXPECT_EQ(out.index, -3);
  EXPECT_EQ(out.start, -1);
  EXPECT_EQ(out.stop, 7);
  EXPECT_EQ(out.delta, "-2.5");
  EXPECT_EQ(out.timeout_ms, 1500);
  EXPECT_EQ(out.maxsize, 4);
  EXPECT_EQ(out.length, 9);
  EXPECT_EQ(out.typecode, "d");
  EXPECT_TRUE(out.has_initial);
  EXPECT_EQ(out.initial, 0);
  EXPECT_TRUE(out.one_way);
  EXPECT_EQ(out.end, 1);
  EXPECT_EQ(out.n, 5);
  EXPECT_EQ(out.ttl_ms, 3000);
  // Defaults survive too (timeout -1 = no limit).
  ManagerRequest def;
  FORQ_ASSERT_OK_AND_ASSIGN(ManagerRequest d2,
                            DecodeManagerRequest(EncodeManagerRequest(def)));
  EXPECT_EQ(d2.timeout_ms, -1);
  EXPECT_EQ(d2.n, 1);
  EXPECT_FALSE(d2.has_index);
}

TEST(ManagerCodecTest, ReplyRoundTrips) {
  ManagerReply in;
  in.value = "val";
  in.found = true;
  in.flag = true;
  in.length = -1;
  in.maxsize = 3;
  in.unfinished = 2;
  in.count = 7;
  in.token = (uint64_t{5} << 40) | 9;
  in.typecode = "i";
  in.values = {"1", "2"};
  in.items = {{"k", "v"}};
  FORQ_ASSERT_OK_AND_ASSIGN(ManagerReply out,
                            DecodeManagerReply(EncodeManagerReply(in)));
  EXPECT_EQ(out.value, "val");
  EXPECT_TRUE(out.found);
  EXPECT_TRUE(out.flag);
  EXPECT_EQ(out.length, -1);
  EXPECT_EQ(out.token, in.token);
  EXPECT_THAT(out.values, ElementsAre("1", "2"));
  EXPECT_THAT(out.items, ElementsAre(Pair("k", "v")));
}

TEST(ManagerCodecTest, RejectsMalformedInput) {
  const std::string good = EncodeManagerRequest(FullRequest());
  auto bad = [](const std::string& s) {
    return DecodeManagerRequest(s).status().code();
  };
  const auto kInvalid = absl::StatusCode::kInvalidArgument;
  EXPECT_EQ(bad(""), kInvalid);
  EXPECT_EQ(bad("garbage"), kInvalid);
  std::string wrong_version = good;
  wrong_version[3] = 2;
  EXPECT_EQ(bad(wrong_version), kInvalid);
  // A reply is not a request.
  EXPECT_EQ(bad(EncodeManagerReply(ManagerReply())), kInvalid);
  // Every truncation fails cleanly.
  for (size_t n = 0; n < good.size(); ++n) {
    absl::StatusOr<ManagerRequest> r = DecodeManagerRequest(good.substr(0, n));
    // A prefix that ends on a field boundary after type and op is valid.
    if (!r.ok()) {
      EXPECT_EQ(r.status().code(), kInvalid);
    }
  }
  // Field length beyond the end.
  std::string huge_len =
      good.substr(0, 5) + std::string("\x03\xff\xff\xff\x7f", 5);
  EXPECT_EQ(bad(huge_len), kInvalid);
  // Unknown tag, duplicate scalar, bad enum, bad bool, item key alone.
  auto field = [](uint8_t tag, const std::string& data) {
    std::string f(1, static_cast<char>(tag));
    uint32_t n = data.size();
    for (int i = 0; i < 4; ++i) f.push_back(static_cast<char>(n >> (8 * i)));
    return f + data;
  };
  const std::string head = good.substr(0, 5);
  const std::string type_op = field(1, std::string("\x06\0\0\0\0\0\0\0", 8)) +
                              field(2, std::string("\x13\0\0\0\0\0\0\0", 8));
  EXPECT_THAT(DecodeManagerRequest(head + type_op), IsOk());
  EXPECT_EQ(bad(head + type_op + field(99, "x")), kInvalid);
  EXPECT_EQ(bad(head + type_op + field(3, "a") + field(3, "b")), kInvalid);
  EXPECT_EQ(bad(head + field(1, std::string("\x63\0\0\0\0\0\0\0", 8)) +
                field(2, std::string("\x01\0\0\0\0\0\0\0", 8))),
            kInvalid);
  EXPECT_EQ(bad(head + type_op + field(9, "\x02")), kInvalid);
  EXPECT_EQ(bad(head + type_op + field(11, "k")), kInvalid);
  EXPECT_EQ(bad(head + type_op + field(12, "v")), kInvalid);
  EXPECT_EQ(bad(head + type_op + field(13, "1234")), kInvalid);  // short int
  EXPECT_EQ(bad(head + field(3, "q")), kInvalid);                // no type/op
}

TEST(ManagerCodecTest, RandomMutationsNeverCrash) {
  const std::string good = EncodeManagerRequest(FullRequest());
  std::mt19937 rng(42);
  int accepted = 0;
  for (int i = 0; i < 20000; ++i) {
    std::string s = good;
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      const size_t pos = rng() % s.size();
      switch (rng() % 3) {
        case 0:
          s[pos] = static_cast<char>(rng());
          break;
        case 1:
          s.erase(pos, 1 + rng() % 8);
          break;
        default:
          s.insert(pos, 1, static_cast<char>(rng()));
          break;
      }
      if (s.empty()) s = "x";
    }
    absl::StatusOr<ManagerRequest> r = DecodeManagerRequest(s);
    if (r.ok()) {
      ++accepted;
    } else {
      EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    }
  }
  SUCCEED() << accepted << " mutations still decoded";
}

absl::StatusOr<std::string> CallBridge(ObjectManager& core,
                                       const std::string& raw) {
  Notification done;
  absl::StatusOr<std::string> out = absl::UnknownError("pending");
  HandleManagerTaskCall(core, "task-1", raw,
                        [&](absl::StatusOr<std::string> r) {
                          out = std::move(r);
                          done.Notify();
                        });
  EXPECT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  return out;
}

TEST(TaskBridgeTest, RunsDecodedRequestsAndRefusesGarbage) {
  ObjectManager core(nullptr, nullptr);
  EXPECT_THAT(CallBridge(core, std::string("\xff\x00garbage", 9)),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(core.object_count(), 0u);
  ManagerRequest put;
  put.type = ManagerType::kQueue;
  put.op = ManagerOp::kPut;
  put.name = "q";
  put.value = "a";
  ASSERT_THAT(CallBridge(core, EncodeManagerRequest(put)), IsOk());
  ManagerRequest get = put;
  get.op = ManagerOp::kGet;
  FORQ_ASSERT_OK_AND_ASSIGN(std::string raw,
                            CallBridge(core, EncodeManagerRequest(get)));
  FORQ_ASSERT_OK_AND_ASSIGN(ManagerReply reply, DecodeManagerReply(raw));
  EXPECT_EQ(reply.value, "a");
  // Core errors come back as statuses.
  ManagerRequest wrong = get;
  wrong.type = ManagerType::kDict;
  EXPECT_THAT(CallBridge(core, EncodeManagerRequest(wrong)),
              StatusIs(absl::StatusCode::kFailedPrecondition));
}

TEST(TaskBridgeTest, ParkedTaskCallIsCancelledByTag) {
  ObjectManager core(nullptr, nullptr);
  ManagerRequest get;
  get.type = ManagerType::kQueue;
  get.op = ManagerOp::kGet;
  get.name = "q";
  Notification done;
  absl::Status status;
  HandleManagerTaskCall(core, "task-9", EncodeManagerRequest(get),
                        [&](const absl::StatusOr<std::string>& r) {
                          status = r.status();
                          done.Notify();
                        });
  EXPECT_FALSE(done.HasBeenNotified());
  EXPECT_EQ(core.CancelTagged("task-9"), 1);
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(5)));
  EXPECT_EQ(status.code(), absl::StatusCode::kCancelled);
}

}  // namespace
}  // namespace forq::server
