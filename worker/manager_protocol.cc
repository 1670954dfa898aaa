#include "worker/manager_protocol.h"

#include <bitset>
#include <cstring>

#include "absl/strings/str_cat.h"

#include "common/status_macros.h"

namespace forq::worker {
namespace {

// Layout: "FQM" + version (1 byte) + kind ('q' request, 'r' reply), then
// fields as tag (1 byte) + length (4 bytes, little endian) + bytes. Integers
// are 8 bytes little endian, bools 1 byte (0 or 1). Repeated fields repeat
// their tag; an item is an item-key field directly followed by an
// item-value field. Unknown tags are an error: a new field means a new
// version, and a worker and its forqd always come from the same build.
constexpr char kMagic[3] = {'F', 'Q', 'M'};
constexpr uint8_t kVersion = 1;
constexpr char kRequestKind = 'q';
constexpr char kReplyKind = 'r';
constexpr size_t kHeaderSize = 5;

enum RequestTag : uint8_t {
  kTagType = 1,
  kTagOp = 2,
  kTagName = 3,
  kTagSession = 4,
  kTagOwner = 5,
  kTagKey = 6,
  kTagValue = 7,
  kTagExpected = 8,
  kTagExpectAbsent = 9,
  kTagValues = 10,
  kTagItemKey = 11,
  kTagItemValue = 12,
  kTagIndex = 13,
  kTagStart = 14,
  kTagStop = 15,
  kTagDelta = 16,
  kTagTimeoutMs = 17,
  kTagMaxsize = 18,
  kTagLength = 19,
  kTagTypecode = 20,
  kTagInitial = 21,
  kTagOneWay = 22,
  kTagEnd = 23,
  kTagN = 24,
  kTagTtlMs = 25,
  kTagReverse = 26,
  kMaxRequestTag = 26,
};

enum ReplyTag : uint8_t {
  kRTagValue = 1,
  kRTagFound = 2,
  kRTagFlag = 3,
  kRTagLength = 4,
  kRTagMaxsize = 5,
  kRTagUnfinished = 6,
  kRTagCount = 7,
  kRTagToken = 8,
  kRTagTypecode = 9,
  kRTagValues = 10,
  kRTagItemKey = 11,
  kRTagItemValue = 12,
  kMaxReplyTag = 12,
};

class Writer {
 public:
  explicit Writer(char kind) {
    out_.append(kMagic, sizeof(kMagic));
    out_.push_back(static_cast<char>(kVersion));
    out_.push_back(kind);
  }
  void Bytes(uint8_t tag, absl::string_view data) {
    out_.push_back(static_cast<char>(tag));
    uint32_t len = static_cast<uint32_t>(data.size());
    for (int i = 0; i < 4; ++i) {
      out_.push_back(static_cast<char>(len >> (8 * i)));
    }
    out_.append(data.data(), data.size());
  }
  void BytesIfSet(uint8_t tag, absl::string_view data) {
    if (!data.empty()) Bytes(tag, data);
  }
  void Int(uint8_t tag, uint64_t v) {
    char buf[8];
    for (int i = 0; i < 8; ++i) buf[i] = static_cast<char>(v >> (8 * i));
    Bytes(tag, absl::string_view(buf, 8));
  }
  void Bool(uint8_t tag, bool v) {
    char b = v ? 1 : 0;
    Bytes(tag, absl::string_view(&b, 1));
  }
  std::string Take() { return std::move(out_); }

 private:
  std::string out_;
};

class Reader {
 public:
  Reader(absl::string_view data, char kind, uint8_t max_tag)
      : data_(data), kind_(kind), max_tag_(max_tag) {}

