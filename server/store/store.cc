#include "server/store/store.h"

#include "absl/strings/str_cat.h"

#include "common/status_macros.h"
#include "server/store/memory_store.h"
#include "server/store/sqlite_store.h"

namespace forq::server {

absl::StatusOr<Durability> ParseDurability(absl::string_view text) {
  if (text == "sync") {
    return Durability::kSync;
  }
  if (text == "batch") {
    return Durability::kBatch;
  }
  if (text == "none") {
    return Durability::kNone;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown durability \"", text, "\" (want sync, batch or none)"));
}

absl::StatusOr<std::unique_ptr<Store>> OpenStore(const StoreOptions& options) {
  if (options.kind == "memory") {
    return std::make_unique<MemoryStore>();
  }
  if (options.kind == "sqlite" || options.kind.empty()) {
    FORQ_ASSIGN_OR_RETURN(std::unique_ptr<SqliteStore> store,
                          SqliteStore::Open(options));
    return std::unique_ptr<Store>(std::move(store));
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown store kind \"", options.kind, "\" (want sqlite or memory)"));
}

}  // namespace forq::server
