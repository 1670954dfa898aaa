// Test-only plugin whose handlers behave like a compromised worker: they
// find the worker's own slot mapping through /proc/self/maps and scribble
// over the completion ring, then wait to be killed. Used by fork_pool_test
// to prove forqd survives hostile workers.
#include <dirent.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <random>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/string_view.h"

#include "worker/handler.h"
#include "worker/shm_region.h"

namespace {

using forq::worker::FrameHeader;
using forq::worker::SlotView;

char* FindSlotMapping() {
  FILE* f = fopen("/proc/self/maps", "re");
  if (f == nullptr) return nullptr;
  char line[512];
  char* base = nullptr;
  while (fgets(line, sizeof(line), f) != nullptr) {
    if (strstr(line, "forq-worker-slot") == nullptr) continue;
    unsigned long start = 0;
    if (sscanf(line, "%lx-", &start) == 1) {
      // An address read from /proc/self/maps: the cast is the point.
      base =
          reinterpret_cast<char*>(start);  // NOLINT(performance-no-int-to-ptr)
      break;
    }
  }
  fclose(f);
  return base;
}

// Wakes forqd by writing every eventfd this process holds.
void WakeEverything() {
  DIR* d = opendir("/proc/self/fd");
  if (d == nullptr) return;
  while (dirent* e = readdir(d)) {
    int fd = 0;
    if (!absl::SimpleAtoi(e->d_name, &fd)) continue;
    char target[64] = {};
    std::string link = std::string("/proc/self/fd/") + e->d_name;
    if (readlink(link.c_str(), target, sizeof(target) - 1) <= 0) continue;
    if (strstr(target, "eventfd") == nullptr) continue;
    uint64_t one = 1;
    (void)!write(fd, &one, sizeof(one));
  }
  closedir(d);
}

absl::Status Scribble(forq::worker::TaskContext& ctx, absl::string_view mode,
                      std::string*) {
  char* base = FindSlotMapping();
  if (base == nullptr) return absl::InternalError("slot mapping not found");
  auto* control = reinterpret_cast<forq::worker::SlotControl*>(base);
  const uint64_t ring = control->ring_bytes;
  SlotView v = forq::worker::ViewSlot(base, ring);
  const uint64_t tail = v.completion_control->tail.value.load();
  std::random_device rd;
  std::mt19937_64 rng(rd());
  FrameHeader h{};
  h.version = 1;
  h.type = 17;
  if (mode == "tail") {
    v.completion_control->tail.value.store(tail + ring * 4);
  } else if (mode == "unaligned") {
    v.completion_control->tail.value.store(tail + 13);
  } else if (mode == "length") {
    h.length = static_cast<uint32_t>(ring);  // larger than any frame may be
    h.seq = 2;
    std::memcpy(v.completion_data + (tail % ring), &h, sizeof(h));
    v.completion_control->tail.value.store(tail + 64);
  } else if (mode == "seq") {
    h.length = 8;
    h.seq = 999;
    std::memcpy(v.completion_data + (tail % ring), &h, sizeof(h));
    v.completion_control->tail.value.store(tail + 24);
  } else if (mode == "type") {
    h.length = 0;
    h.type = 4242;
    h.seq = 2;  // Ready was frame 1
    std::memcpy(v.completion_data + (tail % ring), &h, sizeof(h));
    v.completion_control->tail.value.store(tail + 16);
  } else {  // random bytes everywhere, tail anywhere but "empty"
    for (uint64_t i = 0; i < ring; i += 8) {
      uint64_t x = rng();
      std::memcpy(v.completion_data + i, &x, 8);
    }
    uint64_t t = rng();
    if (rng() % 2 == 0) t = tail + 8 * (1 + rng() % (ring / 8));
    if (t == tail) t += 8;
    v.completion_control->tail.value.store(t);
  }
  WakeEverything();
  while (true) pause();  // forqd must kill us
}

}  // namespace

extern "C" __attribute__((visibility("default"))) int forq_register_handlers(
    forq::worker::HandlerRegistry* registry) {
  return registry->Register("evil.scribble", Scribble).ok() ? 0 : 1;
}
