#include "server/manager/row_log.h"

#include <algorithm>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "spdlog/spdlog.h"

#include "server/manager/object_util.h"

namespace forq::server {

using manager_internal::BlobReader;
using manager_internal::BlobWriter;

namespace {

constexpr char kLogKeyPrefix[] = "manager/log/";
// The last sequence number a compaction folded into the rows.
constexpr char kStartKey[] = "manager/log/start";
constexpr char kRecordMagic[] = "FQL2";
// A record of older versions: its key was "manager/log/<seq>".
constexpr char kLegacyMagic[] = "FQL1";

// A record's header: its sequence number, and where its rows begin. False
// if it has none.
bool ParseHeader(absl::string_view key, const std::string& blob, uint64_t* seq,
                 bool* legacy, size_t* rows_at) {
  BlobReader r(blob);
  std::string magic;
  if (!r.Str(&magic)) return false;
  *legacy = magic == kLegacyMagic;
  if (*legacy) {
    if (!absl::SimpleHexAtoi(key.substr(sizeof(kLogKeyPrefix) - 1), seq)) {
      return false;
    }
  } else if (magic != kRecordMagic || !r.U64(seq)) {
    return false;
  }
  *rows_at = r.pos_;
  return true;
}

// Applies the rows of one record (from `rows_at`) to `changed`; false (and
// nothing applied) if they do not parse.
bool ApplyRecord(
    absl::string_view blob, size_t rows_at,
    std::unordered_map<std::string, std::optional<std::string>>& changed) {
  BlobReader r(blob.substr(rows_at));
  uint64_t n = 0;
  if (!r.Count(&n)) return false;
  std::vector<std::pair<std::string, std::optional<std::string>>> rows;
  rows.reserve(n);
  for (uint64_t i = 0; i < n; ++i) {
    uint64_t has_blob = 0;
    std::string name, value;
    if (!r.U64(&has_blob) || has_blob > 1 || !r.Str(&name) ||
        (has_blob == 1 && !r.Str(&value))) {
      return false;
    }
    rows.emplace_back(std::move(name), has_blob == 1
                                           ? std::optional(std::move(value))
                                           : std::nullopt);
  }
  if (!r.Done()) return false;
  for (auto& [name, value] : rows) changed[name] = std::move(value);
  return true;
}

struct Record {
  uint64_t seq;
  size_t rows_at;
  std::string key;
  std::string blob;
};

// Splits the log out of `blobs` (the rest stays): its start, if stored,
// and its records. Rows that are not records go to `doomed`.
std::optional<uint64_t> TakeLog(
    std::vector<std::pair<std::string, std::string>>& blobs,
    std::vector<Record>& records, RowLog::Replayed& out) {
  std::optional<uint64_t> start;
  for (auto& kv : blobs) {
    if (!absl::StartsWith(kv.first, kLogKeyPrefix)) {
      out.rows.push_back(std::move(kv));
      continue;
    }
    uint64_t seq = 0;
    if (kv.first == kStartKey) {
      BlobReader r(kv.second);
      if (r.U64(&seq) && r.Done()) {
        start = seq;
      } else {
        spdlog::error("manager: corrupt log start; replaying every record");
        ++out.corrupt;
      }
      continue;
    }
    bool legacy = false;
    size_t rows_at = 0;
    if (!ParseHeader(kv.first, kv.second, &seq, &legacy, &rows_at)) {
      spdlog::error("manager: skipping corrupt log record {}", kv.first);
      ++out.corrupt;
      out.doomed.push_back(std::move(kv.first));
      continue;
    }
    if (legacy) out.doomed.push_back(kv.first);
    records.push_back(
        {seq, rows_at, std::move(kv.first), std::move(kv.second)});
  }
  return start;
}

}  // namespace

std::string RowLog::SlotKey(uint64_t slot) {
  return absl::StrFormat("%s%016x", kLogKeyPrefix, slot);
}

RowLog::Replayed RowLog::Replay(Rows blobs) {
  Replayed out;
  out.rows.reserve(blobs.size());
  std::vector<Record> records;
  const std::optional<uint64_t> start = TakeLog(blobs, records, out);
  std::sort(records.begin(), records.end(),
            [](const Record& a, const Record& b) { return a.seq < b.seq; });
  std::unordered_map<std::string, std::optional<std::string>> changed;
  out.last_seq = start.value_or(0);
  // Without a stored start (older versions), the first record begins.
  std::optional<uint64_t> expect;
  if (start) expect = *start + 1;
  for (const Record& rec : records) {
    out.last_seq = std::max(out.last_seq, rec.seq);
    if (start && rec.seq <= *start) continue;  // an older generation
    if (out.skipped > 0 || (expect && rec.seq != *expect)) {
      ++out.skipped;
      continue;
    }
    expect = rec.seq + 1;
    if (ApplyRecord(rec.blob, rec.rows_at, changed)) {
      ++out.applied;
    } else {
      spdlog::error("manager: skipping corrupt log record {}", rec.key);
      ++out.corrupt;
      out.doomed.push_back(rec.key);
    }
  }
  if (out.skipped > 0) {
    spdlog::warn(
        "manager: skipping {} log records written behind a batch that "
        "failed",
        out.skipped);
  }
  if (!changed.empty()) {
    Rows rows;
    rows.reserve(out.rows.size() + changed.size());
    for (auto& kv : out.rows) {
      if (changed.count(kv.first) == 0) rows.push_back(std::move(kv));
    }
    for (const auto& [name, value] : changed) {
      if (value) rows.emplace_back(name, *value);
    }
    out.rows = std::move(rows);
  }
  out.changed = std::move(changed);
  return out;
}

void RowLog::Reset(const Replayed& r) {
  changed_.clear();
  changed_.insert(r.changed.begin(), r.changed.end());
  records_ = r.applied;
  bytes_ = 0;
  for (const auto& [name, value] : changed_) {
    bytes_ += name.size() + (value ? value->size() : 0);
  }
  next_seq_ = std::max(next_seq_, r.last_seq + 1);
  doomed_ = r.doomed;
  on_way_.clear();
  on_way_rows_ = 0;
  on_way_bytes_ = 0;
  // Which slots hold live records is not known: a new record could
  // overwrite one, or land behind a gap. Compact first.
  unsure_ = true;
}

bool RowLog::Full(size_t rows, size_t bytes) const {
  return records_ + on_way_.size() + 1 > options_.max_records ||
         changed_.size() + on_way_rows_ + rows > options_.max_rows ||
         bytes_ + on_way_bytes_ + bytes > options_.max_bytes;
}

bool RowLog::CanAppend() const {
  // A batch's own rows are not known yet: leave room for a few.
  return !unsure_ && !Full(16, 4096);
}

std::vector<Store::ObjectWrite> RowLog::Prepare(
    std::vector<Store::ObjectWrite> rows, bool compact) {
  size_t bytes = 0;
  for (const Store::ObjectWrite& w : rows) {
    bytes += w.name.size() + (w.blob ? w.blob->size() : 0);
  }
  // With records on their way a compaction would have to wait for them:
  // the log grows past its bounds by this record instead.
  const bool record =
      !on_way_.empty() || (!compact && !unsure_ && !Full(rows.size(), bytes));
  OnWay& next = on_way_.emplace_back();
  if (record) {
    BlobWriter w;
    w.Str(kRecordMagic);
    w.U64(next_seq_++);
    w.U64(rows.size());
    for (const Store::ObjectWrite& row : rows) {
      w.U64(row.blob ? 1 : 0);
      w.Str(row.name);
      if (row.blob) w.Str(*row.blob);
    }
    const uint64_t slot = records_ + on_way_.size() - 1;
    next.rows = std::move(rows);
    next.bytes = bytes;
    on_way_rows_ += next.rows.size();
    on_way_bytes_ += bytes;
    std::vector<Store::ObjectWrite> out;
    out.push_back({SlotKey(slot), std::move(w.out())});
    return out;
  }
  next.compaction = true;
  // The rows of every record (latest value) and of this batch, in place.
  std::vector<Store::ObjectWrite> out;
  if (changed_.empty()) {
    out = std::move(rows);
  } else {
    std::unordered_map<std::string, std::optional<std::string>> merged =
        changed_;
    for (Store::ObjectWrite& w : rows) merged[w.name] = std::move(w.blob);
    out.reserve(merged.size() + doomed_.size() + 1);
    for (auto& [name, blob] : merged) out.push_back({name, std::move(blob)});
  }
  for (const std::string& key : doomed_) out.push_back({key, std::nullopt});
  if (next_seq_ > 1) {
    // Every record written so far, in its slot or not, is now behind the
    // start.
    BlobWriter w;
    w.U64(next_seq_ - 1);
    out.push_back({kStartKey, std::move(w.out())});
  }
  return out;
}

void RowLog::Done(bool ok) {
  if (on_way_.empty()) return;
  OnWay done = std::move(on_way_.front());
  on_way_.pop_front();
  if (done.compaction) {
    if (ok) {
      changed_.clear();
      records_ = 0;
      bytes_ = 0;
      doomed_.clear();
      unsure_ = false;
    } else {
      unsure_ = true;
    }
    return;
  }
  on_way_rows_ -= done.rows.size();
  on_way_bytes_ -= done.bytes;
  // Its slot is taken, whatever became of the write.
  ++records_;
  // After a failure, records behind it are skipped at replay: they only
  // wait for the next compaction to move the start past them.
  if (!ok || unsure_) {
    unsure_ = true;
    return;
  }
  bytes_ += done.bytes;
  for (Store::ObjectWrite& w : done.rows) {
    changed_[w.name] = std::move(w.blob);
  }
}

}  // namespace forq::server
