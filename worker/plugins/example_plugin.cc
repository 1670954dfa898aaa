// Example handler plugin: registers "example.reverse", which returns the
// payload reversed, and "example.call", which sends its payload to forqd
// through TaskContext::Call and returns the reply. Build as a MODULE library
// and load with `forqd --plugin path/to/libforq_example_plugin.so`.
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

#include "worker/handler.h"

namespace {

absl::Status Reverse(forq::worker::TaskContext& ctx, absl::string_view payload,
                     std::string* result) {
  result->assign(payload.rbegin(), payload.rend());
  return absl::OkStatus();
}

absl::Status CallForqd(forq::worker::TaskContext& ctx,
                       absl::string_view payload, std::string* result) {
  absl::StatusOr<std::string> reply = ctx.Call(payload);
  if (!reply.ok()) return reply.status();
  *result = std::move(*reply);
  return absl::OkStatus();
}

}  // namespace

extern "C" __attribute__((visibility("default"))) int forq_register_handlers(
    forq::worker::HandlerRegistry* registry) {
  if (!registry->Register("example.reverse", Reverse).ok()) return 1;
  if (!registry->Register("example.call", CallForqd).ok()) return 1;
  return 0;
}
