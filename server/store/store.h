// Durable task storage. The scheduler keeps unfinished tasks in memory and
// writes every state change here; a restart reloads unfinished tasks.
#ifndef FORQ_SERVER_STORE_STORE_H_
#define FORQ_SERVER_STORE_STORE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

#include "forq/v1/task.pb.h"
#include "server/store/cluster.h"

namespace forq::server {

enum class Durability {
  // An acknowledged write is on disk (fsync), commits grouped.
  kSync,
  // Commits every few milliseconds; acknowledgements wait for the commit.
  kBatch,
  // No fsync: the last moments may be lost on power loss (not on kill -9).
  kNone,
};

// Parses "sync", "batch" or "none".
absl::StatusOr<Durability> ParseDurability(absl::string_view text);

struct StoreOptions {
  // "sqlite" (default, file in data_dir), "memory" (nothing survives), or
  // a PostgreSQL libpq URI "postgres://user@host:port/db" (also in
  // postgres_uri).
  std::string kind = "sqlite";
  // PostgreSQL: the libpq connection URI and the most idle read
  // connections kept open.
  std::string postgres_uri;
  int pool_size = 4;
  std::string data_dir = "./forq-data";
  Durability durability = Durability::kSync;
  // kBatch: longest time between commits.
  absl::Duration batch_interval = absl::Milliseconds(5);
  // PostgreSQL only: several forqd nodes share the store as one queue.
  ClusterOptions cluster;
};

struct InsertResult {
  v1::Task task;
  // True when the idempotency key matched a stored task (returned in task).
  bool existing = false;
};

struct ListQuery {
  std::string queue;                                 // "" = any
  v1::TaskState state = v1::TASK_STATE_UNSPECIFIED;  // unspecified = any
  std::string kind;                                  // "" = any
  // 0 = the default page (100); larger sizes are capped at 1000.
  int page_size = 0;
  // Opaque, from a previous ListPage; "" = first page. Results are ordered
  // by task id (creation order).
  std::string page_token;
};

struct ListPage {
  std::vector<v1::Task> tasks;
  std::string next_page_token;
};

// Thread-safe. Writes are asynchronous: `done` callbacks run on a thread of
// the store's (never the caller's, except for a closed store's refusal) once
// the write is durable per the durability mode, in commit order; they must
// not block. Writes submitted from one thread are applied in order.
class Store {
 public:
  using InsertDone =
      std::function<void(absl::StatusOr<std::vector<InsertResult>>)>;
  using WriteDone = std::function<void(absl::Status)>;

  virtual ~Store() = default;

  // Stores new tasks, all or none. A task whose non-empty idempotency_key is
  // already stored (or appears earlier in the same call) is not inserted:
  // its result carries the stored task with existing = true.
  virtual void Insert(std::vector<v1::Task> tasks, InsertDone done) = 0;
  // Replaces stored tasks (by id) with these versions.
  virtual void Update(std::vector<v1::Task> tasks, WriteDone done) = 0;
  // As Insert and Update, for a caller that holds no lock `done` (or what
  // it calls) could need: a store may then commit the write on the calling
  // thread when nothing else is being written, saving a hand-off to its
  // writer and back (SqliteStore with durability none). Ordered with every
  // other write as if queued.
  virtual void InsertHere(std::vector<v1::Task> tasks, InsertDone done) {
    Insert(std::move(tasks), std::move(done));
  }
  virtual void UpdateHere(std::vector<v1::Task> tasks, WriteDone done) {
    Update(std::move(tasks), std::move(done));
  }
  // NotFound for an unknown (or purged) id.
  virtual absl::StatusOr<v1::Task> Get(absl::string_view id) = 0;
  virtual absl::StatusOr<ListPage> List(const ListQuery& query) = 0;
  // Every QUEUED and RUNNING task, for recovery at start-up.
  virtual absl::StatusOr<std::vector<v1::Task>> LoadUnfinished() = 0;
  // Deletes terminal tasks with finished_at + result_ttl <= now; returns how
  // many were deleted.
  virtual absl::StatusOr<int64_t> PurgeExpired(absl::Time now) = 0;

  // Manager objects, stored as opaque blobs by name.
  virtual void PutObject(std::string name, std::string blob,
                         WriteDone done) = 0;
  virtual void DeleteObject(std::string name, WriteDone done) = 0;
  // One change of WriteObjects: store `blob` under `name`, or delete `name`
  // when blob is nullopt.
  struct ObjectWrite {
    std::string name;
    std::optional<std::string> blob;
  };
  // Applies every write as one unit: all of them become durable, or (on
  // failure) none does. Lets the Manager persist one change as several rows.
  virtual void WriteObjects(std::vector<ObjectWrite> writes,
                            WriteDone done) = 0;
  virtual absl::StatusOr<std::vector<std::pair<std::string, std::string>>>
  LoadObjects() = 0;

  // Flushes pending writes and stops the writer thread; later writes fail
  // with Unavailable. Idempotent.
  virtual void Close() = 0;

  // The shared queue of a cluster store (StoreOptions.cluster.enabled);
  // null for a single-node store, whose scheduler keeps the queue in
  // memory. In cluster mode Update fences the writes of attempts this node
  // claimed: a write for an attempt that is no longer this node's is
  // refused (WorkSource::Callbacks::fenced) and the rest of the call
  // applied.
  virtual WorkSource* work_source() { return nullptr; }
};

// "sqlite in <data_dir>", "memory", or the PostgreSQL URI with any
// password masked: for logs.
std::string DescribeStore(const StoreOptions& options);

// Opens the store described by `options` (creating data_dir if needed).
absl::StatusOr<std::unique_ptr<Store>> OpenStore(const StoreOptions& options);

}  // namespace forq::server

#endif  // FORQ_SERVER_STORE_STORE_H_
