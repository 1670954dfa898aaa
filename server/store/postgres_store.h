// PostgresStore: the Store on a PostgreSQL database (--store=postgres://...).
// Same model as SqliteStore: one writer connection applies every queued
// write in one transaction (group commit; calls isolated by savepoints only
// when one of them fails), a callback thread runs the acks in commit order,
// and reads use a pool of connections. Every statement is prepared; a
// group's task rows go to the server as multi-row statements (unnest of
// arrays). docs/storage.md describes the schema. In cluster mode it is also
// the node's WorkSource: claims, leases with a heartbeat, the reaper of
// expired leases, fenced writes and LISTEN/NOTIFY wake-ups.
#ifndef FORQ_SERVER_STORE_POSTGRES_STORE_H_
#define FORQ_SERVER_STORE_POSTGRES_STORE_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

#include "common/mutex.h"
#include "server/store/cluster.h"
#include "server/store/idle_pool.h"
#include "server/store/store.h"

struct pg_result;  // libpq's PGresult

namespace forq::server {

namespace postgres_internal {
class Conn;
struct Param;
struct ResultDeleter {
  void operator()(pg_result* res) const;
};
using Result = std::unique_ptr<pg_result, ResultDeleter>;
}  // namespace postgres_internal

// Thread-safe; the threading contract is SqliteStore's (see store.h).
// Durability: kSync and kBatch ack after the transaction's commit record is
// flushed on the server (synchronous_commit=on); kNone acks after the
// commit without waiting for the flush (synchronous_commit=off: a crash of
// the database server, not of forqd, may lose the last moments).
class PostgresStore final : public Store, public WorkSource {
 public:
  // Version in forq_schema_version. A database with a larger version was
  // written by a newer forqd and is refused; versions 1 and 2 are
  // migrated.
  static constexpr int kSchemaVersion = 4;

  // True for "postgres://..." and "postgresql://..." (libpq URIs).
  static bool IsUri(absl::string_view text);

  // Connects to options.postgres_uri, creates or migrates the schema (in
  // the connection's current schema, so one database can hold several
  // forq stores), and takes the store's single-writer lock (a session
  // advisory lock: a second forqd on the same database and schema is
  // refused with FailedPrecondition). In cluster mode the lock is shared
  // by every cluster node (a single-node forqd is still refused) and the
  // node registers itself with a new incarnation. Unavailable if the
  // server cannot be reached, FailedPrecondition if the schema is newer
  // than this code.
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
  WorkSource* work_source() override {
    return cluster_.enabled ? this : nullptr;
  }

  // WorkSource (cluster mode).
  absl::Status StartCluster(Callbacks callbacks,
                            std::vector<std::string> kinds) override;
  void StopCluster() override;
  absl::StatusOr<std::vector<v1::Task>> Claim(int n) override;
  std::vector<bool> InsertOwned(
      std::vector<v1::Task> tasks, std::vector<bool> own,
      std::function<void(absl::StatusOr<std::vector<v1::Task>>)> done) override;
  absl::StatusOr<Ended> ReadEnded(const std::vector<std::string>& ids) override;
  absl::StatusOr<CancelResult> CancelTask(const std::string& id) override;
  void SetWatched(const std::string& key, bool watched) override;
  bool Watched(const v1::Task& task) override;
  void PublishEvent(const v1::TaskEvent& event) override;
  const std::string& node_id() const override { return node_id_; }
  int64_t incarnation() const override {
    return incarnation_.load(std::memory_order_acquire);
  }
  // lease/10 while alone_.
  absl::Duration HoldAlone() const override;
  bool OtherNodeRuns(absl::string_view kind) override;

  // Cluster upkeep, run by the upkeep thread (or by tests when
  // ClusterOptions.background is false). Heartbeat extends the leases of
  // this node's attempts in one statement and reports those it could not
  // extend as lost; after a self-fence it registers a new incarnation.
  absl::Status Heartbeat() ABSL_LOCKS_EXCLUDED(upkeep_mu_);
  // Fences the node if no heartbeat succeeded for lease/2: its attempts
  // are reported lost and claims stop until a heartbeat succeeds. True if
  // the node is fenced.
  bool CheckSelfFence() ABSL_LOCKS_EXCLUDED(owned_mu_);
  // Expired leases (any node's) go back to QUEUED with backoff, or DEAD
  // when no attempts are left; failure reason WORKER_LOST, "lease
  // expired". Returns how many were reaped (at most 500 per call).
  absl::StatusOr<int> ReapExpired() ABSL_LOCKS_EXCLUDED(upkeep_mu_);
  // Tests only: runs on the writer thread after each committed group, before
  // the group's effects on this node's attempts are recorded. Set before
  // any write.
  void SetAfterCommitHookForTest(std::function<void()> hook) {
    after_commit_hook_ = std::move(hook);
  }
  // Writes refused by the attempt fence so far.
  int64_t fenced_writes() const {
    return fenced_writes_.load(std::memory_order_relaxed);
  }

