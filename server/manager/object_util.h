// Helpers shared by the ObjectManager's per-family files: name and key
// checks, decimal numbers, Python-style indices and slices, and the blob
// format of persisted objects. Internal to server/manager.
#ifndef FORQ_SERVER_MANAGER_OBJECT_UTIL_H_
#define FORQ_SERVER_MANAGER_OBJECT_UTIL_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <functional>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "openssl/rand.h"

#include "common/status_macros.h"
#include "server/manager/timer_queue.h"
#include "worker/manager_protocol.h"

namespace forq::server::manager_internal {

using worker::ManagerOp;
using worker::ManagerReply;
using worker::ManagerRequest;
using worker::ManagerType;

inline constexpr char kObjectKeyPrefix[] = "manager/obj/";
inline constexpr char kEpochKey[] = "manager/epoch";
inline constexpr int kTokenCounterBits = 40;
inline constexpr size_t kMaxNameLength = 200;
inline constexpr size_t kMaxKeyLength = 4096;

inline absl::Status ValidateName(absl::string_view name) {
  if (name.empty() || name.size() > kMaxNameLength) {
    return absl::InvalidArgumentError(
        absl::StrCat("object name must be 1..", kMaxNameLength, " characters"));
  }
  for (char c : name) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '_' &&
        c != '.' && c != ':' && c != '/' && c != '-') {
      return absl::InvalidArgumentError(
          absl::StrCat("object name '", absl::CHexEscape(name),
                       "' may only contain letters, digits and _ . : / -"));
    }
  }
  return absl::OkStatus();
}

inline absl::Status ValidateKey(absl::string_view what, absl::string_view key) {
  if (key.empty() || key.size() > kMaxKeyLength) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " must be 1..", kMaxKeyLength, " bytes"));
  }
  return absl::OkStatus();
}

inline bool Persistent(ManagerType t) {
  switch (t) {
    case ManagerType::kDict:
    case ManagerType::kList:
    case ManagerType::kValue:
    case ManagerType::kArray:
    case ManagerType::kNamespace:
    case ManagerType::kQueue:
    case ManagerType::kPipe:
    case ManagerType::kEvent:
      return true;
    default:
      return false;
  }
}

inline absl::string_view Article(ManagerType t) {
  switch (t) {
    case ManagerType::kArray:
    case ManagerType::kEvent:
      return "an ";
    default:
      return "a ";
  }
}

// Numbers stored as decimal text: integers when both sides are integers,
// doubles otherwise.
struct Number {
  bool is_int = true;
  int64_t i = 0;
  double d = 0;
};

inline absl::StatusOr<Number> ParseNumber(absl::string_view text,
                                          absl::string_view what) {
  Number n;
  absl::string_view t = absl::StripAsciiWhitespace(text);
  if (t.empty()) return n;
  if (absl::SimpleAtoi(t, &n.i)) return n;
  if (absl::SimpleAtod(t, &n.d) && std::isfinite(n.d)) {
    n.is_int = false;
    return n;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      what, " is not a number: '", absl::CHexEscape(text.substr(0, 64)), "'"));
}

inline std::string FormatDouble(double d) {
  // Shortest of %.15g/%.17g that reads back exactly.
  std::string s = absl::StrFormat("%.15g", d);
  double back = 0;
  if (!absl::SimpleAtod(s, &back) || back != d) s = absl::StrFormat("%.17g", d);
  return s;
}

inline absl::StatusOr<std::string> AddNumbers(absl::string_view current,
                                              absl::string_view delta) {
  if (absl::StripAsciiWhitespace(delta).empty()) {
    return absl::InvalidArgumentError("add needs a delta");
  }
  FORQ_ASSIGN_OR_RETURN(Number a, ParseNumber(current, "stored value"));
  FORQ_ASSIGN_OR_RETURN(Number b, ParseNumber(delta, "delta"));
  if (a.is_int && b.is_int) {
    int64_t sum = 0;
    if (__builtin_add_overflow(a.i, b.i, &sum)) {
      return absl::OutOfRangeError("integer overflow in add");
    }
    return absl::StrCat(sum);
  }
  double x = (a.is_int ? static_cast<double>(a.i) : a.d) +
             (b.is_int ? static_cast<double>(b.i) : b.d);
  return FormatDouble(x);
}

