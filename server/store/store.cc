#include "server/store/store.h"

#include <algorithm>
#include <string>

#include "absl/strings/str_cat.h"

#include "common/status_macros.h"
#include "server/store/memory_store.h"
#include "server/store/postgres_store.h"
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

std::string DescribeStore(const StoreOptions& options) {
  if (options.kind == "memory") return "memory";
  if (options.kind == "sqlite" || options.kind.empty()) {
    return absl::StrCat("sqlite in ", options.data_dir);
  }
  std::string uri =
      options.kind == "postgres" ? options.postgres_uri : options.kind;
  // postgres://user:secret@host/db -> postgres://user:***@host/db
  const size_t scheme = uri.find("://");
  const size_t at = uri.find('@');
  if (scheme != std::string::npos && at != std::string::npos && at > scheme) {
    const size_t colon = uri.find(':', scheme + 3);
    if (colon != std::string::npos && colon < at) {
      uri.replace(colon + 1, at - colon - 1, "***");
    }
  }
  // ...?password=secret&... -> password=***
  for (size_t p = uri.find("password="); p != std::string::npos;
       p = uri.find("password=", p + 1)) {
    const size_t start = p + 9;
    const size_t end = std::min(uri.find('&', start), uri.size());
    uri.replace(start, end - start, "***");
  }
  return uri;
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
  if (options.kind == "postgres" || PostgresStore::IsUri(options.kind)) {
    StoreOptions pg = options;
    if (PostgresStore::IsUri(options.kind)) pg.postgres_uri = options.kind;
    FORQ_ASSIGN_OR_RETURN(std::unique_ptr<PostgresStore> store,
                          PostgresStore::Open(pg));
    return std::unique_ptr<Store>(std::move(store));
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown store kind \"", options.kind,
                   "\" (want sqlite, memory or a postgres:// URI)"));
}

}  // namespace forq::server
