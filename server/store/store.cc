#include "server/store/store.h"

#include "absl/strings/str_cat.h"

#include "server/store/memory_store.h"

namespace forq::server {

absl::StatusOr<Durability> ParseDurability(absl::string_view text) {
  if (text == "sync") return Durability::kSync;
  if (text == "batch") return Durability::kBatch;
  if (text == "none") return Durability::kNone;
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown durability \"", text, "\" (want sync, batch or none)"));
}

absl::StatusOr<std::unique_ptr<Store>> OpenStore(const StoreOptions& options) {
  if (options.kind == "memory") return std::make_unique<MemoryStore>();
  if (options.kind == "sqlite" || options.kind.empty()) {
    // TODO(#4): SQLite store lands next; use --store=memory until then.
    return absl::UnimplementedError("sqlite store not built yet");
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown store kind \"", options.kind, "\" (want sqlite or memory)"));
}

}  // namespace forq::server