 private:
  struct PendingWrite;
  struct Owned;
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
  // Applies every call of `group` in the open transaction, the task rows
  // of all of them in one statement per kind; Aborted if one failed.
  absl::Status ApplyMerged(std::vector<std::unique_ptr<PendingWrite>>& group);
  absl::Status Apply(PendingWrite& op);
  absl::Status ApplyInsert(const std::vector<PendingWrite*>& ops);
  absl::Status ApplyUpdate(const std::vector<PendingWrite*>& ops);
  // The pieces of ApplyInsert and ApplyUpdate (TaskWrites holds the
  // statements' parameters and rows), also used by RunGroupPipelined.
  struct TaskWrites;
  absl::Status BuildInsert(const std::vector<PendingWrite*>& ops,
                           TaskWrites& w);
  absl::Status BuildUpdate(const std::vector<PendingWrite*>& ops, TaskWrites& w)
      ABSL_LOCKS_EXCLUDED(owned_mu_);
  absl::Status FinishPlainUpdate(TaskWrites& w,
                                 const postgres_internal::Result& res);
  void FinishFencedUpdate(TaskWrites& w, const postgres_internal::Result& res);
  std::vector<postgres_internal::Param> FencedParams(TaskWrites& w);
  static void NoteWritten(const std::pair<PendingWrite*, size_t>& row);
  // A write of a task the same group inserts becomes the inserted row (its
  // effects noted, as if applied): true if it did. `owned`: the attempt
  // the write is fenced by, if it is one of this node's.
  static bool Coalesce(TaskWrites& w,
                       const std::pair<PendingWrite*, size_t>& row,
                       const Owned* owned);
  // A group of task inserts (no idempotency keys), task updates and
  // notifications runs in two round trips (libpq pipeline mode).
  static bool Pipelinable(
      const std::vector<std::unique_ptr<PendingWrite>>& group);
  absl::Status RunGroupPipelined(
      std::vector<std::unique_ptr<PendingWrite>>& group);
  // The notification statement's parameters for a group's successful
  // calls; empty when there is nothing to notify.
  std::vector<postgres_internal::Param> NotifyParams(
      const std::vector<std::unique_ptr<PendingWrite>>& group,
      const std::vector<absl::Status>& statuses);
  // Registers a new incarnation and tells the other nodes (forq_node).
  absl::Status Register(Conn& conn);
  // Records `kinds` as this node's (kinds_ and its `nodes` row) and
  // announces the node, so the others read them at once.
  absl::Status RegisterKinds(std::vector<std::string> kinds)
      ABSL_LOCKS_EXCLUDED(upkeep_mu_, kinds_mu_);
  // Whether another node is live (alone_), read on `conn`.
  absl::Status CountOtherNodes(Conn& conn);
  // CountOtherNodes on the upkeep connection.
  absl::Status CountOtherNodesNow() ABSL_LOCKS_EXCLUDED(upkeep_mu_);
  // The upkeep thread's parts: a LISTEN connection for the cluster's
  // channels (null on failure), after which what it may have missed is
  // looked at again; and a count of the nodes when one announced itself
  // since `counted` (the announcements seen at the last count).
  std::unique_ptr<Conn> Listen(const Callbacks& cb);
  void CountIfAnnounced(uint64_t& counted);
  void UpkeepLoop();
  // Reads the LISTEN connection's notifications and hands them on.
  void HandleNotifications(Conn& listen, const Callbacks& cb);
  // Tells the other nodes again which keys this node watches, and forgets
  // the other nodes' watches that were not refreshed.
  void RefreshWatches() ABSL_LOCKS_EXCLUDED(watch_mu_);
  Callbacks callbacks() ABSL_LOCKS_EXCLUDED(callbacks_mu_);
  void Deliver(std::vector<Committed> done) ABSL_LOCKS_EXCLUDED(done_mu_);
  void CallbackLoop() ABSL_LOCKS_EXCLUDED(done_mu_);
  void Refuse(std::unique_ptr<PendingWrite> op);
  // After the group of `op` committed (or failed): its attempts inserted as
  // this node's become heart-beaten (or, without a row, fenced).
  void SettleOwnedInserts(const PendingWrite& op, bool committed)
      ABSL_LOCKS_EXCLUDED(owned_mu_);

