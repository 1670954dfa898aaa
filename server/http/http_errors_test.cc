#include "server/http/http_errors.h"

#include <string>

#include "gmock/gmock.h"
#include "google/protobuf/any.pb.h"
#include "google/protobuf/duration.pb.h"
#include "gtest/gtest.h"

namespace forq::server {
namespace {

using ::testing::HasSubstr;

TEST(HttpErrorsTest, CodesMapToHttpStatuses) {
  EXPECT_EQ(HttpStatusForCode(absl::StatusCode::kNotFound), 404);
  EXPECT_EQ(HttpStatusForCode(absl::StatusCode::kInvalidArgument), 400);
  EXPECT_EQ(HttpStatusForCode(absl::StatusCode::kAlreadyExists), 409);
  EXPECT_EQ(HttpStatusForCode(absl::StatusCode::kFailedPrecondition), 409);
  EXPECT_EQ(HttpStatusForCode(absl::StatusCode::kAborted), 409);
  EXPECT_EQ(HttpStatusForCode(absl::StatusCode::kResourceExhausted), 429);
  EXPECT_EQ(HttpStatusForCode(absl::StatusCode::kDeadlineExceeded), 504);
  EXPECT_EQ(HttpStatusForCode(absl::StatusCode::kUnavailable), 503);
  EXPECT_EQ(HttpStatusForCode(absl::StatusCode::kUnimplemented), 501);
  EXPECT_EQ(HttpStatusForCode(absl::StatusCode::kInternal), 500);
  EXPECT_EQ(HttpStatusForCode(absl::StatusCode::kCancelled), 499);
}

TEST(HttpErrorsTest, BodyHasCodeStatusMessageDetails) {
  HttpError e = MakeHttpError(absl::StatusCode::kNotFound, "no \"x\"");
  EXPECT_EQ(e.http_status, 404);
  EXPECT_EQ(e.body, R"({"code":5,"status":"NOT_FOUND","message":"no \"x\"",)"
                    R"("details":[]})");
}

// google.rpc.Status{code: 8, details: [RetryInfo{retry_delay: 1.5s}]}
// written by hand: Debian ships no google/rpc protos.
std::string RetryStatusBytes() {
  google::protobuf::Duration d;
  d.set_seconds(1);
  d.set_nanos(500000000);
  const std::string dur = d.SerializeAsString();
  std::string retry =
      "\x0a" + std::string(1, static_cast<char>(dur.size())) + dur;
  google::protobuf::Any any;
  any.set_type_url("type.googleapis.com/google.rpc.RetryInfo");
  any.set_value(retry);
  google::protobuf::Any other;
  other.set_type_url("type.googleapis.com/example.Unknown");
  other.set_value("\x01\x02");
  std::string out = "\x08\x08";
  for (const auto& a : {any, other}) {
    const std::string bytes = a.SerializeAsString();
    out += "\x1a" + std::string(1, static_cast<char>(bytes.size())) + bytes;
  }
  return out;
}

TEST(HttpErrorsTest, RetryInfoDetailSetsRetryAfter) {
  HttpError e = MakeHttpErrorFromGrpc(8, "queue full", RetryStatusBytes());
  EXPECT_EQ(e.http_status, 429);
  EXPECT_EQ(e.retry_after_seconds, 2);
  EXPECT_THAT(e.body, HasSubstr(R"("retryDelay":"1.500s")"));
  EXPECT_THAT(
      e.body,
      HasSubstr(
          R"("@type":"type.googleapis.com/example.Unknown","value":"AQI=")"));
}

TEST(HttpErrorsTest, GarbageDetailsAreIgnored) {
  HttpError e = MakeHttpErrorFromGrpc(13, "boom", "\xff\xff\xff");
  EXPECT_EQ(e.http_status, 500);
  EXPECT_THAT(e.body, HasSubstr("\"details\":[]"));
  EXPECT_EQ(MakeHttpErrorFromGrpc(99, "x", "").http_status, 500);
}

TEST(HttpErrorsTest, JsonQuoteEscapesAndRepairsUtf8) {
  EXPECT_EQ(JsonQuote("a\"\\\n\x01"), R"("a\"\\\n\u0001")");
  EXPECT_EQ(JsonQuote("\xff"), "\"\xEF\xBF\xBD\"");
  EXPECT_TRUE(IsValidUtf8("héllo €"));
  EXPECT_FALSE(IsValidUtf8("\xc0\xaf"));      // overlong '/'
  EXPECT_FALSE(IsValidUtf8("\xed\xa0\x80"));  // surrogate
}

}  // namespace
}  // namespace forq::server
