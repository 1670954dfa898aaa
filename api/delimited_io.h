// Length-delimited protobuf messages over a stream socket, and Unix socket
// addresses: protobuf's own
// delimited format (a varint size, then the message), as
// google::protobuf::util writes it, read with a size limit. Used by forqd's
// local Manager socket and its client (docs/manager.md, "Local socket");
// here, beside the generated messages, because common/ stays free of
// protobuf.
#ifndef FORQ_API_DELIMITED_IO_H_
#define FORQ_API_DELIMITED_IO_H_

#include <sys/un.h>

#include <cstddef>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/io/zero_copy_stream.h"
#include "google/protobuf/message_lite.h"

namespace forq {

// Writes `message` with its size prefix to `fd` (a socket; send with
// MSG_NOSIGNAL, so a closed peer is an error, not SIGPIPE). Unavailable
// when the peer is gone.
absl::Status WriteDelimited(int fd,
                            const google::protobuf::MessageLite& message);

// Reads the next message from `in` into `message` (cleared first). false
// at a clean end of stream (the peer closed between messages).
// InvalidArgument when the size exceeds `max_bytes` or the bytes do not
// parse; Unavailable when the stream ends inside a message or fails.
absl::StatusOr<bool> ReadDelimited(
    google::protobuf::io::ZeroCopyInputStream* in, size_t max_bytes,
    google::protobuf::MessageLite* message);

// The address of the Unix socket at `path`; InvalidArgument (prefixed with
// `what`, e.g. the flag's name) when the path is empty or too long.
absl::StatusOr<sockaddr_un> UnixSocketAddress(const std::string& path,
                                              absl::string_view what);

}  // namespace forq

#endif  // FORQ_API_DELIMITED_IO_H_
