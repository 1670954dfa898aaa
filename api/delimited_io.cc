#include "api/delimited_io.h"

#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "google/protobuf/util/delimited_message_util.h"

namespace forq {

absl::Status WriteDelimited(int fd,
                            const google::protobuf::MessageLite& message) {
  std::string buf;
  {
    google::protobuf::io::StringOutputStream out(&buf);
    if (!google::protobuf::util::SerializeDelimitedToZeroCopyStream(message,
                                                                    &out)) {
      return absl::InternalError(
          absl::StrCat("cannot serialize ", message.GetTypeName()));
    }
  }
  size_t sent = 0;
  while (sent < buf.size()) {
    const ssize_t n =
        send(fd, buf.data() + sent, buf.size() - sent, MSG_NOSIGNAL);
    if (n < 0) {
      const int err = errno;
      if (err == EINTR) continue;
      return absl::UnavailableError(absl::StrCat(
          "send: ", std::error_code(err, std::generic_category()).message()));
    }
    sent += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::StatusOr<bool> ReadDelimited(
    google::protobuf::io::ZeroCopyInputStream* in, size_t max_bytes,
    google::protobuf::MessageLite* message) {
  message->Clear();
  google::protobuf::io::CodedInputStream coded(in);
  uint32_t size = 0;
  if (!coded.ReadVarint32(&size)) {
    if (coded.CurrentPosition() == 0) return false;
    return absl::UnavailableError("the stream ended inside a message size");
  }
  if (size > max_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(message->GetTypeName(), " of ", size,
                     " bytes; the limit is ", max_bytes));
  }
  const auto limit = coded.PushLimit(static_cast<int>(size));
  const bool parsed = message->ParseFromCodedStream(&coded);
  const bool whole = coded.BytesUntilLimit() == 0;
  coded.PopLimit(limit);
  if (!parsed) {
    return absl::InvalidArgumentError(
        absl::StrCat(message->GetTypeName(), " does not parse"));
  }
  if (!whole) {
    return absl::UnavailableError(absl::StrCat(
        "the stream ended inside a ", message->GetTypeName(), " message"));
  }
  return true;
}

absl::StatusOr<sockaddr_un> UnixSocketAddress(const std::string& path,
                                              absl::string_view what) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": '", path, "' is ", path.size(),
        " bytes; a Unix socket path holds 1 to ", sizeof(addr.sun_path) - 1));
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  return addr;
}

}  // namespace forq