inline absl::StatusOr<size_t> Index(int64_t index, size_t size,
                                    absl::string_view what) {
  int64_t i = index < 0 ? index + static_cast<int64_t>(size) : index;
  if (i < 0 || i >= static_cast<int64_t>(size)) {
    return absl::OutOfRangeError(absl::StrCat(
        what, " index ", index, " out of range (length ", size, ")"));
  }
  return static_cast<size_t>(i);
}

inline std::pair<size_t, size_t> SliceBounds(const ManagerRequest& r,
                                             size_t size) {
  auto clamp = [size](int64_t v) {
    const auto n = static_cast<int64_t>(size);
    if (v < 0) v += n;
    return static_cast<size_t>(std::clamp<int64_t>(v, 0, n));
  };
  size_t start = r.has_start ? clamp(r.start) : 0;
  size_t stop = r.has_stop ? clamp(r.stop) : size;
  if (stop < start) stop = start;
  return {start, stop};
}

inline absl::Status Unsupported(ManagerType t, ManagerOp op) {
  return absl::InvalidArgumentError(
      absl::StrCat(worker::ManagerTypeName(t), " has no operation '",
                   worker::ManagerOpName(op), "'"));
}

// OK when `op` is `query` (an op that only reads the state every reply of
// the type carries), else what Unsupported says.
inline absl::Status OnlyQuery(ManagerType t, ManagerOp op, ManagerOp query) {
  return op == query ? absl::OkStatus() : Unsupported(t, op);
}

inline std::string NewSessionId() {
  unsigned char raw[16];
  if (RAND_bytes(raw, sizeof(raw)) != 1) {
    // Unguessability matters (a session id is a capability), so fall back
    // to the kernel rather than a seeded PRNG.
    FILE* f = fopen("/dev/urandom", "rbe");
    size_t got = f != nullptr ? fread(raw, 1, sizeof(raw), f) : 0;
    if (f != nullptr) fclose(f);
    if (got != sizeof(raw)) abort();
  }
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(raw), sizeof(raw)));
}

inline int64_t ToMillis(TimerQueue::Clock::duration d) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
}

// ------------------------------------------------------------ blob format
// "FQO" + version 1 + type, then fields in a fixed order per type: strings
// as u32 length + bytes, integers as u64. Read back with full bounds checks.
class BlobWriter {
 public:
  void U64(uint64_t v) {
    char b[8];
    for (int i = 0; i < 8; ++i) b[i] = static_cast<char>(v >> (8 * i));
    out_.append(b, sizeof(b));
  }
  void Str(absl::string_view s) {
    const auto n = static_cast<uint32_t>(s.size());
    char b[4];
    for (int i = 0; i < 4; ++i) b[i] = static_cast<char>(n >> (8 * i));
    out_.append(b, sizeof(b));
    out_.append(s.data(), s.size());
  }
  std::string& out() { return out_; }

 private:
  std::string out_;
};

class BlobReader {
 public:
  explicit BlobReader(absl::string_view in) : in_(in) {}
  bool U64(uint64_t* v) {
    if (in_.size() - pos_ < 8) return false;
    *v = 0;
    for (int i = 0; i < 8; ++i) {
      *v |= static_cast<uint64_t>(static_cast<uint8_t>(in_[pos_ + i]))
            << (8 * i);
    }
    pos_ += 8;
    return true;
  }
  bool Str(std::string* s) {
    if (in_.size() - pos_ < 4) return false;
    uint32_t n = 0;
    for (int i = 0; i < 4; ++i) {
      n |= static_cast<uint32_t>(static_cast<uint8_t>(in_[pos_ + i]))
           << (8 * i);
    }
    pos_ += 4;
    if (in_.size() - pos_ < n) return false;
    s->assign(in_.data() + pos_, n);
    pos_ += n;
    return true;
  }
  // A count that cannot exceed the bytes left (each entry takes >= 4).
  bool Count(uint64_t* n) {
    return U64(n) && *n <= (in_.size() - pos_) / 4 + 1;
  }
  bool Done() const { return pos_ == in_.size(); }
  size_t pos_ = 0;

 private:
  absl::string_view in_;
};

inline void QueueStats(const std::deque<std::string>& items, int64_t maxsize,
                       int64_t unfinished, ManagerReply& r) {
  r.length = static_cast<int64_t>(items.size());
  r.maxsize = maxsize;
  r.unfinished = unfinished;
  r.found = items.empty();                      // "empty"
  r.flag = maxsize > 0 && r.length >= maxsize;  // "full"
}

