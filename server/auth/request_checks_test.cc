#include "server/auth/request_checks.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include "forq/v1/task.pb.h"
#include "tests/testing/status_matchers.h"

namespace forq::server {
namespace {

using ::forq::testing::IsOk;
using ::testing::HasSubstr;

// INVALID_ARGUMENT whose message contains `text`.
void ExpectInvalid(const absl::Status& s, const std::string& text) {
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr(text));
}

v1::SubmitBatchRequest Batch(int n) {
  v1::SubmitBatchRequest req;
  for (int i = 0; i < n; ++i) {
    v1::TaskSpec* spec = req.add_tasks();
    spec->set_kind("echo");
    spec->set_queue("default");
    spec->mutable_timeout()->set_seconds(5);
  }
  return req;
}

TEST(RequestChecksTest, ValidBatchPasses) {
  EXPECT_THAT(CheckRequestFields(Batch(3)), IsOk());
}

TEST(RequestChecksTest, LongIdentifierInATaskSpecNamesItsField) {
  v1::SubmitBatchRequest req = Batch(3);
  req.mutable_tasks(2)->set_queue(std::string(kMaxIdBytes + 1, 'q'));
  ExpectInvalid(CheckRequestFields(req),
                "'tasks.queue' is 1025 bytes; the limit is "
                "1024");
  v1::SubmitRequest one;
  one.mutable_task()->set_idempotency_key(std::string(kMaxIdBytes + 1, 'k'));
  ExpectInvalid(CheckRequestFields(one),
                "'task.idempotency_key' is 1025 bytes");
}

TEST(RequestChecksTest, LongKindInAMapInputNamesItsField) {
  v1::MapRequest req;
  for (int i = 0; i < 3; ++i) req.mutable_inputs()->add_inputs();
  EXPECT_THAT(CheckRequestFields(req), IsOk());
  req.mutable_inputs()->mutable_inputs(1)->set_kind(
      std::string(kMaxIdBytes + 1, 'k'));
  ExpectInvalid(CheckRequestFields(req),
                "'inputs.inputs.kind' is 1025 bytes; the limit is 1024");
}

TEST(RequestChecksTest, InvalidDurationAndTimestampInATaskSpec) {
  v1::SubmitBatchRequest req = Batch(2);
  req.mutable_tasks(1)->mutable_delay()->set_seconds(5);
  req.mutable_tasks(1)->mutable_delay()->set_nanos(-1);
  ExpectInvalid(CheckRequestFields(req),
                "'tasks.delay' is not a valid Duration");
  req = Batch(1);
  req.mutable_tasks(0)->mutable_not_before()->set_nanos(2'000'000'000);
  ExpectInvalid(CheckRequestFields(req),
                "'tasks.not_before' is not a valid "
                "Timestamp");
}

TEST(RequestChecksTest, UndefinedEnumNumberIsNamed) {
  v1::ListTasksRequest req;
  req.set_state(static_cast<v1::TaskState>(99));
  ExpectInvalid(CheckRequestFields(req), "'state': 99 is not a TaskState");
}

}  // namespace
}  // namespace forq::server
