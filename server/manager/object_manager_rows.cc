// The row format of persisted data objects: turning an object's changes
// into store rows, and rows back into an object.
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
#include <algorithm>
#include <cstring>
#include <map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

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

// An array element from its stored bits.
void AppendArrayBits(uint64_t bits, char typecode, std::vector<int64_t>& ints,
                     std::vector<double>& doubles) {
  if (!IsFloatTypecode(typecode)) {
    ints.push_back(static_cast<int64_t>(bits));
  } else {
    double d;
    memcpy(&d, &bits, sizeof(d));
    doubles.push_back(d);
  }
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

// ------------------------------------------------------------ recovery

std::map<std::string, ObjectManager::StoredRows> ObjectManager::GroupRows(
    std::vector<std::pair<std::string, std::string>> blobs,
    std::string* epoch) {
  std::map<std::string, StoredRows> out;
  for (auto& row : blobs) {
    const std::string& key = row.first;
    std::string& blob = row.second;
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
        if (ok) AppendArrayBits(v, o.typecode, o.ints, o.doubles);
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
        AppendArrayBits(v, o.typecode, o.ints, o.doubles);
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

// ------------------------------------------------------------ writes

void ObjectManager::RowWritesLocked(const std::string& name, Object& o,
                                    Dirty& d,
                                    std::vector<Store::ObjectWrite>& out) {
  if (o.needs_full_write) {
    d.all = true;
    o.needs_full_write = false;
  }
  if (IsMap(o.type)) {
    if (d.all) {
      // Unknown keys may have gone: start a new generation of rows; the
      // old one is removed at the next start (Recover).
      ++o.gen;
      d.keys.clear();
      o.map.ForEach([&](const std::string& k, const std::string&) {
        d.keys.push_back(k);
      });
    } else {
      std::sort(d.keys.begin(), d.keys.end());
      d.keys.erase(std::unique(d.keys.begin(), d.keys.end()), d.keys.end());
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
    std::vector<int64_t> chunks;
    const int64_t span_lo = std::min(lo, o.stored_lo);
    const int64_t span_hi = std::max(hi, o.stored_hi);
    if (d.all) {
      for (int64_t c = ChunkOf(span_lo);
           span_hi > span_lo && c <= ChunkOf(span_hi - 1); ++c) {
        chunks.push_back(c);
      }
    } else {
      for (int64_t p : d.positions) chunks.push_back(ChunkOf(p));
      if (d.from && span_hi > *d.from) {
        for (int64_t c = ChunkOf(*d.from); c <= ChunkOf(span_hi - 1); ++c) {
          chunks.push_back(c);
        }
      }
      std::sort(chunks.begin(), chunks.end());
      chunks.erase(std::unique(chunks.begin(), chunks.end()), chunks.end());
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

}  // namespace forq::server