  absl::StatusOr<std::unique_ptr<Conn>> AcquireReader();
  void ReleaseReader(std::unique_ptr<Conn> conn);
  // Runs `fn(conn)` on a read connection; if the connection turns out to
  // be lost (the server restarted: every idle connection is stale), drops
  // the idle ones and runs it once more on a fresh connection.
  template <typename Fn>
  auto WithReader(Fn fn) -> decltype(fn(std::declval<Conn&>()));

  const std::string uri_;
  const Durability durability_;

  // Used only by the writer thread (and by Open before it starts).
  const std::unique_ptr<Conn> writer_;
  std::function<void()> after_commit_hook_;

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

  // Idle read connections (--store_pool_size).
  IdlePool<Conn> readers_;

  // Cluster mode.
  const ClusterOptions cluster_;
  const std::string node_id_;
  std::atomic<int64_t> incarnation_{0};
  std::atomic<int64_t> fenced_writes_{0};
  // No other node was live at the last count, and none announced itself
  // since (node_notices_ counts the announcements heard).
  std::atomic<bool> alone_{false};
  std::atomic<uint64_t> node_notices_{0};
  // The kinds this node runs (StartCluster; empty: any), and those other
  // live nodes registered (read with the node count).
  Mutex kinds_mu_;
  std::vector<std::string> kinds_ ABSL_GUARDED_BY(kinds_mu_);
  absl::flat_hash_set<std::string> other_kinds_ ABSL_GUARDED_BY(kinds_mu_);
  // Attempts this node claimed and has not yet written out of RUNNING (or
  // had a write refused): the fence of their writes. `lost` ones were
  // reported lost and are no longer heart-beaten, but their late writes
  // are still fenced (never written as if they were not attempts).
  struct Owned {
    int attempt = 0;
    // Which claim of this node (last_claim_) made it this node's.
    uint64_t claim = 0;
    bool lost = false;
    // When it was reported lost or refused; forgotten 10 leases later.
    absl::Time lost_at;
    // Inserted as this node's (InsertOwned) and not committed yet: the
    // heartbeat cannot see its row, so it does not count it as lost.
    bool inserting = false;
    // Its cancel_requested column was seen by a heartbeat and reported.
    bool cancel_told = false;
  };
  Mutex owned_mu_;
  absl::flat_hash_map<std::string, Owned> owned_ ABSL_GUARDED_BY(owned_mu_);
  bool self_fenced_ ABSL_GUARDED_BY(owned_mu_) = false;
  uint64_t last_claim_ ABSL_GUARDED_BY(owned_mu_) = 0;
  absl::Time last_heartbeat_ ABSL_GUARDED_BY(owned_mu_);
  Mutex claim_mu_;
  std::unique_ptr<Conn> claim_conn_ ABSL_GUARDED_BY(claim_mu_);
  Mutex upkeep_mu_;
  std::unique_ptr<Conn> upkeep_conn_ ABSL_GUARDED_BY(upkeep_mu_);
  Mutex callbacks_mu_;
  Callbacks callbacks_ ABSL_GUARDED_BY(callbacks_mu_);
  Mutex upkeep_stop_mu_;
  bool upkeep_stop_ ABSL_GUARDED_BY(upkeep_stop_mu_) = false;
  std::thread upkeep_thread_ ABSL_GUARDED_BY(close_mu_);
  // Watches across nodes (SetWatched): keys watched on this node, with
  // counts; keys other nodes watch, until when (refreshed every
  // kWatchRefresh, forgotten after three missed refreshes).
  static constexpr absl::Duration kWatchRefresh = absl::Seconds(2);
  Mutex watch_mu_;
  absl::flat_hash_map<std::string, int> local_watches_
      ABSL_GUARDED_BY(watch_mu_);
  absl::flat_hash_map<std::string, absl::Time> remote_watches_
      ABSL_GUARDED_BY(watch_mu_);
  std::atomic<bool> any_remote_watch_{false};
};

}  // namespace forq::server

#endif  // FORQ_SERVER_STORE_POSTGRES_STORE_H_
