// Fuzzes what a hostile worker (or forqd) can put on the link: the bytes of
// a shared-memory ring and its published tail, plus spilled bodies on the
// spill socket, read through Channel::Receive (ShmRing::Pop + ReceiveSpill),
// and every message decoder of worker/protocol.h on each frame body.
//
// Input: [flags u8][tail u16 little-endian][ring bytes...]. flags bit 0:
// queue one sealed memfd spill holding the input's last quarter; bit 1:
// queue a second one; bit 2: close the peer end of the spill socket.
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>

#include "absl/strings/string_view.h"

#include "fuzz/fuzz_util.h"
#include "worker/channel.h"
#include "worker/protocol.h"
#include "worker/shm_ring.h"
#include "worker/spill.h"

namespace forq::worker {
namespace {

constexpr uint64_t kRing = ShmRing::kMinCapacity;
constexpr uint64_t kMaxSpill = 1 << 20;

// Decoding what an encoder produced from a decoded message must succeed
// and give the same bytes back.
template <typename Msg, typename DecodeFn>
void CheckDecoder(absl::string_view body, DecodeFn decode) {
  absl::StatusOr<Msg> m = decode(body);
  if (!m.ok()) return;
  const std::string once = Encode(*m);
  absl::StatusOr<Msg> again = decode(once);
  FUZZ_CHECK(again.ok());
  FUZZ_CHECK(Encode(*again) == once);
}

void DecodeAll(absl::string_view body) {
  CheckDecoder<AssignMessage>(body, DecodeAssign);
  CheckDecoder<ReadyMessage>(body, DecodeReady);
  CheckDecoder<ResultMessage>(body, DecodeResult);
  CheckDecoder<ProgressMessage>(body, DecodeProgress);
  CheckDecoder<SkippedMessage>(body, DecodeSkipped);
  CheckDecoder<CallMessage>(body, DecodeCall);
  CheckDecoder<CallReplyMessage>(body, DecodeCallReply);
  if (absl::StatusOr<ResultMessage> r = DecodeResult(body); r.ok()) {
    StatusFromWire(r->code, r->message);
  }
}

}  // namespace
}  // namespace forq::worker

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace forq::worker;
  if (size < 3) return 0;
  const uint8_t flags = data[0];
  const uint64_t tail = data[1] | (uint64_t{data[2]} << 8);
  absl::string_view rest(reinterpret_cast<const char*>(data + 3), size - 3);

  // Unused by Receive, but a Channel needs both directions.
  RingControl tx_control{};
  alignas(64) static char tx_data[kRing];
  RingControl rx_control{};
  alignas(64) static char rx_data[kRing];
  std::memset(rx_data, 0, sizeof(rx_data));
  std::memcpy(rx_data, rest.data(), std::min<size_t>(rest.size(), kRing));
  rx_control.tail.value.store(tail);

  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) abort();
  const absl::string_view spill = rest.substr(rest.size() - rest.size() / 4);
  if (flags & 1) (void)SendSpill(sv[1], spill);
  if (flags & 2) (void)SendSpill(sv[1], spill.substr(spill.size() / 2));
  if (flags & 4) {
    close(sv[1]);
    sv[1] = -1;
  }
  {
    Channel channel(ShmRing(&tx_control, tx_data, kRing),
                    ShmRing(&rx_control, rx_data, kRing),
                    ChannelFds{-1, -1, sv[0]}, kMaxSpill);
    // A ring of 4096 bytes holds at most 256 frames (16-byte headers).
    for (int i = 0; i < 300; ++i) {
      absl::StatusOr<std::optional<Message>> m = channel.Receive();
      if (!m.ok() || !m->has_value()) break;
      FUZZ_CHECK((*m)->body.size() <= kMaxSpill);
      DecodeAll((*m)->body);
    }
  }
  DrainSpillSocket(sv[0]);
  close(sv[0]);
  if (sv[1] >= 0) close(sv[1]);
  return 0;
}
