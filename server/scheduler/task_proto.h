// Small conversions shared by the scheduler and the gRPC edge: absl time
// types to and from protobuf's, and the terminal-state test.
#ifndef FORQ_SERVER_SCHEDULER_TASK_PROTO_H_
#define FORQ_SERVER_SCHEDULER_TASK_PROTO_H_

#include "absl/time/time.h"
#include "google/protobuf/duration.pb.h"
#include "google/protobuf/timestamp.pb.h"
#include "google/protobuf/util/time_util.h"

#include "forq/v1/task.pb.h"

namespace forq::server {

inline google::protobuf::Timestamp ToProto(absl::Time t) {
  return google::protobuf::util::TimeUtil::NanosecondsToTimestamp(
      absl::ToUnixNanos(t));
}

inline absl::Time FromProto(const google::protobuf::Timestamp& t) {
  return absl::FromUnixNanos(
      google::protobuf::util::TimeUtil::TimestampToNanoseconds(t));
}

inline google::protobuf::Duration ToProto(absl::Duration d) {
  return google::protobuf::util::TimeUtil::NanosecondsToDuration(
      absl::ToInt64Nanoseconds(d));
}

inline absl::Duration FromProto(const google::protobuf::Duration& d) {
  return absl::Nanoseconds(
      google::protobuf::util::TimeUtil::DurationToNanoseconds(d));
}

// True for SUCCEEDED, FAILED, DEAD and CANCELLED.
inline bool IsTerminal(v1::TaskState s) {
  return s == v1::SUCCEEDED || s == v1::FAILED || s == v1::DEAD ||
         s == v1::CANCELLED;
}

}  // namespace forq::server

#endif  // FORQ_SERVER_SCHEDULER_TASK_PROTO_H_
