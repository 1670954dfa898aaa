// PostgresStore: the Store on a PostgreSQL database (--store=postgres://...).
// Same model as SqliteStore: one writer connection applies every queued
// write in one transaction (group commit; calls isolated by savepoints only
// when one of them fails), a callback thread runs the acks in commit order,
// and reads use a pool of connections. Every statement is prepared; a
// group's task rows go to the server as multi-row statements (unnest of
// arrays). docs/storage.md describes the schema.
#ifndef FORQ_SERVER_STORE_POSTGRES_STORE_H_
#define FORQ_SERVER_STORE_POSTGRES_STORE_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

#include "common/mutex.h"
#include "server/store/store.h"

namespace forq::server {

namespace postgres_internal {
class Conn;
}  // namespace postgres_internal

// Thread-safe; the threading contract is SqliteStore's (see store.h).
// Durability: kSync and kBatch ack after the transaction's commit record is
// flushed on the server (synchronous_commit=on); kNone acks after the
// commit without waiting for the flush (synchronous_commit=off: a crash of
// the database server, not of forqd, may lose the last moments).
class PostgresStore final : public Store {
 public:
  // Version in forq_schema_version. A database with a larger version was
  // written by a newer forqd and is refused.
  static constexpr int kSchemaVersion = 1;

  // True for "postgres://..." and "postgresql://..." (libpq URIs).
  static bool IsUri(absl::string_view text);

  // Connects to options.postgres_uri, creates or migrates the schema (in
  // the connection's current schema, so one database can hold several
  // forq stores), and takes the store's single-writer lock (a session
  // advisory lock: a second forqd on the same database and schema is
  // refused with FailedPrecondition). Unavailable if the server cannot be
  // reached, FailedPrecondition if the schema is newer than this code.
  static absl::StatusOr<std::unique_ptr<PostgresStore>> Open(
      const StoreOptions& options);

  ~PostgresStore() override;  // Close()s.
  PostgresStore(const PostgresStore&) = delete;
  PostgresStore& operator=(const PostgresStore&) = delete;

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
  struct PendingWrite;
  using Conn = postgres_internal::Conn;
  using Committed = std::pair<std::unique_ptr<PendingWrite>, absl::Status>;

  PostgresStore(const StoreOptions& options, std::unique_ptr<Conn> writer,
                std::unique_ptr<Conn> lock);

  std::unique_ptr<PendingWrite> Enqueue(std::unique_ptr<PendingWrite> op)
      ABSL_LOCKS_EXCLUDED(queue_mu_);
  void WriterLoop() ABSL_LOCKS_EXCLUDED(queue_mu_);
  void CommitGroup(std::vector<std::unique_ptr<PendingWrite>>& group);
  absl::Status RunGroup(std::vector<std::unique_ptr<PendingWrite>>& group,
                        std::vector<absl::Status>& statuses, bool isolated);
  absl::Status Apply(PendingWrite& op);
  absl::Status ApplyInsert(PendingWrite& op);
  absl::Status ApplyUpdate(PendingWrite& op);
  void Deliver(std::vector<Committed> done) ABSL_LOCKS_EXCLUDED(done_mu_);
  void CallbackLoop() ABSL_LOCKS_EXCLUDED(done_mu_);
  void Refuse(std::unique_ptr<PendingWrite> op);

  absl::StatusOr<std::unique_ptr<Conn>> AcquireReader()
      ABSL_LOCKS_EXCLUDED(pool_mu_);
  void ReleaseReader(std::unique_ptr<Conn> conn) ABSL_LOCKS_EXCLUDED(pool_mu_);

  const std::string uri_;
  const Durability durability_;
  const size_t pool_size_;

  // Used only by the writer thread (and by Open before it starts).
  const std::unique_ptr<Conn> writer_;

  Mutex queue_mu_;
  CondVar queue_cv_;
  std::deque<std::unique_ptr<PendingWrite>> queue_ ABSL_GUARDED_BY(queue_mu_);
  bool closing_ ABSL_GUARDED_BY(queue_mu_) = false;

  Mutex done_mu_;
  CondVar done_cv_;
  std::vector<Committed> done_ ABSL_GUARDED_BY(done_mu_);
  bool done_closing_ ABSL_GUARDED_BY(done_mu_) = false;

  Mutex close_mu_;
  std::thread writer_thread_ ABSL_GUARDED_BY(close_mu_);
  std::thread callback_thread_ ABSL_GUARDED_BY(close_mu_);
  // Holds the single-writer advisory lock for the store's lifetime.
  std::unique_ptr<Conn> lock_ ABSL_GUARDED_BY(close_mu_);

  Mutex pool_mu_;
  std::vector<std::unique_ptr<Conn>> idle_readers_ ABSL_GUARDED_BY(pool_mu_);
};

}  // namespace forq::server

#endif  // FORQ_SERVER_STORE_POSTGRES_STORE_H_
