#include "forq/pool.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace forq {

Pool::Pool(Client& client, PoolOptions options)
    : executor_(client, std::move(options)) {
  executor_.wait_on_destroy_ = false;
}

Pool::~Pool() = default;

absl::StatusOr<TaskFuture> Pool::ApplyAsync(absl::string_view kind,
                                            absl::string_view payload) {
  return executor_.Submit(kind, payload);
}

absl::StatusOr<std::string> Pool::Apply(absl::string_view kind,
                                        absl::string_view payload) {
  return executor_.Run(kind, payload);
}

absl::StatusOr<std::vector<std::string>> Pool::Map(absl::string_view kind,
                                                   MapSource inputs) {
  MapStream stream = executor_.OpenMap(kind, std::move(inputs),
                                       /*ordered=*/true, /*fail_fast=*/true);
  std::vector<std::string> results;
  for (const MapItem& item : stream) {
    if (!item.ok()) {
      return absl::Status(
          item.status.code(),
          absl::StrCat("item ", item.index, ": ", item.status.message()));
    }
    results.push_back(item.result);
  }
  if (!stream.status().ok()) return stream.status();
  return results;
}

MapStream Pool::Imap(absl::string_view kind, MapSource inputs) {
  return executor_.Map(kind, std::move(inputs));
}

MapStream Pool::ImapUnordered(absl::string_view kind, MapSource inputs) {
  return executor_.MapUnordered(kind, std::move(inputs));
}

void Pool::Close() { (void)executor_.Shutdown(/*wait=*/false); }

absl::Status Pool::Join() {
  if (!executor_.is_shutdown()) {
    return absl::FailedPreconditionError(
        "Pool.Join() needs Close() or Terminate() first");
  }
  return executor_.Shutdown(/*wait=*/true);
}

absl::Status Pool::Terminate() {
  return executor_.Shutdown(/*wait=*/false, /*cancel_futures=*/true);
}

}  // namespace forq