// Python array typecodes: the element range of each. Floats ('f', 'd')
// are stored as double ('f' rounded to float); integers as int64 ('L' and
// 'Q' are limited to 0..2^63-1).
struct Typecode {
  bool is_float = false;
  bool single = false;  // 'f'
  int64_t lo = 0;
  int64_t hi = 0;
};

inline absl::StatusOr<Typecode> ParseTypecode(absl::string_view tc) {
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  constexpr int64_t kMin = std::numeric_limits<int64_t>::min();
  if (tc.size() == 1) {
    switch (tc[0]) {
      case 'b':
        return Typecode{false, false, -128, 127};
      case 'B':
        return Typecode{false, false, 0, 255};
      case 'h':
        return Typecode{false, false, -32768, 32767};
      case 'H':
        return Typecode{false, false, 0, 65535};
      case 'i':
        return Typecode{false, false, INT32_MIN, INT32_MAX};
      case 'I':
        return Typecode{false, false, 0, UINT32_MAX};
      case 'l':
      case 'q':
        return Typecode{false, false, kMin, kMax};
      case 'L':
      case 'Q':
        return Typecode{false, false, 0, kMax};
      case 'f':
        return Typecode{true, true, 0, 0};
      case 'd':
        return Typecode{true, false, 0, 0};
      default:
        break;
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat("typecode must be one of b B h H i I l L q Q f d, not '",
                   absl::CHexEscape(tc.substr(0, 8)), "'"));
}

inline bool IsFloatTypecode(char tc) { return tc == 'f' || tc == 'd'; }

// A number checked against `tc`: OutOfRange as Python's OverflowError,
// InvalidArgument for a float given to an integer type.
inline absl::Status CheckTypecode(const Typecode& tc, const Number& n,
                                  absl::string_view what) {
  if (tc.is_float) return absl::OkStatus();
  if (!n.is_int) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": an integer typecode takes integers"));
  }
  if (n.i < tc.lo || n.i > tc.hi) {
    return absl::OutOfRangeError(
        absl::StrCat(what, ": ", n.i, " is outside ", tc.lo, "..", tc.hi));
  }
  return absl::OkStatus();
}

// Python's list.sort(key=..., reverse=...) for the keys the server can
// compute: "bytes" (or empty: bytewise), "int" (decimal integers) and
// "float". Stable. InvalidArgument (and the list untouched) when an item
// does not parse as the key kind.
inline absl::Status SortItems(std::vector<std::string>& items,
                              absl::string_view key, bool reverse) {
  if (key.empty() || key == "bytes") {
    if (reverse) {
      std::stable_sort(items.begin(), items.end(), std::greater<>());
    } else {
      std::stable_sort(items.begin(), items.end());
    }
    return absl::OkStatus();
  }
  if (key != "int" && key != "float") {
    return absl::InvalidArgumentError(
        absl::StrCat("sort key must be bytes, int or float, not '",
                     absl::CHexEscape(key), "'"));
  }
  const bool ints = key == "int";
  std::vector<std::pair<double, int64_t>> keys(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    absl::string_view t = absl::StripAsciiWhitespace(items[i]);
    bool ok = ints ? absl::SimpleAtoi(t, &keys[i].second)
                   : absl::SimpleAtod(t, &keys[i].first);
    if (!ok || (!ints && std::isnan(keys[i].first))) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sort: item ", i, " is not ", ints ? "an int" : "a float", ": '",
          absl::CHexEscape(items[i].substr(0, 64)), "'"));
    }
  }
  std::vector<size_t> order(items.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  auto less = [&](size_t a, size_t b) {
    return ints ? keys[a].second < keys[b].second
                : keys[a].first < keys[b].first;
  };
  if (reverse) {
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return less(b, a); });
  } else {
    std::stable_sort(order.begin(), order.end(), less);
  }
  std::vector<std::string> sorted;
  sorted.reserve(items.size());
  for (size_t i : order) sorted.push_back(std::move(items[i]));
  items.swap(sorted);
  return absl::OkStatus();
}

}  // namespace forq::server::manager_internal

#endif  // FORQ_SERVER_MANAGER_OBJECT_UTIL_H_