  absl::Status Header() {
    if (data_.size() > kMaxManagerMessage) {
      return Error(absl::StrCat("message of ", data_.size(), " bytes"));
    }
    if (data_.size() < kHeaderSize ||
        memcmp(data_.data(), kMagic, sizeof(kMagic)) != 0) {
      return Error("bad magic");
    }
    if (static_cast<uint8_t>(data_[3]) != kVersion) {
      return Error(
          absl::StrCat("unsupported version ",
                       static_cast<int>(static_cast<uint8_t>(data_[3]))));
    }
    if (data_[4] != kind_) return Error("wrong message kind");
    pos_ = kHeaderSize;
    return absl::OkStatus();
  }
  bool Done() const { return pos_ == data_.size(); }
  // Reads the next field; checks the tag range and the length against what
  // is left.
  absl::Status Next(uint8_t* tag, absl::string_view* field) {
    if (data_.size() - pos_ < 5) return Error("truncated field header");
    *tag = static_cast<uint8_t>(data_[pos_]);
    uint32_t len = 0;
    for (int i = 0; i < 4; ++i) {
      len |= static_cast<uint32_t>(static_cast<uint8_t>(data_[pos_ + 1 + i]))
             << (8 * i);
    }
    pos_ += 5;
    if (*tag == 0 || *tag > max_tag_) {
      return Error(absl::StrCat("unknown tag ", static_cast<int>(*tag)));
    }
    if (len > data_.size() - pos_) return Error("truncated field");
    *field = data_.substr(pos_, len);
    pos_ += len;
    return absl::OkStatus();
  }
  // Scalars may appear once.
  absl::Status Once(uint8_t tag) {
    if (seen_[tag]) {
      return Error(absl::StrCat("duplicate tag ", static_cast<int>(tag)));
    }
    seen_[tag] = true;
    return absl::OkStatus();
  }
  bool Seen(uint8_t tag) const { return seen_[tag]; }

  static absl::Status Error(absl::string_view what) {
    return absl::InvalidArgumentError(
        absl::StrCat("malformed manager message: ", what));
  }

 private:
  absl::string_view data_;
  size_t pos_ = 0;
  const char kind_;
  const uint8_t max_tag_;
  std::bitset<256> seen_;
};

absl::StatusOr<uint64_t> ReadInt(absl::string_view field) {
  if (field.size() != 8) return Reader::Error("integer field of wrong size");
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) {
    v |= static_cast<uint64_t>(static_cast<uint8_t>(field[i])) << (8 * i);
  }
  return v;
}

absl::StatusOr<bool> ReadBool(absl::string_view field) {
  if (field.size() != 1 || static_cast<uint8_t>(field[0]) > 1) {
    return Reader::Error("bad bool field");
  }
  return field[0] == 1;
}

// Appends repeated values and key/value items, enforcing the entry cap and
// key/value pairing.
struct RepeatedState {
  bool pending_key = false;
  size_t entries = 0;
};

absl::Status AddEntry(RepeatedState& st) {
  if (++st.entries > kMaxManagerEntries) {
    return Reader::Error("too many entries");
  }
  return absl::OkStatus();
}

}  // namespace

std::string EncodeManagerRequest(const ManagerRequest& r) {
  Writer w(kRequestKind);
  w.Int(kTagType, static_cast<uint8_t>(r.type));
  w.Int(kTagOp, static_cast<uint8_t>(r.op));
  w.BytesIfSet(kTagName, r.name);
  w.BytesIfSet(kTagSession, r.session);
  w.BytesIfSet(kTagOwner, r.owner);
  w.BytesIfSet(kTagKey, r.key);
  w.BytesIfSet(kTagValue, r.value);
  w.BytesIfSet(kTagExpected, r.expected);
  if (r.expect_absent) w.Bool(kTagExpectAbsent, true);
  for (const std::string& v : r.values) w.Bytes(kTagValues, v);
  for (const auto& [k, v] : r.items) {
    w.Bytes(kTagItemKey, k);
    w.Bytes(kTagItemValue, v);
  }
  if (r.has_index) w.Int(kTagIndex, static_cast<uint64_t>(r.index));
  if (r.has_start) w.Int(kTagStart, static_cast<uint64_t>(r.start));
  if (r.has_stop) w.Int(kTagStop, static_cast<uint64_t>(r.stop));
  w.BytesIfSet(kTagDelta, r.delta);
  w.Int(kTagTimeoutMs, static_cast<uint64_t>(r.timeout_ms));
  if (r.maxsize != 0) w.Int(kTagMaxsize, static_cast<uint64_t>(r.maxsize));
  if (r.length != 0) w.Int(kTagLength, static_cast<uint64_t>(r.length));
  w.BytesIfSet(kTagTypecode, r.typecode);
  if (r.has_initial) w.Int(kTagInitial, static_cast<uint64_t>(r.initial));
  if (r.one_way) w.Bool(kTagOneWay, true);
  if (r.reverse) w.Bool(kTagReverse, true);
  if (r.end != 0) w.Int(kTagEnd, static_cast<uint64_t>(r.end));
  if (r.n != 1) w.Int(kTagN, static_cast<uint64_t>(r.n));
  if (r.ttl_ms != 0) w.Int(kTagTtlMs, static_cast<uint64_t>(r.ttl_ms));
  return w.Take();
}

