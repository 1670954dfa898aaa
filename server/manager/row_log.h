// The Manager's rows written through a log. A group commit's row writes go
// to the store as ONE record instead of one store row each; now and then a
// compaction writes the rows the records changed in place (each once, with
// its latest value) and moves the log's start past them, in the same atomic
// Store::WriteObjects. Replay() turns what LoadObjects returns back into
// plain rows, so readers never see the log.
//
// Records live in recycled slots: the n-th record after a compaction is
// written to the row "manager/log/<n>", overwriting whatever an earlier
// generation left there, and carries its sequence number. A compaction
// stores the last sequence number it folded in ("manager/log/start"), so
// older records still in their slots are ignored; it deletes no record.
//
// Why: a store row costs about the same to write whether its value is 10
// bytes or 1 KB (a B-tree search and page update per row, plus the
// statement), so a batch of 64 dict sets costs 64 row writes; as one record
// it costs one, and a key set many times between compactions is written in
// place once. Overwriting a slot costs one B-tree update; a new row per
// record cost an insert into the table and its key index, and later a
// delete from both. Durability is unchanged: every batch is one atomic
// write, acknowledged only when the store has it.
#ifndef FORQ_SERVER_MANAGER_ROW_LOG_H_
#define FORQ_SERVER_MANAGER_ROW_LOG_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "server/store/store.h"

namespace forq::server {

struct RowLogOptions {
  // Compact instead of adding a record once the log would hold more than
  // `max_records` records, or its records more than `max_rows` distinct
  // rows or `max_bytes` bytes. max_records = 0 writes every row in place.
  size_t max_records = 1024;
  size_t max_rows = 4096;
  size_t max_bytes = 4u << 20;
};

// Thread-compatible: the ObjectManager calls it under its mutex. Several
// records may be on their way to the store at once (Prepare, Prepare, then
// Done for each in the same order); a compaction is prepared only when
// nothing else is on its way.
class RowLog {
 public:
  using Rows = std::vector<std::pair<std::string, std::string>>;

  // What LoadObjects returned, with the log records applied in sequence
  // order from the log's start up to the first gap: a record whose
  // predecessor is missing was written behind a batch that failed, so it
  // and every record after it are skipped (the store keeps a prefix of the
  // batches). Records at or before the start are older generations.
  struct Replayed {
    Rows rows;  // the store's rows as the records leave them
    // The rows the records changed (nullopt: deleted).
    std::unordered_map<std::string, std::optional<std::string>> changed;
    size_t applied = 0;  // records applied
    // The largest sequence number in the store (a record's or the start).
    uint64_t last_seq = 0;
    // Rows the next compaction deletes: records that did not parse, and
    // records of the one-row-per-sequence-number layout of older versions.
    std::vector<std::string> doomed;
    // Records that did not parse, or came after a gap (skipped).
    int corrupt = 0;
    int skipped = 0;
  };
  static Replayed Replay(Rows blobs);

  explicit RowLog(RowLogOptions options = {}) : options_(options) {}
  RowLog(const RowLog&) = delete;
  RowLog& operator=(const RowLog&) = delete;

  // Starts over from the store's log as Replay found it (nothing on its
  // way). The next Prepare compacts: which slots hold live records is
  // known only after a compaction.
  void Reset(const Replayed& r);
  // Whether the next Prepare may go out while others are on their way: it
  // will be a record, with room in the log.
  bool CanAppend() const;
  // The writes that persist `rows` (one group commit, in order, a row
  // named twice taking its last value): one record, or a compaction when
  // nothing is on its way and the log is full or `compact` is set. Each
  // call is followed by Done, in the same order.
  std::vector<Store::ObjectWrite> Prepare(std::vector<Store::ObjectWrite> rows,
                                          bool compact = false);
  // Whether the writes of the oldest Prepare not yet done became durable.
  // After a failure the store may or may not hold them, and records
  // behind them are skipped at replay: Reset from a fresh Replay;
  // otherwise the next Prepare compacts, moving the start past every
  // record written, and keeping only rows of records that succeeded
  // before the failure.
  void Done(bool ok);
  // Whether the last Prepare was a compaction.
  bool last_was_compaction() const {
    return !on_way_.empty() && on_way_.back().compaction;
  }

  // Records written since the last compaction.
  size_t records() const { return records_; }
  size_t changed_rows() const { return changed_.size(); }

 private:
  // A Prepare whose Done has not come yet.
  struct OnWay {
    bool compaction = false;
    std::vector<Store::ObjectWrite> rows;
    size_t bytes = 0;
  };

  static std::string SlotKey(uint64_t slot);
  bool Full(size_t rows, size_t bytes) const;

  const RowLogOptions options_;
  // The rows the records changed (latest value) and how many records were
  // written (or failed) since the last compaction: the next record's slot.
  std::unordered_map<std::string, std::optional<std::string>> changed_;
  size_t records_ = 0;
  size_t bytes_ = 0;
  uint64_t next_seq_ = 1;
  // Rows the next compaction deletes (Replayed::doomed).
  std::vector<std::string> doomed_;
  std::deque<OnWay> on_way_;
  // Rows and bytes of the records on their way.
  size_t on_way_rows_ = 0;
  size_t on_way_bytes_ = 0;
  // A failed write may or may not be in the store: compact next time
  // (leaving its record behind the start) unless Reset says what the
  // store holds.
  bool unsure_ = false;
};

}  // namespace forq::server

#endif  // FORQ_SERVER_MANAGER_ROW_LOG_H_
