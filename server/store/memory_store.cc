#include "server/store/memory_store.h"

#include <memory>

#include "absl/strings/str_cat.h"

#include "common/status_macros.h"
#include "server/store/task_record.h"

namespace forq::server {
namespace {

using store_internal::DecodePageToken;
using store_internal::EffectivePageSize;
using store_internal::EncodePageToken;
using store_internal::ExpiresAtMicros;

absl::Status ClosedError() {
  return absl::UnavailableError("memory store: closed");
}

}  // namespace

MemoryStore::MemoryStore() {
  MutexLock lock(&close_mu_);
  writer_ = std::thread([this] { WriterLoop(); });
}

MemoryStore::~MemoryStore() { Close(); }

bool MemoryStore::Enqueue(std::function<void()> op) {
  MutexLock lock(&queue_mu_);
  if (closing_) {
    return false;
  }
  queue_.push_back(std::move(op));
  queue_cv_.Signal();
  return true;
}

void MemoryStore::WriterLoop() {
  for (;;) {
    std::deque<std::function<void()>> batch;
    {
      MutexLock lock(&queue_mu_);
      while (queue_.empty() && !closing_) {
        queue_cv_.Wait(&queue_mu_);
      }
      if (queue_.empty()) {
        return;  // Closing and drained.
      }
      batch.swap(queue_);
    }
    // Ops run without queue_mu_ so callbacks may enqueue further writes.
    for (auto& op : batch) {
      op();
    }
  }
}

void MemoryStore::Insert(std::vector<v1::Task> tasks, InsertDone done) {
  // shared_ptr: std::function needs a copyable closure, the vector is moved
  // in once and consumed once.
  auto shared = std::make_shared<std::vector<v1::Task>>(std::move(tasks));
  auto done_ptr = std::make_shared<InsertDone>(std::move(done));
  if (!Enqueue([this, shared, done_ptr] {
        (*done_ptr)(ApplyInsert(std::move(*shared)));
      })) {
    (*done_ptr)(ClosedError());
  }
}

absl::StatusOr<std::vector<InsertResult>> MemoryStore::ApplyInsert(
    std::vector<v1::Task> tasks) {
  MutexLock lock(&data_mu_);
  std::vector<InsertResult> results(tasks.size());
  // Keys and ids new in this call, so a repeat inside the call is found and
  // nothing is written until the whole call is known to succeed.
  absl::flat_hash_map<std::string, size_t> new_keys;
  absl::flat_hash_map<std::string, size_t> new_ids;
  for (size_t i = 0; i < tasks.size(); ++i) {
    const v1::Task& task = tasks[i];
    if (task.id().empty()) {
      return absl::InvalidArgumentError("memory store: task without id");
    }
    const std::string& key = task.idempotency_key();
    if (!key.empty()) {
      if (auto it = by_key_.find(key); it != by_key_.end()) {
        results[i].task = tasks_.at(it->second);
        results[i].existing = true;
        continue;
      }
      if (auto it = new_keys.find(key); it != new_keys.end()) {
        results[i].task = tasks[it->second];
        results[i].existing = true;
        continue;
      }
    }
    if (tasks_.count(task.id()) > 0 || new_ids.count(task.id()) > 0) {
      return absl::AlreadyExistsError(
          absl::StrCat("memory store: task id ", task.id(), " already stored"));
    }
    new_ids.emplace(task.id(), i);
    if (!key.empty()) {
      new_keys.emplace(key, i);
    }
    results[i].task = task;
  }
  for (size_t i = 0; i < tasks.size(); ++i) {
    if (results[i].existing) {
      continue;
    }
    if (!tasks[i].idempotency_key().empty()) {
      by_key_[tasks[i].idempotency_key()] = tasks[i].id();
    }
    tasks_[tasks[i].id()] = std::move(tasks[i]);
  }
  return results;
}

void MemoryStore::Update(std::vector<v1::Task> tasks, WriteDone done) {
  auto shared = std::make_shared<std::vector<v1::Task>>(std::move(tasks));
  auto done_ptr = std::make_shared<WriteDone>(std::move(done));
  if (!Enqueue([this, shared, done_ptr] {
        (*done_ptr)(ApplyUpdate(std::move(*shared)));
      })) {
    (*done_ptr)(ClosedError());
  }
}

absl::Status MemoryStore::ApplyUpdate(std::vector<v1::Task> tasks) {
  MutexLock lock(&data_mu_);
  // Validate first: an Update is all-or-none like an Insert.
  for (const v1::Task& task : tasks) {
    if (tasks_.count(task.id()) == 0) {
      return absl::NotFoundError(
          absl::StrCat("memory store: update of unknown task ", task.id()));
    }
  }
  for (v1::Task& task : tasks) {
    v1::Task& stored = tasks_[task.id()];
    if (stored.idempotency_key() != task.idempotency_key()) {
      by_key_.erase(stored.idempotency_key());
      if (!task.idempotency_key().empty()) {
        by_key_[task.idempotency_key()] = task.id();
      }
    }
    stored = std::move(task);
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::Task> MemoryStore::Get(absl::string_view id) {
  MutexLock lock(&data_mu_);
  auto it = tasks_.find(std::string(id));
  if (it == tasks_.end()) {
    return absl::NotFoundError(absl::StrCat("task ", id, " not found"));
  }
  return it->second;
}

absl::StatusOr<ListPage> MemoryStore::List(const ListQuery& query) {
  FORQ_ASSIGN_OR_RETURN(std::string after, DecodePageToken(query.page_token));
  const size_t limit = EffectivePageSize(query.page_size);
  ListPage page;
  MutexLock lock(&data_mu_);
  auto it = after.empty() ? tasks_.begin() : tasks_.upper_bound(after);
  for (; it != tasks_.end(); ++it) {
    const v1::Task& task = it->second;
    if (!query.queue.empty() && task.queue() != query.queue) {
      continue;
    }
    if (!query.kind.empty() && task.kind() != query.kind) {
      continue;
    }
    if (query.state != v1::TASK_STATE_UNSPECIFIED &&
        task.state() != query.state) {
      continue;
    }
    if (page.tasks.size() == limit) {
      // One more match exists: hand out a token for the next page.
      page.next_page_token = EncodePageToken(page.tasks.back().id());
      break;
    }
    page.tasks.push_back(task);
  }
  return page;
}

absl::StatusOr<std::vector<v1::Task>> MemoryStore::LoadUnfinished() {
  MutexLock lock(&data_mu_);
  std::vector<v1::Task> out;
  for (const auto& [id, task] : tasks_) {
    if (task.state() == v1::QUEUED || task.state() == v1::RUNNING) {
      out.push_back(task);
    }
  }
  return out;
}

absl::StatusOr<int64_t> MemoryStore::PurgeExpired(absl::Time now) {
  const int64_t now_us = absl::ToUnixMicros(now);
  MutexLock lock(&data_mu_);
  int64_t purged = 0;
  for (auto it = tasks_.begin(); it != tasks_.end();) {
    std::optional<int64_t> expires = ExpiresAtMicros(it->second);
    if (expires.has_value() && *expires <= now_us) {
      if (!it->second.idempotency_key().empty()) {
        by_key_.erase(it->second.idempotency_key());
      }
      it = tasks_.erase(it);
      ++purged;
    } else {
      ++it;
    }
  }
  return purged;
}

void MemoryStore::PutObject(std::string name, std::string blob,
                            WriteDone done) {
  auto done_ptr = std::make_shared<WriteDone>(std::move(done));
  auto entry = std::make_shared<std::pair<std::string, std::string>>(
      std::move(name), std::move(blob));
  if (!Enqueue([this, entry, done_ptr] {
        {
          MutexLock lock(&data_mu_);
          objects_[entry->first] = std::move(entry->second);
        }
        (*done_ptr)(absl::OkStatus());
      })) {
    (*done_ptr)(ClosedError());
  }
}

void MemoryStore::DeleteObject(std::string name, WriteDone done) {
  auto done_ptr = std::make_shared<WriteDone>(std::move(done));
  if (!Enqueue([this, name = std::move(name), done_ptr] {
        {
          MutexLock lock(&data_mu_);
          objects_.erase(name);
        }
        (*done_ptr)(absl::OkStatus());
      })) {
    (*done_ptr)(ClosedError());
  }
}

void MemoryStore::WriteObjects(std::vector<ObjectWrite> writes,
                               WriteDone done) {
  auto done_ptr = std::make_shared<WriteDone>(std::move(done));
  auto shared = std::make_shared<std::vector<ObjectWrite>>(std::move(writes));
  if (!Enqueue([this, shared, done_ptr] {
        {
          MutexLock lock(&data_mu_);
          for (ObjectWrite& w : *shared) {
            if (w.blob) {
              objects_[w.name] = std::move(*w.blob);
            } else {
              objects_.erase(w.name);
            }
          }
        }
        (*done_ptr)(absl::OkStatus());
      })) {
    (*done_ptr)(ClosedError());
  }
}

absl::StatusOr<std::vector<std::pair<std::string, std::string>>>
MemoryStore::LoadObjects() {
  MutexLock lock(&data_mu_);
  return std::vector<std::pair<std::string, std::string>>(objects_.begin(),
                                                          objects_.end());
}

void MemoryStore::Close() {
  MutexLock close_lock(&close_mu_);
  {
    MutexLock lock(&queue_mu_);
    closing_ = true;
    queue_cv_.SignalAll();
  }
  // The writer drains what was queued before closing_ was set.
  if (writer_.joinable()) {
    writer_.join();
  }
}

}  // namespace forq::server
