// SqliteStore: the default, durable Store. One SQLite file in WAL mode,
// written by a single writer thread that groups every queued write into one
// transaction (group commit), read through a pool of separate connections.
// docs/storage.md describes the schema and what each durability mode promises.
#ifndef FORQ_SERVER_STORE_SQLITE_STORE_H_
#define FORQ_SERVER_STORE_SQLITE_STORE_H_

#include <chrono>
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
#include "common/scoped_fd.h"
#include "server/store/idle_pool.h"
#include "server/store/store.h"

struct sqlite3;
struct sqlite3_stmt;

namespace forq::server {

// Thread-safe. Insert/Update/PutObject/DeleteObject only queue the write;
// the writer thread applies everything queued in one transaction (each call
// inside its own SAVEPOINT, so a failing call rolls back only its own rows),
// commits per the durability mode, then runs each `done` callback on the
// writer thread. Callbacks must not block and must not call Close().
// Reads (Get, List, LoadUnfinished, LoadObjects) use pooled read-only
// connections and never wait for the writer; they see every write whose
// callback has run. PurgeExpired runs on the writer and blocks its caller
// until committed. After Close(), writes fail with Unavailable and their
// callback runs inline on the calling thread.
class SqliteStore final : public Store {
 public:
  // Schema version kept in PRAGMA user_version. A file with a larger version
  // was written by a newer forqd and is refused; versions 1 to 3 are
  // migrated.
  static constexpr int kSchemaVersion = 4;

  // Creates options.data_dir if needed, locks it (flock on
  // <data_dir>/forq.lock, so two stores or two forqd never share one
  // directory) and opens (or creates) <data_dir>/forq.db. Errors name the
  // file and the cause: Unavailable/PermissionDenied if the dir or file
  // cannot be created or written, FailedPrecondition if the dir is locked
  // by another store or the schema is newer than this code, DataLoss if the
  // file is not a valid database.
  static absl::StatusOr<std::unique_ptr<SqliteStore>> Open(
      const StoreOptions& options);

  ~SqliteStore() override;  // Close()s.
  SqliteStore(const SqliteStore&) = delete;
  SqliteStore& operator=(const SqliteStore&) = delete;

  void Insert(std::vector<v1::Task> tasks, InsertDone done) override;
  void Update(std::vector<v1::Task> tasks, WriteDone done) override;
  void InsertHere(std::vector<v1::Task> tasks, InsertDone done) override;
  void UpdateHere(std::vector<v1::Task> tasks, WriteDone done) override;
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

  // Path of the database file.
  const std::string& path() const { return path_; }

 private:
  struct PendingWrite;
  struct Writer;
  struct Reader;

  SqliteStore(const StoreOptions& options, std::string path, ScopedFd lock,
              std::unique_ptr<Writer> writer);

