#include "server/scheduler/wait_registry.h"

#include <algorithm>

namespace forq::server {

uint64_t WaitRegistry::Add(std::string task_id, absl::Time deadline,
                           Done done) {
  const uint64_t h = next_handle_++;
  by_task_[task_id].push_back(h);
  if (deadline != absl::InfiniteFuture()) deadlines_.emplace(deadline, h);
  waits_.emplace(h, Wait{std::move(task_id), deadline, std::move(done)});
  return h;
}

WaitRegistry::Done WaitRegistry::Erase(
    absl::node_hash_map<uint64_t, Wait>::iterator it) {
  const uint64_t h = it->first;
  Wait& w = it->second;
  auto t = by_task_.find(w.task_id);
  if (t != by_task_.end()) {
    auto& v = t->second;
    v.erase(std::remove(v.begin(), v.end(), h), v.end());
    if (v.empty()) by_task_.erase(t);
  }
  // Its deadline entry must go too, or every finished wait would stay in
  // deadlines_ until its deadline (minutes of growth under load).
  auto range = deadlines_.equal_range(w.deadline);
  for (auto d = range.first; d != range.second; ++d) {
    if (d->second == h) {
      deadlines_.erase(d);
      break;
    }
  }
  Done done = std::move(w.done);
  waits_.erase(it);
  return done;
}

bool WaitRegistry::Remove(uint64_t handle) {
  auto it = waits_.find(handle);
  if (it == waits_.end()) return false;
  Erase(it);
  return true;
}

std::vector<WaitRegistry::Done> WaitRegistry::TakeTask(
    const std::string& task_id) {
  std::vector<Done> out;
  auto t = by_task_.find(task_id);
  if (t == by_task_.end()) return out;
  const std::vector<uint64_t> handles = t->second;
  for (uint64_t h : handles) {
    auto it = waits_.find(h);
    if (it != waits_.end()) out.push_back(Erase(it));
  }
  return out;
}

std::vector<std::pair<std::string, WaitRegistry::Done>>
WaitRegistry::TakeExpired(absl::Time now) {
  std::vector<std::pair<std::string, Done>> out;
  while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
    auto it = waits_.find(deadlines_.begin()->second);
    if (it == waits_.end()) {
      deadlines_.erase(deadlines_.begin());
      continue;
    }
    std::string id = it->second.task_id;
    out.emplace_back(std::move(id), Erase(it));
  }
  return out;
}

std::vector<WaitRegistry::Done> WaitRegistry::TakeAll() {
  std::vector<Done> out;
  out.reserve(waits_.size());
  for (auto& [h, w] : waits_) out.push_back(std::move(w.done));
  waits_.clear();
  deadlines_.clear();
  by_task_.clear();
  return out;
}

absl::Time WaitRegistry::NextDeadline() const {
  return deadlines_.empty() ? absl::InfiniteFuture()
                            : deadlines_.begin()->first;
}

std::vector<std::string> WaitRegistry::TaskIds() const {
  std::vector<std::string> ids;
  ids.reserve(by_task_.size());
  for (const auto& [id, handles] : by_task_) ids.push_back(id);
  return ids;
}

}  // namespace forq::server
