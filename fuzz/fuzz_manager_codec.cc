// Fuzzes the Manager task bridge: the bytes a task sends with
// TaskContext::Call (worker/manager_protocol.h, decoded by forqd as
// untrusted input) and what forqd then does with them. Each input is up to
// eight requests separated by kSeparator; every one that decodes must
// re-encode to a stable form and is run, in order, on a fresh in-memory
// ObjectManager with small caps, so sequences (create, fill, block, pop...)
// reach the object code too. The input is also decoded as a reply (the
// client-side decoder).
#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

#include "fuzz/fuzz_util.h"
#include "server/manager/object_manager.h"
#include "server/manager/task_bridge.h"
#include "worker/manager_protocol.h"

namespace {

constexpr absl::string_view kSeparator = "\xF0\x9F\x94\x80";  // never valid
                                                              // in a request

forq::server::ObjectManagerOptions SmallCaps() {
  forq::server::ObjectManagerOptions o;
  o.max_objects = 64;
  o.max_waiters = 64;
  o.max_sessions = 16;
  o.max_entries = 4096;
  o.max_value_bytes = 64 << 10;
  o.max_object_bytes = 1 << 20;
  o.max_total_bytes = 4 << 20;
  return o;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace forq::worker;
  const absl::string_view input(reinterpret_cast<const char*>(data), size);

  if (absl::StatusOr<ManagerReply> reply = DecodeManagerReply(input);
      reply.ok()) {
    const std::string once = EncodeManagerReply(*reply);
    absl::StatusOr<ManagerReply> again = DecodeManagerReply(once);
    FUZZ_CHECK(again.ok());
    FUZZ_CHECK(EncodeManagerReply(*again) == once);
  }

  std::vector<absl::string_view> parts = absl::StrSplit(input, kSeparator);
  if (parts.size() > 8) parts.resize(8);
  forq::server::ObjectManager core(nullptr, nullptr, SmallCaps());
  std::atomic<int> replies{0};
  int calls = 0;
  for (absl::string_view part : parts) {
    if (absl::StatusOr<ManagerRequest> req = DecodeManagerRequest(part);
        req.ok()) {
      const std::string once = EncodeManagerRequest(*req);
      absl::StatusOr<ManagerRequest> again = DecodeManagerRequest(once);
      FUZZ_CHECK(again.ok());
      FUZZ_CHECK(EncodeManagerRequest(*again) == once);
    }
    ++calls;
    forq::server::HandleManagerTaskCall(
        core, "task-1", part, [&replies](absl::StatusOr<std::string> r) {
          ++replies;
          if (r.ok()) FUZZ_CHECK(DecodeManagerReply(*r).ok());
        });
  }
  // Parked calls (blocking gets, lock waits) are answered by the shutdown.
  // A timer thread may be finishing a timed-out call at the same moment.
  core.Shutdown();
  for (int i = 0; i < 5000 && replies.load() != calls; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  FUZZ_CHECK(replies.load() == calls);
  return 0;
}
