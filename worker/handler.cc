#include "worker/handler.h"

#include "absl/strings/str_cat.h"

namespace forq::worker {

absl::Status HandlerRegistry::Register(std::string kind, Handler handler) {
  if (kind.empty()) return absl::InvalidArgumentError("empty handler kind");
  if (!handler) {
    return absl::InvalidArgumentError(
        absl::StrCat("null handler for kind '", kind, "'"));
  }
  auto [it, inserted] = handlers_.emplace(std::move(kind), std::move(handler));
  if (!inserted) {
    return absl::AlreadyExistsError(
        absl::StrCat("handler kind '", it->first, "' is already registered"));
  }
  return absl::OkStatus();
}

const Handler* HandlerRegistry::Find(absl::string_view kind) const {
  auto it = handlers_.find(kind);
  return it == handlers_.end() ? nullptr : &it->second;
}

std::vector<std::string> HandlerRegistry::Kinds() const {
  std::vector<std::string> kinds;
  kinds.reserve(handlers_.size());
  for (const auto& [kind, unused] : handlers_) kinds.push_back(kind);
  return kinds;
}

}  // namespace forq::worker
