// Small conversions shared by the scheduler and the gRPC edge: absl time
// types to and from protobuf's, and the terminal-state test (one
// definition for forqd and the client, in forq/v1/task_state.h).
#ifndef FORQ_SERVER_SCHEDULER_TASK_PROTO_H_
#define FORQ_SERVER_SCHEDULER_TASK_PROTO_H_

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "google/protobuf/duration.pb.h"
#include "google/protobuf/timestamp.pb.h"
#include "google/protobuf/util/time_util.h"

#include "forq/v1/task.pb.h"
#include "forq/v1/task_state.h"

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

// Seconds and nanos apart: the nanosecond count of a Duration beyond ~292
// years (valid ones reach 10,000) does not fit in 64 bits.
inline absl::Duration FromProto(const google::protobuf::Duration& d) {
  return absl::Seconds(d.seconds()) + absl::Nanoseconds(d.nanos());
}

using v1::IsTerminal;

// Sets the task's error (an attempt's or the task's end).
inline void SetError(v1::Task& t, absl::StatusCode code,
                     absl::string_view message, v1::FailureReason reason,
                     int signal = 0) {
  v1::TaskError* e = t.mutable_error();
  e->set_code(static_cast<int>(code));
  e->set_message(std::string(message));
  e->set_reason(reason);
  e->set_signal(signal);
}

}  // namespace forq::server

#endif  // FORQ_SERVER_SCHEDULER_TASK_PROTO_H_