absl::StatusOr<ManagerRequest> DecodeManagerRequest(absl::string_view data) {
  Reader rd(data, kRequestKind, kMaxRequestTag);
  FORQ_RETURN_IF_ERROR(rd.Header());
  ManagerRequest r;
  RepeatedState rep;
  while (!rd.Done()) {
    uint8_t tag = 0;
    absl::string_view f;
    FORQ_RETURN_IF_ERROR(rd.Next(&tag, &f));
    if (rep.pending_key && tag != kTagItemValue) {
      return Reader::Error("item key without value");
    }
    if (tag != kTagValues && tag != kTagItemKey && tag != kTagItemValue) {
      FORQ_RETURN_IF_ERROR(rd.Once(tag));
    }
    switch (tag) {
      case kTagType: {
        FORQ_ASSIGN_OR_RETURN(uint64_t v, ReadInt(f));
        if (v == 0 || v > kMaxManagerType) return Reader::Error("bad type");
        r.type = static_cast<ManagerType>(v);
        break;
      }
      case kTagOp: {
        FORQ_ASSIGN_OR_RETURN(uint64_t v, ReadInt(f));
        if (v == 0 || v > kMaxManagerOp) return Reader::Error("bad op");
        r.op = static_cast<ManagerOp>(v);
        break;
      }
      case kTagName:
        r.name.assign(f.data(), f.size());
        break;
      case kTagSession:
        r.session.assign(f.data(), f.size());
        break;
      case kTagOwner:
        r.owner.assign(f.data(), f.size());
        break;
      case kTagKey:
        r.key.assign(f.data(), f.size());
        break;
      case kTagValue:
        r.value.assign(f.data(), f.size());
        break;
      case kTagExpected:
        r.expected.assign(f.data(), f.size());
        break;
      case kTagExpectAbsent: {
        FORQ_ASSIGN_OR_RETURN(r.expect_absent, ReadBool(f));
        break;
      }
      case kTagValues:
        FORQ_RETURN_IF_ERROR(AddEntry(rep));
        r.values.emplace_back(f.data(), f.size());
        break;
      case kTagItemKey:
        FORQ_RETURN_IF_ERROR(AddEntry(rep));
        r.items.emplace_back(std::string(f.data(), f.size()), std::string());
        rep.pending_key = true;
        break;
      case kTagItemValue:
        if (!rep.pending_key) return Reader::Error("item value without key");
        r.items.back().second.assign(f.data(), f.size());
        rep.pending_key = false;
        break;
      case kTagDelta:
        r.delta.assign(f.data(), f.size());
        break;
      case kTagTypecode:
        r.typecode.assign(f.data(), f.size());
        break;
      case kTagOneWay: {
        FORQ_ASSIGN_OR_RETURN(r.one_way, ReadBool(f));
        break;
      }
      case kTagReverse: {
        FORQ_ASSIGN_OR_RETURN(r.reverse, ReadBool(f));
        break;
      }
      default: {
        // The remaining request tags are all 8-byte integers.
        FORQ_ASSIGN_OR_RETURN(uint64_t u, ReadInt(f));
        const auto v = static_cast<int64_t>(u);
        switch (tag) {
          case kTagIndex:
            r.has_index = true;
            r.index = v;
            break;
          case kTagStart:
            r.has_start = true;
            r.start = v;
            break;
          case kTagStop:
            r.has_stop = true;
            r.stop = v;
            break;
          case kTagTimeoutMs:
            r.timeout_ms = v;
            break;
          case kTagMaxsize:
            r.maxsize = v;
            break;
          case kTagLength:
            r.length = v;
            break;
          case kTagInitial:
            r.has_initial = true;
            r.initial = v;
            break;
          case kTagEnd:
            r.end = v;
            break;
          case kTagN:
            r.n = v;
            break;
          case kTagTtlMs:
            r.ttl_ms = v;
            break;
          default:
            return Reader::Error("unexpected tag");
        }
      }
    }
  }
  if (rep.pending_key) return Reader::Error("item key without value");
  if (!rd.Seen(kTagType) || !rd.Seen(kTagOp)) {
    return Reader::Error("missing type or op");
  }
  if (v1::FindManagerOp(r.type, r.op) == nullptr) {
    return Reader::Error(absl::StrCat(ManagerTypeName(r.type),
                                      " has no operation '",
                                      ManagerOpName(r.op), "'"));
  }
  return r;
}

