// Field checks every gRPC request of forq's services gets before a handler
// acts on it, so gRPC answers what REST answers: INVALID_ARGUMENT naming the
// field for an undefined enum number (proto3 enums are open), an invalid
// google.protobuf.Duration or Timestamp, and an identifier longer than
// kMaxIdBytes.
#ifndef FORQ_SERVER_AUTH_REQUEST_CHECKS_H_
#define FORQ_SERVER_AUTH_REQUEST_CHECKS_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/message.h"

namespace forq::server {

// Task ids, queue names, kinds, object names and keys: longer ones are
// mistakes (the REST gateway has the same bound for path variables).
inline constexpr size_t kMaxIdBytes = 1024;

// Walks `m` (and its sub-messages, except map values) by reflection.
absl::Status CheckRequestFields(const google::protobuf::Message& m);

// InvalidArgument "'PATH': N is not a ENUM (one of A, B)" when the enum
// field `f` of `m` holds (in any element, if repeated) a number its enum
// does not define; PATH is "`prefix`.name", or the name alone when `prefix`
// is empty. OK for a field that is not an enum.
absl::Status CheckEnumField(const google::protobuf::Message& m,
                            const google::protobuf::FieldDescriptor& f,
                            absl::string_view prefix);

// The answer to message `n` (counted from 1) of a client stream of `method`
// ("/forq.v1.TaskService/WaitStream") whose bytes do not parse as `type`
// ("forq.v1.WaitStreamRequest"): INVALID_ARGUMENT naming the method, the
// type and n. forq's bidirectional streams read raw bytes and parse each
// message themselves, because gRPC's typed reader reports a message that
// does not parse exactly like the client's half-close.
absl::Status MalformedStreamMessage(absl::string_view method,
                                    absl::string_view type, int64_t n);

}  // namespace forq::server

#endif  // FORQ_SERVER_AUTH_REQUEST_CHECKS_H_
