// The Manager's rows written through a log. A group commit's row writes go
// to the store as ONE record (key "manager/log/<seq>") instead of one store
// row each; now and then a compaction writes the rows the records changed
// in place (each once, with its latest value) and deletes the records, in
// the same atomic Store::WriteObjects. Replay() turns what LoadObjects
// returns back into plain rows, so readers never see the log.
//
// Why: a store row costs about the same to write whether its value is 10
// bytes or 1 KB (a B-tree search and page update per row, plus the
// statement), so a batch of 64 dict sets costs 64 row writes; as one record
// it costs one, and a key set many times between compactions is written in
// place once. Durability is unchanged: every batch is one atomic write,
// acknowledged only when the store has it.
#ifndef FORQ_SERVER_MANAGER_ROW_LOG_H_
#define FORQ_SERVER_MANAGER_ROW_LOG_H_

#include <cstddef>
#include <cstdint>
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

// Thread-compatible: the ObjectManager calls it under its mutex, one batch
// at a time (Prepare, then Done before the next Prepare).
class RowLog {
 public:
  using Rows = std::vector<std::pair<std::string, std::string>>;

  // What LoadObjects returned, with every log record applied in order.
  struct Replayed {
    Rows rows;  // the store's rows as the records leave them
    // The rows the records changed (nullopt: deleted), and their keys.
    std::unordered_map<std::string, std::optional<std::string>> changed;
    std::vector<std::string> records;
    // Records that did not parse (skipped; they stay listed in `records`).
    int corrupt = 0;
  };
  static Replayed Replay(Rows blobs);

  explicit RowLog(RowLogOptions options = {}) : options_(options) {}
  RowLog(const RowLog&) = delete;
  RowLog& operator=(const RowLog&) = delete;

  // Starts over from the store's log as Replay found it.
  void Reset(const Replayed& r);
  // The writes that persist `rows` (one group commit, in order, a row
  // named twice taking its last value): one record, or a compaction when
  // the log is full or `compact` is set. Each call is followed by Done.
  std::vector<Store::ObjectWrite> Prepare(std::vector<Store::ObjectWrite> rows,
                                          bool compact = false);
  // Whether the writes of the last Prepare became durable. After a
  // failure the store may or may not hold them: Reset from a fresh Replay;
  // otherwise the next Prepare compacts, deleting every record written,
  // the failed one too, and keeping only rows of records that succeeded.
  void Done(bool ok);

  size_t records() const { return records_.size(); }
  size_t changed_rows() const { return changed_.size(); }

 private:
  static std::string RecordKey(uint64_t seq);

  const RowLogOptions options_;
  // The rows the records changed (latest value) and the records.
  std::unordered_map<std::string, std::optional<std::string>> changed_;
  std::vector<std::string> records_;
  size_t bytes_ = 0;
  uint64_t next_seq_ = 1;
  // The last Prepare: a record (its key and rows) or a compaction.
  bool pending_compaction_ = false;
  std::string pending_key_;
  std::vector<Store::ObjectWrite> pending_rows_;
  size_t pending_bytes_ = 0;
  // A failed write may or may not be in the store: compact next time
  // (deleting its record too) unless Reset says what the store holds.
  bool unsure_ = false;
};

}  // namespace forq::server

#endif  // FORQ_SERVER_MANAGER_ROW_LOG_H_
