// Fuzzes what forqd reads from its local Manager socket (--manager_socket,
// api/delimited_io.h): the input is the byte stream of one connection, a
// LocalHello then SessionRequests, delivered in chunks of 1 to 64 bytes
// (the first byte picks the size) as reads from a socket would. Every
// message that parses must re-encode to the same bytes and read back
// equal; a size over the limit, bytes that do not parse or a stream that
// ends inside a message must be errors, never crashes.
#include <cstdint>
#include <string>

#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "google/protobuf/util/delimited_message_util.h"

#include "api/delimited_io.h"
#include "forq/v1/manager.pb.h"
#include "fuzz/fuzz_util.h"

namespace {

constexpr size_t kLimit = 1 << 16;

// The message, written as WriteDelimited writes it and read back.
template <typename Message>
void CheckRoundTrip(const Message& m) {
  std::string bytes;
  {
    google::protobuf::io::StringOutputStream out(&bytes);
    FUZZ_CHECK(
        google::protobuf::util::SerializeDelimitedToZeroCopyStream(m, &out));
  }
  google::protobuf::io::ArrayInputStream in(bytes.data(),
                                            static_cast<int>(bytes.size()));
  Message again;
  absl::StatusOr<bool> got = forq::ReadDelimited(&in, bytes.size(), &again);
  FUZZ_CHECK(got.ok() && *got);
  FUZZ_CHECK(again.SerializeAsString() == m.SerializeAsString());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const int chunk = 1 + data[0] % 64;
  google::protobuf::io::ArrayInputStream in(data + 1,
                                            static_cast<int>(size - 1), chunk);
  forq::v1::LocalHello hello;
  absl::StatusOr<bool> got = forq::ReadDelimited(&in, kLimit, &hello);
  if (!got.ok() || !*got) return 0;
  CheckRoundTrip(hello);
  forq::v1::SessionRequest request;
  for (int i = 0; i < 16; ++i) {
    got = forq::ReadDelimited(&in, kLimit, &request);
    if (!got.ok() || !*got) return 0;
    FUZZ_CHECK(request.ByteSizeLong() <= kLimit);
    CheckRoundTrip(request);
  }
  return 0;
}