  // Queues `op`; returns it back (to be failed by the caller) once closed.
  std::unique_ptr<PendingWrite> Enqueue(std::unique_ptr<PendingWrite> op)
      ABSL_LOCKS_EXCLUDED(queue_mu_);
  // The write of Insert/InsertHere and Update/UpdateHere.
  static std::unique_ptr<PendingWrite> InsertOp(std::vector<v1::Task> tasks,
                                                InsertDone done);
  static std::unique_ptr<PendingWrite> UpdateOp(std::vector<v1::Task> tasks,
                                                WriteDone done);
  // Queues `op`, or fails it with Unavailable once the store is closed.
  void EnqueueOrFail(std::unique_ptr<PendingWrite> op)
      ABSL_LOCKS_EXCLUDED(queue_mu_);
  // InsertHere/UpdateHere: commits `op` on this thread if the writer waits
  // for work with nothing queued (durability none only); else queues it.
  void CommitHereOrEnqueue(std::unique_ptr<PendingWrite> op)
      ABSL_LOCKS_EXCLUDED(queue_mu_, commit_mu_);
  void WriterLoop() ABSL_LOCKS_EXCLUDED(queue_mu_);
  // A committed write and its own status, awaiting the WAL sync (kBatch).
  using Committed = std::pair<std::unique_ptr<PendingWrite>, absl::Status>;
  // Applies `group` in one transaction and runs every callback, except in
  // kBatch where successful commits move to `unsynced` for SyncWal.
  void CommitGroup(std::vector<std::unique_ptr<PendingWrite>>& group,
                   std::vector<Committed>& unsynced);
  // Fsyncs the WAL, then runs the callbacks in `unsynced` and clears it.
  void SyncWal(std::vector<Committed>& unsynced);
  // Runs the callbacks of finished writes in commit order: on the callback
  // thread when more writes wait (what callers do in them, answering RPCs
  // and fanning out results, then never delays the next commit), else here.
  void Deliver(std::vector<Committed> done) ABSL_LOCKS_EXCLUDED(done_mu_);
  void CallbackLoop() ABSL_LOCKS_EXCLUDED(done_mu_);
  // Applies `group` in one transaction, each call's status in `statuses`.
  // Not `isolated`: Aborted as soon as one call fails (nothing committed).
  // `isolated`: each call in a savepoint, so a failing call is undone alone.
  // Other errors are the transaction's own (nothing committed).
  absl::Status RunGroup(std::vector<std::unique_ptr<PendingWrite>>& group,
                        std::vector<absl::Status>& statuses, bool isolated);
  absl::Status Apply(PendingWrite& op);
  absl::Status ApplyInsert(PendingWrite& op);
  absl::Status ApplyUpdate(PendingWrite& op);
  absl::Status ApplyPurge(PendingWrite& op);
  // One row of the objects table; the error names the object (the message
  // is built only on failure: these run once per Manager write).
  absl::Status PutObjectRow(const std::string& name, absl::string_view blob);
  absl::Status DeleteObjectRow(const std::string& name);
  // Inserts op.tasks[i] for each i of `rows` (at most kRowsPerInsert), in
  // multi-row statements as far as they go, the rest one by one.
  absl::Status InsertRows(PendingWrite& op, const std::vector<size_t>& rows);
  // One multi-row INSERT of op.tasks[rows[0..count)].
  absl::Status InsertChunk(PendingWrite& op, const size_t* rows, int count);
  absl::Status InsertRow(const v1::Task& task);
  // Adds a finished `task` to the expiry row of the open transaction.
  void NoteExpiry(const v1::Task& task);
  // Stores that row (none if no finished task was written).
  absl::Status WriteExpiry();

  absl::StatusOr<std::unique_ptr<Reader>> AcquireReader();
  void ReleaseReader(std::unique_ptr<Reader> reader);

  const std::string path_;
  const Durability durability_;
  const absl::Duration batch_interval_;
  // flock()ed <data_dir>/forq.lock; declared before writer_ so it is
  // released only after the database is closed.
  const ScopedFd lock_;

  // Used by the thread holding commit_mu_: the writer thread, or a caller
  // committing its own write (CommitHereOrEnqueue); by Open before them.
  const std::unique_ptr<Writer> writer_;
  // Held while a group is committed and its callbacks run inline.
  Mutex commit_mu_;

  Mutex queue_mu_;
  CondVar queue_cv_;
  std::deque<std::unique_ptr<PendingWrite>> queue_ ABSL_GUARDED_BY(queue_mu_);
  bool closing_ ABSL_GUARDED_BY(queue_mu_) = false;
  // The writer thread sleeps until a write is queued.
  bool writer_waiting_ ABSL_GUARDED_BY(queue_mu_) = false;

  Mutex done_mu_;
  CondVar done_cv_;
  std::vector<Committed> done_ ABSL_GUARDED_BY(done_mu_);
  bool done_closing_ ABSL_GUARDED_BY(done_mu_) = false;
  // The callback thread is running a batch taken from done_.
  bool callbacks_running_ ABSL_GUARDED_BY(done_mu_) = false;

  Mutex close_mu_;  // Serialises Close() so the threads are joined once.
  std::thread writer_thread_ ABSL_GUARDED_BY(close_mu_);
  std::thread callback_thread_ ABSL_GUARDED_BY(close_mu_);

  // Idle read connections kept open (kIdleReaders); more are opened on
  // demand.
  IdlePool<Reader> readers_;
};

}  // namespace forq::server

#endif  // FORQ_SERVER_STORE_SQLITE_STORE_H_
