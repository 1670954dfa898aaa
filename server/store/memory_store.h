// MemoryStore: the Store contract kept in process memory, for tests and for
// `--store=memory` runs where nothing has to survive a restart.
#ifndef FORQ_SERVER_STORE_MEMORY_STORE_H_
#define FORQ_SERVER_STORE_MEMORY_STORE_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

#include "common/mutex.h"
#include "server/store/store.h"

namespace forq::server {

// Thread-safe. Writes are queued and applied in submission order by one
// small writer thread, which then runs the `done` callback, exactly as the
// SQLite store does, so callers never see a callback re-enter them from
// inside Insert/Update. Reads see every write whose callback has run (and
// possibly later ones). Callbacks must not block and must not call Close().
// After Close(), writes fail with Unavailable and
// their callback runs inline on the calling thread; reads keep working.
class MemoryStore final : public Store {
 public:
  MemoryStore();
  ~MemoryStore() override;
  MemoryStore(const MemoryStore&) = delete;
  MemoryStore& operator=(const MemoryStore&) = delete;

  void Insert(std::vector<v1::Task> tasks, InsertDone done) override;
  void Update(std::vector<v1::Task> tasks, WriteDone done) override;
  absl::StatusOr<v1::Task> Get(absl::string_view id) override;
  absl::StatusOr<ListPage> List(const ListQuery& query) override;
  absl::StatusOr<std::vector<v1::Task>> LoadUnfinished() override;
  absl::StatusOr<int64_t> PurgeExpired(absl::Time now) override;
  void PutObject(std::string name, std::string blob, WriteDone done) override;
  void DeleteObject(std::string name, WriteDone done) override;
  void WriteObjects(std::vector<ObjectWrite> writes, WriteDone done) override;
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> LoadObjects()
      override;
  void Close() override;

 private:
  // Queues `op` for the writer thread; false once closed.
  bool Enqueue(std::function<void()> op) ABSL_LOCKS_EXCLUDED(queue_mu_);
  void WriterLoop() ABSL_LOCKS_EXCLUDED(queue_mu_);

  absl::StatusOr<std::vector<InsertResult>> ApplyInsert(
      std::vector<v1::Task> tasks) ABSL_LOCKS_EXCLUDED(data_mu_);
  absl::Status ApplyUpdate(std::vector<v1::Task> tasks)
      ABSL_LOCKS_EXCLUDED(data_mu_);

  Mutex queue_mu_;
  CondVar queue_cv_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(queue_mu_);
  bool closing_ ABSL_GUARDED_BY(queue_mu_) = false;

  Mutex close_mu_;  // Serialises Close() so the writer is joined once.
  std::thread writer_ ABSL_GUARDED_BY(close_mu_);

  Mutex data_mu_;
  // Ordered by id: List pages in id order.
  std::map<std::string, v1::Task> tasks_ ABSL_GUARDED_BY(data_mu_);
  // Non-empty idempotency key -> task id.
  absl::flat_hash_map<std::string, std::string> by_key_
      ABSL_GUARDED_BY(data_mu_);
  std::map<std::string, std::string> objects_ ABSL_GUARDED_BY(data_mu_);
};

}  // namespace forq::server

#endif  // FORQ_SERVER_STORE_MEMORY_STORE_H_