std::string EncodeManagerReply(const ManagerReply& r) {
  Writer w(kReplyKind);
  w.BytesIfSet(kRTagValue, r.value);
  if (r.found) w.Bool(kRTagFound, true);
  if (r.flag) w.Bool(kRTagFlag, true);
  if (r.length != 0) w.Int(kRTagLength, static_cast<uint64_t>(r.length));
  if (r.maxsize != 0) w.Int(kRTagMaxsize, static_cast<uint64_t>(r.maxsize));
  if (r.unfinished != 0) {
    w.Int(kRTagUnfinished, static_cast<uint64_t>(r.unfinished));
  }
  if (r.count != 0) w.Int(kRTagCount, static_cast<uint64_t>(r.count));
  if (r.token != 0) w.Int(kRTagToken, r.token);
  w.BytesIfSet(kRTagTypecode, r.typecode);
  for (const std::string& v : r.values) w.Bytes(kRTagValues, v);
  for (const auto& [k, v] : r.items) {
    w.Bytes(kRTagItemKey, k);
    w.Bytes(kRTagItemValue, v);
  }
  return w.Take();
}

absl::StatusOr<ManagerReply> DecodeManagerReply(absl::string_view data) {
  Reader rd(data, kReplyKind, kMaxReplyTag);
  FORQ_RETURN_IF_ERROR(rd.Header());
  ManagerReply r;
  RepeatedState rep;
  while (!rd.Done()) {
    uint8_t tag = 0;
    absl::string_view f;
    FORQ_RETURN_IF_ERROR(rd.Next(&tag, &f));
    if (rep.pending_key && tag != kRTagItemValue) {
      return Reader::Error("item key without value");
    }
    if (tag != kRTagValues && tag != kRTagItemKey && tag != kRTagItemValue) {
      FORQ_RETURN_IF_ERROR(rd.Once(tag));
    }
    switch (tag) {
      case kRTagValue:
        r.value.assign(f.data(), f.size());
        break;
      case kRTagTypecode:
        r.typecode.assign(f.data(), f.size());
        break;
      case kRTagFound: {
        FORQ_ASSIGN_OR_RETURN(r.found, ReadBool(f));
        break;
      }
      case kRTagFlag: {
        FORQ_ASSIGN_OR_RETURN(r.flag, ReadBool(f));
        break;
      }
      case kRTagValues:
        FORQ_RETURN_IF_ERROR(AddEntry(rep));
        r.values.emplace_back(f.data(), f.size());
        break;
      case kRTagItemKey:
        FORQ_RETURN_IF_ERROR(AddEntry(rep));
        r.items.emplace_back(std::string(f.data(), f.size()), std::string());
        rep.pending_key = true;
        break;
      case kRTagItemValue:
        if (!rep.pending_key) return Reader::Error("item value without key");
        r.items.back().second.assign(f.data(), f.size());
        rep.pending_key = false;
        break;
      default: {
        FORQ_ASSIGN_OR_RETURN(uint64_t u, ReadInt(f));
        const auto v = static_cast<int64_t>(u);
        switch (tag) {
          case kRTagLength:
            r.length = v;
            break;
          case kRTagMaxsize:
            r.maxsize = v;
            break;
          case kRTagUnfinished:
            r.unfinished = v;
            break;
          case kRTagCount:
            r.count = v;
            break;
          case kRTagToken:
            r.token = u;
            break;
          default:
            return Reader::Error("unexpected tag");
        }
      }
    }
  }
  if (rep.pending_key) return Reader::Error("item key without value");
  return r;
}

}  // namespace forq::worker
