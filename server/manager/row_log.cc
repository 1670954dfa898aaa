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
constexpr char kRecordMagic[] = "FQL1";

// Applies one record to `changed`; false (and nothing applied) if it does
// not parse.
bool ApplyRecord(
    const std::string& blob,
    std::unordered_map<std::string, std::optional<std::string>>& changed) {
  BlobReader r(blob);
  std::string magic;
  uint64_t n = 0;
  if (!r.Str(&magic) || magic != kRecordMagic || !r.Count(&n)) return false;
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

// The sequence number of a record key; false if it has none.
bool SeqOf(absl::string_view key, uint64_t* seq) {
  return absl::SimpleHexAtoi(key.substr(sizeof(kLogKeyPrefix) - 1), seq);
}

}  // namespace

std::string RowLog::RecordKey(uint64_t seq) {
  // Fixed width: the keys sort in sequence order.
  return absl::StrFormat("%s%016x", kLogKeyPrefix, seq);
}

RowLog::Replayed RowLog::Replay(Rows blobs) {
  Replayed out;
  std::vector<std::pair<std::string, std::string>> records;
  out.rows.reserve(blobs.size());
  for (auto& kv : blobs) {
    if (absl::StartsWith(kv.first, kLogKeyPrefix)) {
      records.push_back(std::move(kv));
    } else {
      out.rows.push_back(std::move(kv));
    }
  }
  std::sort(records.begin(), records.end());
  std::unordered_map<std::string, std::optional<std::string>> changed;
  uint64_t last = 0;
  for (auto& [key, blob] : records) {
    uint64_t seq = 0;
    const bool numbered = SeqOf(key, &seq);
    if (out.skipped > 0 || (last != 0 && numbered && seq != last + 1)) {
      ++out.skipped;
    } else if (!ApplyRecord(blob, changed)) {
      spdlog::error("manager: skipping corrupt log record {}", key);
      ++out.corrupt;
    }
    if (numbered) last = seq;
    out.records.push_back(std::move(key));
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
  records_ = r.records;
  bytes_ = 0;
  for (const auto& [name, value] : changed_) {
    bytes_ += name.size() + (value ? value->size() : 0);
  }
  for (const std::string& key : records_) {
    uint64_t seq = 0;
    if (SeqOf(key, &seq)) next_seq_ = std::max(next_seq_, seq + 1);
  }
  on_way_.clear();
  on_way_rows_ = 0;
  on_way_bytes_ = 0;
  // Records after a gap must go before any new record is written, or the
  // gap would hide the new ones too.
  unsure_ = r.skipped > 0;
}

bool RowLog::Full(size_t rows, size_t bytes) const {
  return records_.size() + on_way_.size() + 1 > options_.max_records ||
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
    w.U64(rows.size());
    for (const Store::ObjectWrite& row : rows) {
      w.U64(row.blob ? 1 : 0);
      w.Str(row.name);
      if (row.blob) w.Str(*row.blob);
    }
    next.key = RecordKey(next_seq_++);
    next.rows = std::move(rows);
    next.bytes = bytes;
    on_way_rows_ += next.rows.size();
    on_way_bytes_ += bytes;
    std::vector<Store::ObjectWrite> out;
    out.push_back({next.key, std::move(w.out())});
    return out;
  }
  next.compaction = true;
  if (changed_.empty() && records_.empty()) return rows;
  // The rows of every record (latest value) and of this batch, in place.
  std::unordered_map<std::string, std::optional<std::string>> merged = changed_;
  for (Store::ObjectWrite& w : rows) merged[w.name] = std::move(w.blob);
  std::vector<Store::ObjectWrite> out;
  out.reserve(merged.size() + records_.size());
  for (auto& [name, blob] : merged) out.push_back({name, std::move(blob)});
  for (const std::string& key : records_) out.push_back({key, std::nullopt});
  return out;
}

void RowLog::Done(bool ok) {
  if (on_way_.empty()) return;
  OnWay done = std::move(on_way_.front());
  on_way_.pop_front();
  if (done.compaction) {
    if (ok) {
      changed_.clear();
      records_.clear();
      bytes_ = 0;
      unsure_ = false;
    } else {
      unsure_ = true;
    }
    return;
  }
  on_way_rows_ -= done.rows.size();
  on_way_bytes_ -= done.bytes;
  records_.push_back(done.key);
  // After a failure, records behind it are skipped at replay: they only
  // wait to be deleted.
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
