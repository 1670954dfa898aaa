// Example handler plugin: registers "example.reverse", which returns the
// payload reversed. Build as a MODULE library and load with
// `forqd --plugin path/to/libforq_example_plugin.so`.
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

#include "worker/handler.h"

namespace {

absl::Status Reverse(forq::worker::TaskContext& ctx, absl::string_view payload,
                     std::string* result) {
  result->assign(payload.rbegin(), payload.rend());
  return absl::OkStatus();
}

}  // namespace

extern "C" __attribute__((visibility("default"))) int forq_register_handlers(
    forq::worker::HandlerRegistry* registry) {
  return registry->Register("example.reverse", Reverse).ok() ? 0 : 1;
}
