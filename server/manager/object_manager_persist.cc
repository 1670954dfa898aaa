// Persistence of data objects: the row format, recovery, rollback, and the
// ordered, one-batch-at-a-time write queue whose completions release the
// replies.
//
// Store keys (all under "manager/obj/"):
//   NAME                 header: "FQO2", type, version, generation, then
//                        per type: dict/namespace next order number;
//                        list head + size; queue maxsize, unfinished, head,
//                        size; array typecode + length; value bytes (+
//                        typecode); pipe one_way + both inboxes; event set.
//   NAME|GEN|k<hex key>  dict/namespace entry: order number, value.
//   NAME|GEN|c<hex>      32 consecutive list/queue/array elements: first
//                        absolute position, count, elements.
// '|' cannot occur in names, so rows never collide with another object.
// A header "FQO1" is the whole-object blob of older forqd versions; such an
// object is rewritten in rows on its next change.
#include <cstring>
#include <map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "spdlog/spdlog.h"

#include "common/notification.h"
#include "server/manager/object_manager.h"
#include "server/manager/object_util.h"

namespace forq::server {

using namespace manager_internal;  // NOLINT(google-build-using-namespace):
                                   // internal helpers

namespace {

constexpr int64_t kChunk = 32;

int64_t ChunkOf(int64_t pos) {
  return pos >= 0 ? pos / kChunk : -((-pos + kChunk - 1) / kChunk);
}

std::string RowPrefix(const std::string& name, uint64_t gen) {
  return absl::StrCat(kObjectKeyPrefix, name, "|", absl::Hex(gen), "|");
}

std::string ChunkKey(const std::string& name, uint64_t gen, int64_t chunk) {
  return absl::StrCat(RowPrefix(name, gen), "c",
                      absl::Hex(static_cast<uint64_t>(chunk)));
}

// `prefix` is RowPrefix(name, gen).
std::string KeyRow(absl::string_view prefix, const std::string& key) {
  return absl::StrCat(prefix, "k", absl::BytesToHexString(key));
}

bool IsSequence(ManagerType t) {
  return t == ManagerType::kList || t == ManagerType::kQueue ||
         t == ManagerType::kArray;
}

bool IsMap(ManagerType t) {
  return t == ManagerType::kDict || t == ManagerType::kNamespace;
}

// Element `pos` (absolute) of a sequence object, as row bytes.
void WriteElement(const ManagerType type, const std::string* text,
                  uint64_t bits, BlobWriter& w) {
  if (type == ManagerType::kArray) {
    w.U64(bits);
  } else {
    w.Str(*text);
  }
}

}  // namespace

// ------------------------------------------------------------ marks

void ObjectManager::MarkKeyLocked(Batch& b, const std::string& name,
                                  const std::string& key) {
  b.op_marked = true;
  if (store_ != nullptr) b.dirty[name].keys.insert(key);
}

void ObjectManager::MarkPosLocked(Batch& b, const std::string& name,
                                  int64_t pos) {
  b.op_marked = true;
  if (store_ != nullptr) b.dirty[name].positions.insert(pos);
}

void ObjectManager::MarkFromLocked(Batch& b, const std::string& name,
                                   int64_t pos) {
  b.op_marked = true;
  if (store_ == nullptr) return;
  Dirty& d = b.dirty[name];
  d.from = d.from ? std::min(*d.from, pos) : pos;
}

// ------------------------------------------------------------ recovery

std::map<std::string, ObjectManager::StoredRows> ObjectManager::GroupRows(
    std::vector<std::pair<std::string, std::string>> blobs,
    std::string* epoch) {
  std::map<std::string, StoredRows> out;
  for (auto& [key, blob] : blobs) {
    if (key == kEpochKey) {
      *epoch = std::move(blob);
      continue;
    }
    if (!absl::StartsWith(key, kObjectKeyPrefix)) continue;
    absl::string_view rest = absl::string_view(key).substr(
        std::char_traits<char>::length(kObjectKeyPrefix));
    const size_t bar = rest.find('|');
    if (bar == absl::string_view::npos) {
      out[std::string(rest)].header = std::move(blob);
    } else {
      out[std::string(rest.substr(0, bar))].rows.emplace_back(
          std::string(rest.substr(bar + 1)), std::move(blob));
    }
  }
  return out;
}

bool ObjectManager::ParseStoredObject(const std::string& name,
                                      const StoredRows& in, Object* out,
                                      std::vector<std::string>* orphans) const {
  auto orphan_all = [&] {
    for (const auto& [suffix, blob] : in.rows) {
      orphans->push_back(absl::StrCat(kObjectKeyPrefix, name, "|", suffix));
    }
  };
  if (in.header.empty() || !ValidateName(name).ok()) {
    orphan_all();
    return false;
  }
  BlobReader r(in.header);
  Object o;
  std::string magic;
  uint64_t type = 0, version = 0, n = 0;
  if (!r.Str(&magic) || (magic != "FQO1" && magic != "FQO2") || !r.U64(&type) ||
      !r.U64(&version) || type < 1 || type > worker::kMaxManagerType ||
      !Persistent(static_cast<ManagerType>(type))) {
    orphan_all();
    return false;
  }
  const bool v2 = magic == "FQO2";
  o.type = static_cast<ManagerType>(type);
  o.version = version;
  if (v2 && !r.U64(&o.gen)) return false;
  bool ok = true;
  std::string s;
  int64_t size = 0;  // v2 sequences: elements expected in rows
  switch (o.type) {
    case ManagerType::kDict:
    case ManagerType::kNamespace:
      if (v2) {
        uint64_t next = 0;
        ok = r.U64(&next);
        o.map.set_next_seq(next);
      } else {
        ok = r.Count(&n);
        for (uint64_t i = 0; ok && i < n; ++i) {
          std::string k;
          ok = r.Str(&k) && r.Str(&s);
          if (ok) o.map.Set(k, s);
        }
      }
      break;
    case ManagerType::kList:
      if (v2) {
        uint64_t head = 0, len = 0;
        ok = r.U64(&head) && r.U64(&len) && len <= options_.max_entries;
        o.head = static_cast<int64_t>(head);
        size = static_cast<int64_t>(len);
      } else {
        ok = r.Count(&n);
        for (uint64_t i = 0; ok && i < n; ++i) {
          ok = r.Str(&s);
          if (ok) o.list.push_back(s);
        }
      }
      break;
    case ManagerType::kValue: {
      ok = r.Str(&o.value);
      uint64_t tc = 0;
      if (ok && !r.Done()) {
        ok = r.U64(&tc) &&
             ParseTypecode(std::string(1, static_cast<char>(tc))).ok();
      }
      o.typecode = static_cast<char>(tc);
      break;
    }
    case ManagerType::kArray: {
      uint64_t tc = 0;
      ok = r.U64(&tc) &&
           ParseTypecode(std::string(1, static_cast<char>(tc))).ok() &&
           r.U64(&n) && n <= options_.max_entries;
      o.typecode = static_cast<char>(tc);
      if (ok && v2) {
        size = static_cast<int64_t>(n);
        break;
      }
      for (uint64_t i = 0; ok && i < n; ++i) {
        uint64_t v = 0;
        ok = r.U64(&v);
        if (!IsFloatTypecode(o.typecode)) {
          o.ints.push_back(static_cast<int64_t>(v));
        } else {
          double d;
          memcpy(&d, &v, sizeof(d));
          o.doubles.push_back(d);
        }
      }
      break;
    }
    case ManagerType::kQueue: {
      uint64_t maxsize = 0, unfinished = 0;
      ok = r.U64(&maxsize) && r.U64(&unfinished);
      o.maxsize = static_cast<int64_t>(maxsize);
      o.unfinished = static_cast<int64_t>(unfinished);
      if (ok && v2) {
        uint64_t head = 0, len = 0;
        ok = r.U64(&head) && r.U64(&len) && len <= options_.max_entries;
        o.head = static_cast<int64_t>(head);
        size = static_cast<int64_t>(len);
        break;
      }
      ok = ok && r.Count(&n);
      for (uint64_t i = 0; ok && i < n; ++i) {
        ok = r.Str(&s);
        if (ok) o.items.push_back(s);
      }
      break;
    }
    case ManagerType::kPipe: {
      uint64_t one_way = 0;
      ok = r.U64(&one_way);
      o.one_way = one_way != 0;
      for (int e = 0; ok && e < 2; ++e) {
        ok = r.Count(&n);
        for (uint64_t i = 0; ok && i < n; ++i) {
          ok = r.Str(&s);
          if (ok) o.inbox[e].push_back(s);
        }
      }
      break;
    }
    case ManagerType::kEvent: {
      uint64_t set = 0;
      ok = r.U64(&set);
      o.is_set = set != 0;
      break;
    }
    default:
      ok = false;
  }
  if (!ok || !r.Done()) return false;

  // Rows: only the header's generation counts.
  const std::string gen = absl::StrCat(absl::Hex(o.gen), "|");
  std::map<uint64_t, std::pair<std::string, std::string>> entries;
  std::map<int64_t, std::vector<std::string>> texts;
  std::map<int64_t, std::vector<uint64_t>> bits;
  for (const auto& [suffix, blob] : in.rows) {
    absl::string_view rest = suffix;
    if (!v2 || !absl::ConsumePrefix(&rest, gen)) {
      orphans->push_back(absl::StrCat(kObjectKeyPrefix, name, "|", suffix));
      continue;
    }
    BlobReader rr(blob);
    if (IsMap(o.type) && absl::ConsumePrefix(&rest, "k")) {
      uint64_t seq = 0;
      std::string value;
      const std::string key = absl::HexStringToBytes(rest);
      if (!rr.U64(&seq) || !rr.Str(&value) || !rr.Done() ||
          !entries.emplace(seq, std::make_pair(key, std::move(value))).second) {
        return false;
      }
    } else if (IsSequence(o.type) && absl::ConsumePrefix(&rest, "c")) {
      uint64_t first = 0, count = 0;
      if (!rr.U64(&first) || !rr.Count(&count) || count == 0 ||
          count > static_cast<uint64_t>(kChunk)) {
        return false;
      }
      for (uint64_t i = 0; i < count; ++i) {
        if (o.type == ManagerType::kArray) {
          uint64_t v = 0;
          if (!rr.U64(&v)) return false;
          bits[static_cast<int64_t>(first)].push_back(v);
        } else {
          std::string v;
          if (!rr.Str(&v)) return false;
          texts[static_cast<int64_t>(first)].push_back(std::move(v));
        }
      }
      if (!rr.Done()) return false;
    } else {
      return false;
    }
  }
  for (auto& [seq, kv] : entries) {
    if (!o.map.Restore(kv.first, std::move(kv.second), seq)) return false;
  }
  if (v2 && IsSequence(o.type)) {
    // The chunks must tile [head, head + size) exactly.
    int64_t next = o.type == ManagerType::kArray ? 0 : o.head;
    auto append = [&](int64_t first, size_t count) {
      if (first != next) return false;
      next += static_cast<int64_t>(count);
      return true;
    };
    for (auto& [first, vals] : texts) {
      if (!append(first, vals.size())) return false;
      for (auto& v : vals) {
        if (o.type == ManagerType::kList) {
          o.list.push_back(std::move(v));
        } else {
          o.items.push_back(std::move(v));
        }
      }
    }
    for (auto& [first, vals] : bits) {
      if (!append(first, vals.size())) return false;
      for (uint64_t v : vals) {
        if (!IsFloatTypecode(o.typecode)) {
          o.ints.push_back(static_cast<int64_t>(v));
        } else {
          double d;
          memcpy(&d, &v, sizeof(d));
          o.doubles.push_back(d);
        }
      }
    }
    const int64_t start = o.type == ManagerType::kArray ? 0 : o.head;
    if (next - start != size) return false;
    o.stored_lo = start;
    o.stored_hi = next;
  }
  for (const auto& v : o.list) o.seq_bytes += v.size();
  for (const auto& v : o.items) o.seq_bytes += v.size();
  for (const auto& box : o.inbox) {
    for (const auto& v : box) o.seq_bytes += v.size();
  }
  o.needs_full_write = !v2;
  *out = std::move(o);
  return true;
}

absl::Status ObjectManager::Recover() {
  if (store_ == nullptr) return absl::OkStatus();
  FORQ_ASSIGN_OR_RETURN(auto blobs, store_->LoadObjects());
  RowLog::Replayed replayed = RowLog::Replay(std::move(blobs));
  std::string epoch_blob;
  std::map<std::string, StoredRows> stored =
      GroupRows(std::move(replayed.rows), &epoch_blob);
  uint64_t stored_epoch = 0;
  if (!epoch_blob.empty()) {
    BlobReader r(epoch_blob);
    if (!r.U64(&stored_epoch)) spdlog::warn("manager: corrupt epoch blob");
  }
  int loaded = 0, skipped = 0;
  std::vector<Store::ObjectWrite> cleanup;
  {
    MutexLock lock(&mu_);
    for (const auto& [name, rows] : stored) {
      Object o;
      std::vector<std::string> orphans;
      const bool ok = ParseStoredObject(name, rows, &o, &orphans);
      for (std::string& key : orphans) {
        cleanup.push_back({std::move(key), std::nullopt});
      }
      if (!ok) {
        if (!rows.header.empty()) {
          spdlog::warn("manager: skipping corrupt persisted object '{}'",
                       absl::CHexEscape(name));
          ++skipped;
        }
        continue;
      }
      total_bytes_ += ObjectBytes(o);
      objects_[name] = std::move(o);
      ++loaded;
    }
    epoch_ = stored_epoch + 1;
    UpdateGaugesLocked();
  }
  const size_t records = replayed.records.size();
  // The new epoch must be durable before any token of it is handed out, or
  // a crash could make the next start reuse it. Rows no object owns any
  // more (a whole rewrite left the old generation) go in the same batch,
  // which also compacts the log found.
  BlobWriter w;
  w.U64(stored_epoch + 1);
  cleanup.push_back({kEpochKey, std::move(w.out())});
  const size_t orphans = cleanup.size() - 1;
  std::vector<Store::ObjectWrite> writes;
  {
    MutexLock lock(&mu_);
    row_log_.Reset(replayed);
    writes = row_log_.Prepare(std::move(cleanup), /*compact=*/true);
  }
  Notification written;
  absl::Status write_status;
  store_->WriteObjects(std::move(writes),
                       [&written, &write_status](absl::Status s) {
                         write_status = std::move(s);
                         written.Notify();
                       });
  // The callback references the locals: wait for it without a bound (the
  // store owes us a call).
  written.WaitForNotification();
  {
    MutexLock lock(&mu_);
    row_log_.Done(write_status.ok());
  }
  FORQ_RETURN_IF_ERROR(write_status);
  spdlog::info(
      "manager: recovered {} objects ({} skipped, {} stale rows removed, {} "
      "log records compacted), token epoch {}",
      loaded, skipped, orphans, records, stored_epoch + 1);
  return absl::OkStatus();
}

// ------------------------------------------------------------ writes

void ObjectManager::RowWritesLocked(const std::string& name, Object& o,
                                    const Dirty& dirty,
                                    std::vector<Store::ObjectWrite>& out) {
  Dirty d = dirty;
  if (o.needs_full_write) {
    d.all = true;
    o.needs_full_write = false;
  }
  if (IsMap(o.type)) {
    if (d.all) {
      // Unknown keys may have gone: start a new generation of rows; the
      // old one is removed at the next start (Recover).
      ++o.gen;
      o.map.ForEach(
          [&](const std::string& k, const std::string&) { d.keys.insert(k); });
    }
    const std::string prefix = RowPrefix(name, o.gen);
    for (const std::string& k : d.keys) {
      const std::string* v = o.map.Find(k);
      if (v == nullptr) {
        out.push_back({KeyRow(prefix, k), std::nullopt});
      } else {
        BlobWriter w;
        w.U64(o.map.Seq(k));
        w.Str(*v);
        out.push_back({KeyRow(prefix, k), std::move(w.out())});
      }
    }
  } else if (IsSequence(o.type)) {
    const bool array = o.type == ManagerType::kArray;
    const int64_t size = static_cast<int64_t>(
        o.type == ManagerType::kList ? o.list.size()
        : o.type == ManagerType::kQueue
            ? o.items.size()
            : (IsFloatTypecode(o.typecode) ? o.doubles.size() : o.ints.size()));
    const int64_t lo = array ? 0 : o.head;
    const int64_t hi = lo + size;
    std::set<int64_t> chunks;
    const int64_t span_lo = std::min(lo, o.stored_lo);
    const int64_t span_hi = std::max(hi, o.stored_hi);
    if (d.all) {
      for (int64_t c = ChunkOf(span_lo);
           span_hi > span_lo && c <= ChunkOf(span_hi - 1); ++c) {
        chunks.insert(c);
      }
    } else {
      for (int64_t p : d.positions) chunks.insert(ChunkOf(p));
      if (d.from && span_hi > *d.from) {
        for (int64_t c = ChunkOf(*d.from); c <= ChunkOf(span_hi - 1); ++c) {
          chunks.insert(c);
        }
      }
    }
    for (int64_t c : chunks) {
      const int64_t first = std::max(c * kChunk, lo);
      const int64_t last = std::min(c * kChunk + kChunk, hi);
      if (first >= last) {
        out.push_back({ChunkKey(name, o.gen, c), std::nullopt});
        continue;
      }
      BlobWriter w;
      w.U64(static_cast<uint64_t>(first));
      w.U64(static_cast<uint64_t>(last - first));
      for (int64_t p = first; p < last; ++p) {
        const size_t i = static_cast<size_t>(p - lo);
        if (array) {
          uint64_t bits = 0;
          if (IsFloatTypecode(o.typecode)) {
            memcpy(&bits, &o.doubles[i], sizeof(bits));
          } else {
            bits = static_cast<uint64_t>(o.ints[i]);
          }
          WriteElement(o.type, nullptr, bits, w);
        } else {
          WriteElement(o.type,
                       o.type == ManagerType::kList ? &o.list[i] : &o.items[i],
                       0, w);
        }
      }
      out.push_back({ChunkKey(name, o.gen, c), std::move(w.out())});
    }
    o.stored_lo = lo;
    o.stored_hi = hi;
  }
  // The header, last: small, and names the generation the rows belong to.
  BlobWriter w;
  w.Str("FQO2");
  w.U64(static_cast<uint64_t>(o.type));
  w.U64(o.version);
  w.U64(o.gen);
  switch (o.type) {
    case ManagerType::kDict:
    case ManagerType::kNamespace:
      w.U64(o.map.next_seq());
      break;
    case ManagerType::kList:
      w.U64(static_cast<uint64_t>(o.head));
      w.U64(o.list.size());
      break;
    case ManagerType::kValue:
      w.Str(o.value);
      if (o.typecode != 0) w.U64(static_cast<uint64_t>(o.typecode));
      break;
    case ManagerType::kArray:
      w.U64(static_cast<uint64_t>(o.typecode));
      w.U64(IsFloatTypecode(o.typecode) ? o.doubles.size() : o.ints.size());
      break;
    case ManagerType::kQueue:
      w.U64(static_cast<uint64_t>(o.maxsize));
      w.U64(static_cast<uint64_t>(o.unfinished));
      w.U64(static_cast<uint64_t>(o.head));
      w.U64(o.items.size());
      break;
    case ManagerType::kPipe:
      w.U64(o.one_way ? 1 : 0);
      for (const auto& inbox : o.inbox) {
        w.U64(inbox.size());
        for (const auto& v : inbox) w.Str(v);
      }
      break;
    case ManagerType::kEvent:
      w.U64(o.is_set ? 1 : 0);
      break;
    default:
      return;
  }
  out.push_back({absl::StrCat(kObjectKeyPrefix, name), std::move(w.out())});
}

void ObjectManager::DeleteRowsLocked(const std::string& name, Object& o,
                                     Batch& b) {
  // Rows the next group commit would have written (a removed dict key's
  // tombstone, a new generation) are written first; the deletes below
  // then cover every row the store may hold.
  auto pending = pending_.dirty.find(name);
  if (pending != pending_.dirty.end()) {
    RowWritesLocked(name, o, pending->second, b.writes);
    pending_.dirty.erase(pending);
  }
  if (IsMap(o.type)) {
    const std::string prefix = RowPrefix(name, o.gen);
    o.map.ForEach([&](const std::string& k, const std::string&) {
      b.writes.push_back({KeyRow(prefix, k), std::nullopt});
    });
  } else if (IsSequence(o.type) && o.stored_hi > o.stored_lo) {
    for (int64_t c = ChunkOf(o.stored_lo); c <= ChunkOf(o.stored_hi - 1); ++c) {
      b.writes.push_back({ChunkKey(name, o.gen, c), std::nullopt});
    }
  }
  b.writes.push_back({absl::StrCat(kObjectKeyPrefix, name), std::nullopt});
  b.written.push_back(name);
}

void ObjectManager::PendObjectLocked(const std::string& name) {
  if (pending_.objects.insert(name).second) ++unpersisted_[name];
}

void ObjectManager::QueueWritesLocked(Batch& b) {
  if (store_ == nullptr) {
    b.dirty.clear();
    b.writes.clear();
    b.written.clear();
    return;
  }
  bool changed = false;
  for (auto& [name, d] : b.dirty) {
    auto it = objects_.find(name);
    if (it == objects_.end() || !Persistent(it->second.type)) continue;
    auto [pit, fresh] = pending_.dirty.try_emplace(name);
    if (fresh) {
      pit->second = std::move(d);
    } else {
      Dirty& into = pit->second;
      into.all = into.all || d.all;
      into.keys.merge(d.keys);
      into.positions.merge(d.positions);
      if (d.from)
        into.from = into.from ? std::min(*into.from, *d.from) : d.from;
    }
    PendObjectLocked(name);
    changed = true;
  }
  b.dirty.clear();
  if (!b.writes.empty()) {
    for (Store::ObjectWrite& w : b.writes)
      pending_.writes.push_back(std::move(w));
    for (const std::string& name : b.written) PendObjectLocked(name);
    b.writes.clear();
    b.written.clear();
    changed = true;
  }
  if (changed || b.hold) {
    // The replies ride along and are sent once the writes are durable.
    for (Completion& c : b.replies) pending_.replies.push_back(std::move(c));
    b.replies.clear();
    b.hold = false;
  }
  StartPersistLocked(b);
}

void ObjectManager::StartPersistLocked(Batch& b) {
  if (persisting_ || pending_.empty()) return;
  auto send = std::make_shared<PersistSend>();
  const bool deletes = !pending_.writes.empty();
  send->writes = std::move(pending_.writes);
  for (auto& [name, d] : pending_.dirty) {
    auto it = objects_.find(name);
    if (it == objects_.end() || !Persistent(it->second.type)) continue;
    RowWritesLocked(name, it->second, d, send->writes);
  }
  if (deletes) {
    // A row written after a delete of the same row wins; keep one of each.
    std::map<std::string, size_t> pos;
    std::vector<Store::ObjectWrite> unique;
    for (Store::ObjectWrite& w : send->writes) {
      auto [it, fresh] = pos.emplace(w.name, unique.size());
      if (fresh) {
        unique.push_back(std::move(w));
      } else {
        unique[it->second].blob = std::move(w.blob);
      }
    }
    send->writes = std::move(unique);
  }
  if (!send->writes.empty()) {
    send->writes = row_log_.Prepare(std::move(send->writes));
  }
  send->objects.assign(pending_.objects.begin(), pending_.objects.end());
  send->replies = std::move(pending_.replies);
  pending_ = PendingPersist();
  // With no rows to write (only reads waiting for earlier batches, which
  // are durable by now) it completes at once, in Finish.
  persisting_ = !send->writes.empty();
  if (!persisting_) {
    for (const std::string& name : send->objects) {
      auto it = unpersisted_.find(name);
      if (it != unpersisted_.end() && --it->second <= 0) unpersisted_.erase(it);
    }
  }
  b.send = std::move(send);
}

void ObjectManager::Finish(Batch& b) {
  for (uint64_t t : b.cancel_timers) timers_.Cancel(t);
  if (std::shared_ptr<PersistSend> send = std::move(b.send)) {
    if (send->writes.empty()) {
      for (auto& [done, reply] : send->replies) done(std::move(reply));
    } else {
      {
        MutexLock lock(&persist_mu_);
        ++persist_callbacks_;
      }
      std::vector<Store::ObjectWrite> writes = std::move(send->writes);
      store_->WriteObjects(std::move(writes), [this, send](absl::Status s) {
        // OnPersisted answers callers, who may then destroy the manager,
        // and goes on using it: the destructor waits for this count.
        OnPersisted(std::move(s), send);
        MutexLock lock(&persist_mu_);
        --persist_callbacks_;
        persist_callbacks_done_.SignalAll();
      });
    }
  }
  for (auto& [done, reply] : b.replies) done(std::move(reply));
  b.replies.clear();
  for (auto& sink : b.flush) sink->Flush();
}

void ObjectManager::OnPersisted(absl::Status status,
                                std::shared_ptr<PersistSend> sent) {
  Batch b;
  std::vector<Completion> failed;
  {
    MutexLock lock(&mu_);
    persisting_ = false;
    row_log_.Done(status.ok());
    if (status.ok()) {
      for (const std::string& name : sent->objects) {
        auto it = unpersisted_.find(name);
        if (it != unpersisted_.end() && --it->second <= 0) {
          unpersisted_.erase(it);
        }
      }
    } else {
      spdlog::error("manager: store write failed, rolling back: {}",
                    status.ToString());
      // Everything pending behind the failed batch was computed on top of
      // it.
      std::set<std::string> names(sent->objects.begin(), sent->objects.end());
      names.insert(pending_.objects.begin(), pending_.objects.end());
      failed = std::move(pending_.replies);
      pending_ = PendingPersist();
      for (const std::string& name : names) unpersisted_.erase(name);
      RollbackLocked(names, b);
      UpdateGaugesLocked();
    }
    QueueWritesLocked(b);
    persist_cv_.SignalAll();
  }
  auto deliver = [&status](std::vector<Completion>& replies) {
    for (auto& [done, reply] : replies) {
      if (!status.ok() && reply.ok()) {
        done(absl::UnavailableError(
            absl::StrCat("manager change not persisted, so not applied: ",
                         status.message())));
      } else {
        done(std::move(reply));
      }
    }
  };
  deliver(sent->replies);
  deliver(failed);
  Finish(b);
}

void ObjectManager::RollbackLocked(const std::set<std::string>& names,
                                   Batch& b) {
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> blobs =
      store_->LoadObjects();
  std::map<std::string, StoredRows> stored;
  if (blobs.ok()) {
    RowLog::Replayed replayed = RowLog::Replay(*std::move(blobs));
    // The log as the store holds it, whatever became of the failed batch.
    row_log_.Reset(replayed);
    std::string epoch;
    stored = GroupRows(std::move(replayed.rows), &epoch);
  } else {
    spdlog::error("manager: cannot reload objects to roll back: {}",
                  blobs.status().ToString());
  }
  for (const std::string& name : names) {
    auto it = objects_.find(name);
    Object restored;
    std::vector<std::string> orphans;
    auto sit = stored.find(name);
    const bool exists =
        sit != stored.end() &&
        ParseStoredObject(name, sit->second, &restored, &orphans);
    if (!exists) {
      if (it == objects_.end()) continue;
      // The store never had it: it goes, and so do its waiters.
      std::vector<uint64_t> ids(it->second.waiters.begin(),
                                it->second.waiters.end());
      for (uint64_t id : ids) {
        std::optional<Waiter> w = TakeWaiterLocked(id, b);
        if (w) {
          b.replies.emplace_back(
              std::move(w->done),
              absl::AbortedError(absl::StrCat(
                  "'", name,
                  "' was rolled back: its creation was not persisted")));
        }
      }
      total_bytes_ -= std::min(total_bytes_, ObjectBytes(it->second));
      objects_.erase(it);
      continue;
    }
    if (it == objects_.end()) {
      total_bytes_ += ObjectBytes(restored);
      it = objects_.emplace(name, std::move(restored)).first;
    } else {
      total_bytes_ -= std::min(total_bytes_, ObjectBytes(it->second));
      total_bytes_ += ObjectBytes(restored);
      restored.waiters = std::move(it->second.waiters);
      restored.version = std::max(restored.version, it->second.version) + 1;
      it->second = std::move(restored);
    }
    // No pump here: it could write again while the store still fails.
    // Waiters are served by the next operation on the object.
  }
}

}  // namespace forq::server
