#include "server/manager/object_manager.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "openssl/rand.h"
#include "spdlog/spdlog.h"

#include "common/status_macros.h"

namespace forq::server {
namespace {

using worker::ManagerOp;
using worker::ManagerReply;
using worker::ManagerRequest;
using worker::ManagerType;

constexpr char kObjectKeyPrefix[] = "manager/obj/";
constexpr char kEpochKey[] = "manager/epoch";
constexpr int kTokenCounterBits = 40;
constexpr size_t kMaxNameLength = 200;
constexpr size_t kMaxKeyLength = 4096;

absl::Status ValidateName(absl::string_view name) {
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

absl::Status ValidateKey(absl::string_view what, absl::string_view key) {
  if (key.empty() || key.size() > kMaxKeyLength) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " must be 1..", kMaxKeyLength, " bytes"));
  }
  return absl::OkStatus();
}

bool Persistent(ManagerType t) {
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

absl::string_view Article(ManagerType t) {
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

absl::StatusOr<Number> ParseNumber(absl::string_view text,
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

std::string FormatDouble(double d) {
  // Shortest of %.15g/%.17g that reads back exactly.
  std::string s = absl::StrFormat("%.15g", d);
  double back = 0;
  if (!absl::SimpleAtod(s, &back) || back != d) s = absl::StrFormat("%.17g", d);
  return s;
}

absl::StatusOr<std::string> AddNumbers(absl::string_view current,
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

absl::StatusOr<size_t> Index(int64_t index, size_t size,
                             absl::string_view what) {
  int64_t i = index < 0 ? index + static_cast<int64_t>(size) : index;
  if (i < 0 || i >= static_cast<int64_t>(size)) {
    return absl::OutOfRangeError(absl::StrCat(
        what, " index ", index, " out of range (length ", size, ")"));
  }
  return static_cast<size_t>(i);
}

std::pair<size_t, size_t> SliceBounds(const ManagerRequest& r, size_t size) {
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

absl::Status Unsupported(ManagerType t, ManagerOp op) {
  return absl::InvalidArgumentError(
      absl::StrCat(worker::ManagerTypeName(t), " has no operation '",
                   worker::ManagerOpName(op), "'"));
}

std::string NewSessionId() {
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

int64_t ToMillis(TimerQueue::Clock::duration d) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
}

// ------------------------------------------------------------ blob format
// "FQO" + version 1 + type, then fields in a fixed order per type: strings
// as u32 length + bytes, integers as u64. Read back with full bounds checks.
class BlobWriter {
 public:
  void U64(uint64_t v) {
    for (int i = 0; i < 8; ++i) out_.push_back(static_cast<char>(v >> (8 * i)));
  }
  void Str(absl::string_view s) {
    auto n = static_cast<uint32_t>(s.size());
    for (int i = 0; i < 4; ++i) out_.push_back(static_cast<char>(n >> (8 * i)));
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

}  // namespace

// ------------------------------------------------------------ lifecycle

ObjectManager::ObjectManager(Store* store, Metrics* metrics,
                             ObjectManagerOptions options)
    : store_(store),
      metrics_(metrics),
      options_(options),
      gauges_(std::make_shared<Gauges>()) {
  if (metrics_ != nullptr) {
    std::shared_ptr<Gauges> g = gauges_;
    Metrics* m = metrics_;
    metrics_->AddRefreshHook([g, m] {
      m->SetManagerWaiters(
          static_cast<double>(g->waiters.load(std::memory_order_relaxed)));
      m->SetManagerSessions(
          static_cast<double>(g->sessions.load(std::memory_order_relaxed)));
      m->SetManagerObjects(
          static_cast<double>(g->objects.load(std::memory_order_relaxed)));
    });
  }
}

ObjectManager::~ObjectManager() {
  Shutdown();
  timers_.Stop();
}

void ObjectManager::Shutdown() {
  Batch b;
  {
    MutexLock lock(&mu_);
    if (shutdown_) return;
    shutdown_ = true;
    std::vector<uint64_t> ids;
    ids.reserve(waiters_.size());
    for (const auto& [id, w] : waiters_) ids.push_back(id);
    for (uint64_t id : ids) {
      std::optional<Waiter> w = TakeWaiterLocked(id, b);
      if (w) {
        b.replies.emplace_back(std::move(w->done),
                               absl::UnavailableError("manager shutting down"));
      }
    }
    for (auto& [id, s] : sessions_) b.cancel_timers.push_back(s.timer);
    UpdateGaugesLocked();
  }
  Finish(b);
}

absl::Status ObjectManager::Recover() {
  if (store_ == nullptr) return absl::OkStatus();
  FORQ_ASSIGN_OR_RETURN(auto blobs, store_->LoadObjects());
  uint64_t stored_epoch = 0;
  int loaded = 0, skipped = 0;
  {
    MutexLock lock(&mu_);
    for (auto& [key, blob] : blobs) {
      if (key == kEpochKey) {
        BlobReader r(blob);
        if (!r.U64(&stored_epoch)) spdlog::warn("manager: corrupt epoch blob");
        continue;
      }
      if (!absl::StartsWith(key, kObjectKeyPrefix)) continue;
      std::string name = key.substr(strlen(kObjectKeyPrefix));
      BlobReader r(blob);
      Object o;
      std::string magic;
      uint64_t type = 0, version = 0;
      bool ok = r.Str(&magic) && magic == "FQO1" && r.U64(&type) &&
                r.U64(&version) && type >= 1 && type <= 13 &&
                Persistent(static_cast<ManagerType>(type));
      o.type = static_cast<ManagerType>(type);
      o.version = version;
      uint64_t n = 0;
      std::string s;
      if (ok) {
        switch (o.type) {
          case ManagerType::kDict:
          case ManagerType::kNamespace:
            ok = r.Count(&n);
            for (uint64_t i = 0; ok && i < n; ++i) {
              std::string k;
              ok = r.Str(&k) && r.Str(&s);
              if (ok) o.map[k] = s;
            }
            break;
          case ManagerType::kList:
            ok = r.Count(&n);
            for (uint64_t i = 0; ok && i < n; ++i) {
              ok = r.Str(&s);
              if (ok) o.list.push_back(s);
            }
            break;
          case ManagerType::kValue:
            ok = r.Str(&o.value);
            break;
          case ManagerType::kArray: {
            uint64_t tc = 0;
            ok = r.U64(&tc) && (tc == 'i' || tc == 'd') && r.U64(&n) &&
                 n <= options_.max_entries;
            o.typecode = static_cast<char>(tc);
            for (uint64_t i = 0; ok && i < n; ++i) {
              uint64_t v = 0;
              ok = r.U64(&v);
              if (o.typecode == 'i') {
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
            ok = r.U64(&maxsize) && r.U64(&unfinished) && r.Count(&n);
            o.maxsize = static_cast<int64_t>(maxsize);
            o.unfinished = static_cast<int64_t>(unfinished);
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
      }
      if (!ok || !r.Done() || !ValidateName(name).ok()) {
        spdlog::warn("manager: skipping corrupt persisted object '{}'",
                     absl::CHexEscape(name));
        ++skipped;
        continue;
      }
      objects_[name] = std::move(o);
      ++loaded;
    }
    epoch_ = stored_epoch + 1;
    UpdateGaugesLocked();
  }
  // The new epoch must be durable before any token of it is handed out, or
  // a crash could make the next start reuse it.
  BlobWriter w;
  w.U64(stored_epoch + 1);
  absl::Notification written;
  absl::Status write_status;
  store_->PutObject(kEpochKey, std::move(w.out()),
                    [&written, &write_status](absl::Status s) {
                      write_status = std::move(s);
                      written.Notify();
                    });
  if (!written.WaitForNotificationWithTimeout(absl::Seconds(30))) {
    // The callback still references the locals: it must run before we
    // return, so wait for it without a bound (the store owes us a call).
    written.WaitForNotification();
  }
  FORQ_RETURN_IF_ERROR(write_status);
  spdlog::info("manager: recovered {} objects ({} skipped), token epoch {}",
               loaded, skipped, stored_epoch + 1);
  return absl::OkStatus();
}

// ------------------------------------------------------------ execute

uint64_t ObjectManager::Execute(Request req, Done done, absl::string_view tag) {
  if (metrics_ != nullptr) {
    metrics_->ManagerOp(worker::ManagerTypeName(req.type),
                        worker::ManagerOpName(req.op));
  }
  Batch b;
  uint64_t parked = 0;
  {
    MutexLock lock(&mu_);
    Parking p;
    absl::StatusOr<Reply> reply =
        shutdown_ ? absl::UnavailableError("manager shutting down")
                  : RunLocked(req, p, b);
    if (reply.ok() && p.park) {
      auto it = objects_.find(req.name);
      if (waiters_.size() >= options_.max_waiters) {
        b.replies.emplace_back(
            std::move(done),
            absl::ResourceExhaustedError("too many parked manager operations"));
      } else if (it != objects_.end()) {
        parked = ParkLocked(it->first, it->second, std::move(req), p,
                            std::move(done), tag, b);
      }
    } else {
      b.replies.emplace_back(std::move(done), std::move(reply));
    }
    QueueWritesLocked(b);
    UpdateGaugesLocked();
  }
  Finish(b);
  return parked;
}

absl::StatusOr<ObjectManager::Session*> ObjectManager::SessionLocked(
    const Request& req) {
  if (req.session.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        worker::ManagerTypeName(req.type), " ", worker::ManagerOpName(req.op),
        " needs a session (OpenSession)"));
  }
  auto it = sessions_.find(req.session);
  if (it == sessions_.end()) {
    return absl::NotFoundError(
        "session expired or unknown; its locks and permits were released");
  }
  RenewLocked(it->second);
  return &it->second;
}

void ObjectManager::RenewLocked(Session& s) { s.expiry = Clock::now() + s.ttl; }

absl::StatusOr<ObjectManager::Reply> ObjectManager::RunLocked(Request& req,
                                                              Parking& p,
                                                              Batch& b) {
  if (req.type == ManagerType::kSession) return SessionOpLocked(req, b);
  FORQ_RETURN_IF_ERROR(ValidateName(req.name));
  if (!req.session.empty()) {
    // Any request naming a session renews its lease.
    FORQ_RETURN_IF_ERROR(SessionLocked(req).status());
  }
  auto it = objects_.find(req.name);
  if (it != objects_.end() && it->second.type != req.type) {
    return absl::FailedPreconditionError(
        absl::StrCat("'", req.name, "' is ", Article(it->second.type),
                     worker::ManagerTypeName(it->second.type), ", not ",
                     Article(req.type), worker::ManagerTypeName(req.type)));
  }
  if (it == objects_.end()) {
    if (objects_.size() >= options_.max_objects) {
      return absl::ResourceExhaustedError("too many manager objects");
    }
    Object o;
    o.type = req.type;
    switch (req.type) {
      case ManagerType::kArray: {
        if (req.length <= 0 ||
            static_cast<size_t>(req.length) > options_.max_entries) {
          return absl::InvalidArgumentError(absl::StrCat(
              "array '", req.name, "' does not exist; give a length in 1..",
              options_.max_entries, " to create it"));
        }
        if (!req.typecode.empty() && req.typecode != "i" &&
            req.typecode != "d") {
          return absl::InvalidArgumentError(
              "array typecode must be 'i' or 'd'");
        }
        o.typecode = req.typecode.empty() ? 'i' : req.typecode[0];
        if (o.typecode == 'i') {
          o.ints.assign(req.length, 0);
        } else {
          o.doubles.assign(req.length, 0.0);
        }
        break;
      }
      case ManagerType::kQueue:
        if (req.maxsize < 0) {
          return absl::InvalidArgumentError("queue maxsize must be >= 0");
        }
        o.maxsize = req.maxsize;
        break;
      case ManagerType::kPipe:
        o.one_way = req.one_way;
        break;
      case ManagerType::kSemaphore:
      case ManagerType::kBoundedSemaphore:
        if (req.has_initial &&
            (req.initial < 0 || req.initial > (int64_t{1} << 31))) {
          return absl::InvalidArgumentError(
              "semaphore value must be in 0..2^31");
        }
        o.initial = req.has_initial ? req.initial : 1;
        o.permits = o.initial;
        break;
      default:
        break;
    }
    it = objects_.emplace(req.name, std::move(o)).first;
  }
  Object& o = it->second;
  const std::string& name = it->first;
  switch (req.type) {
    case ManagerType::kDict:
    case ManagerType::kNamespace:
      return MapOpLocked(name, o, req, b);
    case ManagerType::kList:
      return ListOpLocked(name, o, req, b);
    case ManagerType::kValue:
      return ValueOpLocked(name, o, req, b);
    case ManagerType::kArray:
      return ArrayOpLocked(name, o, req, b);
    case ManagerType::kQueue:
      return QueueOpLocked(name, o, req, p, b);
    case ManagerType::kPipe:
      return PipeOpLocked(name, o, req, p, b);
    case ManagerType::kLock:
    case ManagerType::kRLock:
    case ManagerType::kCondition:
      return LockOpLocked(name, o, req, p, b);
    case ManagerType::kSemaphore:
    case ManagerType::kBoundedSemaphore:
      return SemaphoreOpLocked(name, o, req, p, b);
    case ManagerType::kEvent:
      return EventOpLocked(name, o, req, p, b);
    case ManagerType::kSession:
      break;
  }
  return absl::InternalError("unreachable manager type");
}

absl::StatusOr<ObjectManager::Reply> ObjectManager::SessionOpLocked(
    Request& req, Batch& b) {
  Reply r;
  switch (req.op) {
    case ManagerOp::kOpen: {
      if (sessions_.size() >= options_.max_sessions) {
        return absl::ResourceExhaustedError("too many manager sessions");
      }
      absl::Duration ttl = req.ttl_ms > 0 ? absl::Milliseconds(req.ttl_ms)
                                          : options_.default_session_ttl;
      ttl = std::clamp(ttl, options_.min_session_ttl, options_.max_session_ttl);
      Session s;
      s.id = NewSessionId();
      s.client_name = req.key.substr(0, 200);
      s.ttl = std::chrono::duration_cast<Clock::duration>(
          absl::ToChronoNanoseconds(ttl));
      RenewLocked(s);
      const std::string id = s.id;
      s.timer = timers_.Schedule(s.expiry, [this, id] { OnSessionTimer(id); });
      r.value = id;
      r.length = ToMillis(s.ttl);
      sessions_.emplace(id, std::move(s));
      return r;
    }
    case ManagerOp::kKeepAlive: {
      FORQ_ASSIGN_OR_RETURN(Session * s, SessionLocked(req));
      r.length = ToMillis(s->ttl);
      return r;
    }
    case ManagerOp::kClose: {
      if (sessions_.count(req.session) == 0) {
        return absl::NotFoundError("session expired or unknown");
      }
      r.count = EndSessionLocked(req.session, "session closed", b);
      return r;
    }
    default:
      return Unsupported(req.type, req.op);
  }
}

void ObjectManager::OnSessionTimer(std::string id) {
  Batch b;
  {
    MutexLock lock(&mu_);
    auto it = sessions_.find(id);
    if (it == sessions_.end() || shutdown_) return;
    Session& s = it->second;
    const Clock::time_point now = Clock::now();
    if (s.expiry > now) {
      // Renewed since the timer was set: one timer per session, re-armed
      // lazily, instead of one per renewal.
      s.timer = timers_.Schedule(s.expiry, [this, id] { OnSessionTimer(id); });
      return;
    }
    s.timer = 0;
    spdlog::info("manager: session {} ({}) expired", id.substr(0, 8),
                 s.client_name);
    EndSessionLocked(id, "session expired", b);
    QueueWritesLocked(b);
    UpdateGaugesLocked();
  }
  Finish(b);
}

int ObjectManager::EndSessionLocked(const std::string& id,
                                    absl::string_view why, Batch& b) {
  auto sit = sessions_.find(id);
  if (sit == sessions_.end()) return 0;
  Session s = std::move(sit->second);
  sessions_.erase(sit);
  b.cancel_timers.push_back(s.timer);
  // Its parked operations cannot complete any more: they would be granted
  // to an owner that no longer exists.
  std::vector<uint64_t> mine;
  for (const auto& [wid, w] : waiters_) {
    if (w.req.session == id) mine.push_back(wid);
  }
  for (uint64_t wid : mine) {
    std::optional<Waiter> w = TakeWaiterLocked(wid, b);
    if (w) {
      b.replies.emplace_back(std::move(w->done),
                             absl::FailedPreconditionError(why));
    }
  }
  int released = 0;
  for (const std::string& name : s.holdings) {
    auto it = objects_.find(name);
    if (it == objects_.end()) continue;
    Object& o = it->second;
    if (o.holder_session == id) {
      o.holder_session.clear();
      o.holder_owner.clear();
      o.hold_count = 0;
      ++released;
      TouchLocked(name, o, "release", why, "", b);
    }
    auto h = o.held.find(id);
    if (h != o.held.end()) {
      o.permits += h->second;
      released += static_cast<int>(h->second);
      o.held.erase(h);
      TouchLocked(name, o, "release", why, "", b);
    }
    PumpLocked(name, o, b);
  }
  return released;
}

// ------------------------------------------------------------ data types

absl::StatusOr<ObjectManager::Reply> ObjectManager::MapOpLocked(
    const std::string& name, Object& o, Request& req, Batch& b) {
  const bool ns = o.type == ManagerType::kNamespace;
  const absl::string_view what = ns ? "attribute" : "key";
  Reply r;
  auto need_key = [&]() { return ValidateKey(what, req.key); };
  auto room = [&](size_t more) -> absl::Status {
    if (o.map.size() + more > options_.max_entries) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "'", name, "' is full (", options_.max_entries, " entries)"));
    }
    return absl::OkStatus();
  };
  switch (req.op) {
    case ManagerOp::kGet: {
      FORQ_RETURN_IF_ERROR(need_key());
      auto it = o.map.find(req.key);
      if (it == o.map.end()) {
        return absl::NotFoundError(
            absl::StrCat(ns ? "namespace '" : "dict '", name, "' has no ", what,
                         " '", absl::CHexEscape(req.key), "'"));
      }
      r.value = it->second;
      r.found = true;
      break;
    }
    case ManagerOp::kSet: {
      FORQ_RETURN_IF_ERROR(need_key());
      if (o.map.count(req.key) == 0) FORQ_RETURN_IF_ERROR(room(1));
      o.map[req.key] = req.value;
      TouchLocked(name, o, "set", req.key, req.value, b);
      break;
    }
    case ManagerOp::kDelete: {
      FORQ_RETURN_IF_ERROR(need_key());
      auto it = o.map.find(req.key);
      if (it == o.map.end()) {
        if (ns) {
          return absl::NotFoundError(
              absl::StrCat("namespace '", name, "' has no attribute '",
                           absl::CHexEscape(req.key), "'"));
        }
        break;
      }
      r.found = true;
      r.value = std::move(it->second);
      o.map.erase(it);
      TouchLocked(name, o, "delete", req.key, "", b);
      break;
    }
    case ManagerOp::kContains:
      if (ns) return Unsupported(o.type, req.op);
      FORQ_RETURN_IF_ERROR(need_key());
      r.found = o.map.count(req.key) != 0;
      break;
    case ManagerOp::kKeys:
      if (ns) return Unsupported(o.type, req.op);
      for (const auto& [k, v] : o.map) r.values.push_back(k);
      break;
    case ManagerOp::kItems:
      for (const auto& kv : o.map) r.items.push_back(kv);
      break;
    case ManagerOp::kLen:
      if (ns) return Unsupported(o.type, req.op);
      break;
    case ManagerOp::kUpdate: {
      if (ns) return Unsupported(o.type, req.op);
      size_t fresh = 0;
      for (const auto& [k, v] : req.items) {
        FORQ_RETURN_IF_ERROR(ValidateKey(what, k));
        fresh += o.map.count(k) == 0;
      }
      FORQ_RETURN_IF_ERROR(room(fresh));
      for (auto& [k, v] : req.items) o.map[k] = v;
      TouchLocked(name, o, "update", "", "", b);
      break;
    }
    case ManagerOp::kClear:
      if (ns) return Unsupported(o.type, req.op);
      o.map.clear();
      TouchLocked(name, o, "clear", "", "", b);
      break;
    case ManagerOp::kCompareAndSet: {
      if (ns) return Unsupported(o.type, req.op);
      FORQ_RETURN_IF_ERROR(need_key());
      auto it = o.map.find(req.key);
      if (req.expect_absent
              ? it != o.map.end()
              : (it == o.map.end() || it->second != req.expected)) {
        return absl::AbortedError(absl::StrCat(
            "compare-and-set of '", name, "'[", absl::CHexEscape(req.key),
            "] failed: ",
            it == o.map.end() ? "key is absent" : "value differs"));
      }
      if (it == o.map.end()) FORQ_RETURN_IF_ERROR(room(1));
      o.map[req.key] = req.value;
      r.value = req.value;
      TouchLocked(name, o, "compare_and_set", req.key, req.value, b);
      break;
    }
    case ManagerOp::kSetIfAbsent: {
      if (ns) return Unsupported(o.type, req.op);
      FORQ_RETURN_IF_ERROR(need_key());
      auto it = o.map.find(req.key);
      if (it != o.map.end()) {
        r.found = true;
        r.value = it->second;
        break;
      }
      FORQ_RETURN_IF_ERROR(room(1));
      o.map[req.key] = req.value;
      r.value = req.value;
      TouchLocked(name, o, "set", req.key, req.value, b);
      break;
    }
    default:
      return Unsupported(o.type, req.op);
  }
  r.length = static_cast<int64_t>(o.map.size());
  return r;
}

absl::StatusOr<ObjectManager::Reply> ObjectManager::ListOpLocked(
    const std::string& name, Object& o, Request& req, Batch& b) {
  Reply r;
  auto room = [&](size_t more) -> absl::Status {
    if (o.list.size() + more > options_.max_entries) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "list '", name, "' is full (", options_.max_entries, " items)"));
    }
    return absl::OkStatus();
  };
  auto need_index = [&]() -> absl::Status {
    if (!req.has_index) {
      return absl::InvalidArgumentError(absl::StrCat(
          "list ", worker::ManagerOpName(req.op), " needs an index"));
    }
    return absl::OkStatus();
  };
  switch (req.op) {
    case ManagerOp::kAppend:
      FORQ_RETURN_IF_ERROR(room(1));
      o.list.push_back(req.value);
      TouchLocked(name, o, "append", "", req.value, b);
      break;
    case ManagerOp::kExtend:
      FORQ_RETURN_IF_ERROR(room(req.values.size()));
      for (auto& v : req.values) o.list.push_back(std::move(v));
      TouchLocked(name, o, "extend", "", "", b);
      break;
    case ManagerOp::kGet: {
      FORQ_RETURN_IF_ERROR(need_index());
      FORQ_ASSIGN_OR_RETURN(size_t i, Index(req.index, o.list.size(), "list"));
      r.value = o.list[i];
      break;
    }
    case ManagerOp::kSet: {
      FORQ_RETURN_IF_ERROR(need_index());
      FORQ_ASSIGN_OR_RETURN(size_t i, Index(req.index, o.list.size(), "list"));
      o.list[i] = req.value;
      TouchLocked(name, o, "set", absl::StrCat(i), req.value, b);
      break;
    }
    case ManagerOp::kPop: {
      if (o.list.empty()) {
        return absl::OutOfRangeError(
            absl::StrCat("pop from empty list '", name, "'"));
      }
      FORQ_ASSIGN_OR_RETURN(size_t i, Index(req.has_index ? req.index : -1,
                                            o.list.size(), "list"));
      r.value = std::move(o.list[i]);
      o.list.erase(o.list.begin() + static_cast<ptrdiff_t>(i));
      TouchLocked(name, o, "pop", absl::StrCat(i), r.value, b);
      break;
    }
    case ManagerOp::kInsert: {
      FORQ_RETURN_IF_ERROR(need_index());
      FORQ_RETURN_IF_ERROR(room(1));
      // Python's insert clamps instead of raising.
      const auto n = static_cast<int64_t>(o.list.size());
      int64_t i = req.index < 0 ? req.index + n : req.index;
      i = std::clamp<int64_t>(i, 0, n);
      o.list.insert(o.list.begin() + i, req.value);
      TouchLocked(name, o, "insert", absl::StrCat(i), req.value, b);
      break;
    }
    case ManagerOp::kRemove: {
      auto it = std::find(o.list.begin(), o.list.end(), req.value);
      if (it == o.list.end()) {
        return absl::NotFoundError(
            absl::StrCat("list '", name, "' has no such item"));
      }
      o.list.erase(it);
      TouchLocked(name, o, "remove", "", req.value, b);
      break;
    }
    case ManagerOp::kLen:
      break;
    case ManagerOp::kSlice: {
      auto [start, stop] = SliceBounds(req, o.list.size());
      r.values.assign(o.list.begin() + start, o.list.begin() + stop);
      break;
    }
    case ManagerOp::kClear:
      o.list.clear();
      TouchLocked(name, o, "clear", "", "", b);
      break;
    case ManagerOp::kAdd: {
      FORQ_RETURN_IF_ERROR(need_index());
      FORQ_ASSIGN_OR_RETURN(size_t i, Index(req.index, o.list.size(), "list"));
      FORQ_ASSIGN_OR_RETURN(r.value, AddNumbers(o.list[i], req.delta));
      o.list[i] = r.value;
      TouchLocked(name, o, "add", absl::StrCat(i), r.value, b);
      break;
    }
    default:
      return Unsupported(o.type, req.op);
  }
  r.length = static_cast<int64_t>(o.list.size());
  return r;
}

absl::StatusOr<ObjectManager::Reply> ObjectManager::ValueOpLocked(
    const std::string& name, Object& o, Request& req, Batch& b) {
  Reply r;
  switch (req.op) {
    case ManagerOp::kGet:
      break;
    case ManagerOp::kSet:
      o.value = req.value;
      TouchLocked(name, o, "set", "", o.value, b);
      break;
    case ManagerOp::kAdd: {
      FORQ_ASSIGN_OR_RETURN(std::string v, AddNumbers(o.value, req.delta));
      o.value = std::move(v);
      TouchLocked(name, o, "add", "", o.value, b);
      break;
    }
    case ManagerOp::kCompareAndSet:
      if (o.value != req.expected) {
        return absl::AbortedError(absl::StrCat(
            "compare-and-set of value '", name, "' failed: value differs"));
      }
      o.value = req.value;
      TouchLocked(name, o, "compare_and_set", "", o.value, b);
      break;
    default:
      return Unsupported(o.type, req.op);
  }
  r.value = o.value;
  return r;
}

absl::StatusOr<ObjectManager::Reply> ObjectManager::ArrayOpLocked(
    const std::string& name, Object& o, Request& req, Batch& b) {
  const size_t size = o.typecode == 'i' ? o.ints.size() : o.doubles.size();
  if (req.length != 0 && static_cast<size_t>(req.length) != size) {
    return absl::FailedPreconditionError(absl::StrCat(
        "array '", name, "' has length ", size, ", not ", req.length));
  }
  if (!req.typecode.empty() && req.typecode != std::string(1, o.typecode)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "array '", name, "' has typecode '", std::string(1, o.typecode), "'"));
  }
  auto text = [&o](size_t i) {
    return o.typecode == 'i' ? absl::StrCat(o.ints[i])
                             : FormatDouble(o.doubles[i]);
  };
  auto store = [&o](size_t i, const Number& n) -> absl::Status {
    if (o.typecode == 'i') {
      if (!n.is_int) {
        return absl::InvalidArgumentError(
            "integer array: value is not an integer");
      }
      o.ints[i] = n.i;
    } else {
      o.doubles[i] = n.is_int ? static_cast<double>(n.i) : n.d;
    }
    return absl::OkStatus();
  };
  Reply r;
  r.typecode = std::string(1, o.typecode);
  r.length = static_cast<int64_t>(size);
  switch (req.op) {
    case ManagerOp::kGet: {
      FORQ_ASSIGN_OR_RETURN(size_t i, Index(req.index, size, "array"));
      r.value = text(i);
      break;
    }
    case ManagerOp::kSet: {
      FORQ_ASSIGN_OR_RETURN(size_t i, Index(req.index, size, "array"));
      if (absl::StripAsciiWhitespace(req.value).empty()) {
        return absl::InvalidArgumentError("array set needs a value");
      }
      FORQ_ASSIGN_OR_RETURN(Number n, ParseNumber(req.value, "value"));
      FORQ_RETURN_IF_ERROR(store(i, n));
      r.value = text(i);
      TouchLocked(name, o, "set", absl::StrCat(i), r.value, b);
      break;
    }
    case ManagerOp::kAdd: {
      FORQ_ASSIGN_OR_RETURN(size_t i, Index(req.index, size, "array"));
      FORQ_ASSIGN_OR_RETURN(std::string sum, AddNumbers(text(i), req.delta));
      FORQ_ASSIGN_OR_RETURN(Number n, ParseNumber(sum, "sum"));
      FORQ_RETURN_IF_ERROR(store(i, n));
      r.value = text(i);
      TouchLocked(name, o, "add", absl::StrCat(i), r.value, b);
      break;
    }
    case ManagerOp::kSlice: {
      auto [start, stop] = SliceBounds(req, size);
      for (size_t i = start; i < stop; ++i) r.values.push_back(text(i));
      break;
    }
    case ManagerOp::kLen:
      break;
    default:
      return Unsupported(o.type, req.op);
  }
  return r;
}

// ------------------------------------------------------------ queue, pipe

namespace {
void QueueStats(const std::deque<std::string>& items, int64_t maxsize,
                int64_t unfinished, ManagerReply& r) {
  r.length = static_cast<int64_t>(items.size());
  r.maxsize = maxsize;
  r.unfinished = unfinished;
  r.found = items.empty();                      // "empty"
  r.flag = maxsize > 0 && r.length >= maxsize;  // "full"
}
}  // namespace

absl::StatusOr<ObjectManager::Reply> ObjectManager::QueueOpLocked(
    const std::string& name, Object& o, Request& req, Parking& p, Batch& b) {
  if (req.maxsize != 0 && req.maxsize != o.maxsize) {
    return absl::FailedPreconditionError(absl::StrCat(
        "queue '", name, "' has maxsize ", o.maxsize, ", not ", req.maxsize));
  }
  const size_t cap =
      o.maxsize > 0 ? static_cast<size_t>(o.maxsize) : options_.max_entries;
  Reply r;
  switch (req.op) {
    case ManagerOp::kPut:
      if (o.items.size() >= cap) {
        if (o.maxsize == 0) {
          return absl::ResourceExhaustedError(absl::StrCat(
              "queue '", name, "' holds the maximum of ", cap, " items"));
        }
        p.park = true;
        p.kind = WaitKind::kQueuePut;
        return r;
      }
      o.items.push_back(req.value);
      ++o.unfinished;
      TouchLocked(name, o, "put", "", req.value, b);
      PumpLocked(name, o, b);
      break;
    case ManagerOp::kGet:
      if (o.items.empty()) {
        p.park = true;
        p.kind = WaitKind::kQueueGet;
        return r;
      }
      r.value = std::move(o.items.front());
      o.items.pop_front();
      TouchLocked(name, o, "get", "", r.value, b);
      PumpLocked(name, o, b);
      break;
    case ManagerOp::kSize:
      break;
    case ManagerOp::kTaskDone:
      if (o.unfinished <= 0) {
        return absl::FailedPreconditionError(absl::StrCat(
            "task_done() called too many times on queue '", name, "'"));
      }
      --o.unfinished;
      TouchLocked(name, o, "task_done", "", "", b);
      PumpLocked(name, o, b);
      break;
    case ManagerOp::kJoin:
      if (o.unfinished > 0) {
        p.park = true;
        p.kind = WaitKind::kQueueJoin;
        return r;
      }
      break;
    default:
      return Unsupported(o.type, req.op);
  }
  QueueStats(o.items, o.maxsize, o.unfinished, r);
  return r;
}

absl::StatusOr<ObjectManager::Reply> ObjectManager::PipeOpLocked(
    const std::string& name, Object& o, Request& req, Parking& p, Batch& b) {
  if (req.end != 0 && req.end != 1) {
    return absl::InvalidArgumentError("pipe end must be 0 or 1");
  }
  const int end = static_cast<int>(req.end);
  Reply r;
  switch (req.op) {
    case ManagerOp::kSend: {
      if (o.one_way && end != 1) {
        return absl::FailedPreconditionError(
            absl::StrCat("one-way pipe '", name, "' sends on end 1 only"));
      }
      std::deque<std::string>& inbox = o.inbox[1 - end];
      if (inbox.size() >= options_.max_entries) {
        return absl::ResourceExhaustedError(
            absl::StrCat("pipe '", name, "' is full"));
      }
      inbox.push_back(req.value);
      TouchLocked(name, o, "send", absl::StrCat(end), req.value, b);
      PumpLocked(name, o, b);
      break;
    }
    case ManagerOp::kRecv:
      if (o.one_way && end != 0) {
        return absl::FailedPreconditionError(
            absl::StrCat("one-way pipe '", name, "' receives on end 0 only"));
      }
      if (o.inbox[end].empty()) {
        p.park = true;
        p.kind = WaitKind::kPipeRecv;
        return r;
      }
      r.value = std::move(o.inbox[end].front());
      o.inbox[end].pop_front();
      TouchLocked(name, o, "recv", absl::StrCat(end), r.value, b);
      break;
    case ManagerOp::kPoll:
      r.flag = !o.inbox[end].empty();
      break;
    default:
      return Unsupported(o.type, req.op);
  }
  return r;
}

// ------------------------------------------------------------ sync types

uint64_t ObjectManager::NextTokenLocked() {
  return (epoch_ << kTokenCounterBits) | ++grants_;
}

void ObjectManager::GrantLockLocked(const std::string& name, Object& o,
                                    Session& s, const std::string& owner,
                                    int64_t count) {
  o.holder_session = s.id;
  o.holder_owner = owner;
  o.hold_count = count;
  o.token = NextTokenLocked();
  s.holdings.insert(name);
}

absl::StatusOr<ObjectManager::Reply> ObjectManager::LockOpLocked(
    const std::string& name, Object& o, Request& req, Parking& p, Batch& b) {
  const bool reentrant = o.type != ManagerType::kLock;
  const bool is_cond = o.type == ManagerType::kCondition;
  const bool mine = !o.holder_session.empty() &&
                    o.holder_session == req.session &&
                    (!reentrant || o.holder_owner == req.owner);
  auto not_held = [&]() {
    return absl::FailedPreconditionError(absl::StrCat(
        worker::ManagerTypeName(o.type), " '", name,
        "' is not held by this session", reentrant ? " and owner" : ""));
  };
  Reply r;
  switch (req.op) {
    case ManagerOp::kAcquire: {
      FORQ_ASSIGN_OR_RETURN(Session * s, SessionLocked(req));
      if (reentrant && mine) {
        ++o.hold_count;
        r.flag = true;
        r.token = o.token;
        r.count = o.hold_count;
        return r;
      }
      if (!o.holder_session.empty()) {
        p.park = true;
        p.kind = WaitKind::kAcquire;
        return r;
      }
      GrantLockLocked(name, o, *s, req.owner, 1);
      TouchLocked(name, o, "acquire", "", "", b);
      r.flag = true;
      r.token = o.token;
      r.count = 1;
      return r;
    }
    case ManagerOp::kRelease: {
      FORQ_ASSIGN_OR_RETURN(Session * s, SessionLocked(req));
      if (!mine) return not_held();
      if (--o.hold_count <= 0) {
        o.hold_count = 0;
        o.holder_session.clear();
        o.holder_owner.clear();
        s->holdings.erase(name);
        TouchLocked(name, o, "release", "", "", b);
        PumpLocked(name, o, b);
      }
      r.count = o.hold_count;
      return r;
    }
    case ManagerOp::kWait: {
      if (!is_cond) return Unsupported(o.type, req.op);
      FORQ_ASSIGN_OR_RETURN(Session * s, SessionLocked(req));
      if (!mine) return not_held();
      p.park = true;
      p.kind = WaitKind::kCondWait;
      p.restore_count = o.hold_count;
      o.hold_count = 0;
      o.holder_session.clear();
      o.holder_owner.clear();
      s->holdings.erase(name);
      TouchLocked(name, o, "wait", "", "", b);
      // The waiter is parked by the caller after this returns; granting the
      // lock to others first is fine since a notify needs the lock anyway.
      PumpLocked(name, o, b);
      return r;
    }
    case ManagerOp::kNotify:
    case ManagerOp::kNotifyAll: {
      if (!is_cond) return Unsupported(o.type, req.op);
      FORQ_RETURN_IF_ERROR(SessionLocked(req).status());
      if (!mine) return not_held();
      int64_t n = req.op == ManagerOp::kNotifyAll
                      ? std::numeric_limits<int64_t>::max()
                      : std::max<int64_t>(req.n, 0);
      for (uint64_t wid : o.waiters) {
        if (n == 0) break;
        Waiter& w = waiters_.at(wid);
        if (w.kind != WaitKind::kCondWait) continue;
        w.kind = WaitKind::kCondReacquire;
        w.notified = true;
        b.cancel_timers.push_back(std::exchange(w.timer, 0));
        ++r.count;
        --n;
      }
      TouchLocked(name, o, worker::ManagerOpName(req.op), "", "", b);
      // The notifier holds the lock, so the woken only queue for it.
      return r;
    }
    default:
      return Unsupported(o.type, req.op);
  }
}

absl::StatusOr<ObjectManager::Reply> ObjectManager::SemaphoreOpLocked(
    const std::string& name, Object& o, Request& req, Parking& p, Batch& b) {
  Reply r;
  switch (req.op) {
    case ManagerOp::kAcquire: {
      FORQ_ASSIGN_OR_RETURN(Session * s, SessionLocked(req));
      if (o.permits <= 0) {
        p.park = true;
        p.kind = WaitKind::kAcquire;
        return r;
      }
      --o.permits;
      ++o.held[s->id];
      s->holdings.insert(name);
      TouchLocked(name, o, "acquire", "", "", b);
      r.flag = true;
      break;
    }
    case ManagerOp::kRelease: {
      Session* s = nullptr;
      if (!req.session.empty()) {
        FORQ_ASSIGN_OR_RETURN(s, SessionLocked(req));
      }
      auto h = s != nullptr ? o.held.find(s->id) : o.held.end();
      if (h != o.held.end()) {
        if (--h->second == 0) {
          o.held.erase(h);
          s->holdings.erase(name);
        }
      } else if (o.type == ManagerType::kBoundedSemaphore) {
        int64_t held = 0;
        for (const auto& [sid, k] : o.held) held += k;
        if (o.permits + held >= o.initial) {
          return absl::FailedPreconditionError(absl::StrCat(
              "bounded semaphore '", name, "' released too many times (bound ",
              o.initial, ")"));
        }
      }
      ++o.permits;
      TouchLocked(name, o, "release", "", "", b);
      PumpLocked(name, o, b);
      break;
    }
    case ManagerOp::kValue:
      break;
    default:
      return Unsupported(o.type, req.op);
  }
  r.length = o.permits;
  return r;
}

absl::StatusOr<ObjectManager::Reply> ObjectManager::EventOpLocked(
    const std::string& name, Object& o, Request& req, Parking& p, Batch& b) {
  Reply r;
  switch (req.op) {
    case ManagerOp::kSet:
      if (!o.is_set) {
        o.is_set = true;
        TouchLocked(name, o, "set", "", "", b);
        PumpLocked(name, o, b);
      }
      break;
    case ManagerOp::kClear:
      if (o.is_set) {
        o.is_set = false;
        TouchLocked(name, o, "clear", "", "", b);
      }
      break;
    case ManagerOp::kIsSet:
      break;
    case ManagerOp::kWait:
      if (!o.is_set) {
        p.park = true;
        p.kind = WaitKind::kEventWait;
        return r;
      }
      break;
    default:
      return Unsupported(o.type, req.op);
  }
  r.flag = o.is_set;
  return r;
}

// ------------------------------------------------------------ waiters

uint64_t ObjectManager::ParkLocked(const std::string& name, Object& o,
                                   Request req, const Parking& p, Done done,
                                   absl::string_view tag, Batch& b) {
  Waiter w;
  w.id = next_waiter_id_++;
  w.object = name;
  w.kind = p.kind;
  w.done = std::move(done);
  w.tag = std::string(tag);
  w.restore_count = p.restore_count;
  const int64_t timeout_ms = req.timeout_ms;
  w.req = std::move(req);
  const uint64_t id = w.id;
  if (timeout_ms == 0) {
    // Not allowed to block: answer as if the timeout passed at once.
    if (w.kind == WaitKind::kCondWait) {
      w.kind = WaitKind::kCondReacquire;
    } else {
      b.replies.emplace_back(std::move(w.done), TimeoutReplyLocked(w, &o));
      return 0;
    }
  } else if (timeout_ms > 0) {
    w.timer =
        timers_.Schedule(Clock::now() + std::chrono::milliseconds(timeout_ms),
                         [this, id] { OnWaiterTimer(id); });
  }
  o.waiters.push_back(id);
  waiters_.emplace(id, std::move(w));
  // A condition wait re-acquiring at once (timeout 0) may get the lock now.
  PumpLocked(name, o, b);
  return waiters_.count(id) != 0 ? id : 0;
}

std::optional<ObjectManager::Waiter> ObjectManager::TakeWaiterLocked(
    uint64_t id, Batch& b) {
  auto it = waiters_.find(id);
  if (it == waiters_.end()) return std::nullopt;
  Waiter w = std::move(it->second);
  waiters_.erase(it);
  auto oit = objects_.find(w.object);
  if (oit != objects_.end()) oit->second.waiters.remove(id);
  b.cancel_timers.push_back(std::exchange(w.timer, 0));
  return w;
}

absl::StatusOr<ObjectManager::Reply> ObjectManager::TimeoutReplyLocked(
    const Waiter& w, Object* o) {
  const std::string& name = w.object;
  Reply r;
  switch (w.kind) {
    case WaitKind::kQueueGet:
      return absl::DeadlineExceededError(
          absl::StrCat("queue '", name, "' is empty"));
    case WaitKind::kQueuePut:
      return absl::ResourceExhaustedError(
          absl::StrCat("queue '", name, "' is full"));
    case WaitKind::kQueueJoin:
      return absl::DeadlineExceededError(
          absl::StrCat("queue '", name, "' still has unfinished items"));
    case WaitKind::kPipeRecv:
      return absl::DeadlineExceededError(
          absl::StrCat("no message on pipe '", name, "' end ", w.req.end));
    case WaitKind::kAcquire:
      r.flag = false;
      if (o != nullptr && (o->type == ManagerType::kSemaphore ||
                           o->type == ManagerType::kBoundedSemaphore)) {
        r.length = o->permits;
      }
      return r;
    case WaitKind::kEventWait:
      r.flag = false;
      return r;
    case WaitKind::kCondWait:
    case WaitKind::kCondReacquire:
      break;
  }
  return absl::InternalError("condition waits do not time out directly");
}

void ObjectManager::OnWaiterTimer(uint64_t id) {
  Batch b;
  {
    MutexLock lock(&mu_);
    auto it = waiters_.find(id);
    if (it == waiters_.end()) return;
    Waiter& w = it->second;
    w.timer = 0;
    if (w.kind == WaitKind::kCondWait) {
      // Condition.wait(timeout) returns False only after re-acquiring the
      // lock, so the waiter stays parked, now queued for the lock.
      w.kind = WaitKind::kCondReacquire;
      auto oit = objects_.find(w.object);
      if (oit != objects_.end()) PumpLocked(oit->first, oit->second, b);
    } else {
      auto oit = objects_.find(w.object);
      Object* o = oit == objects_.end() ? nullptr : &oit->second;
      std::optional<Waiter> taken = TakeWaiterLocked(id, b);
      if (taken) {
        b.replies.emplace_back(std::move(taken->done),
                               TimeoutReplyLocked(*taken, o));
      }
    }
    UpdateGaugesLocked();
  }
  Finish(b);
}

void ObjectManager::Cancel(uint64_t waiter_id) {
  if (waiter_id == 0) return;
  Batch b;
  {
    MutexLock lock(&mu_);
    std::optional<Waiter> w = TakeWaiterLocked(waiter_id, b);
    if (!w) return;
    b.replies.emplace_back(std::move(w->done),
                           absl::CancelledError("manager operation cancelled"));
    UpdateGaugesLocked();
  }
  Finish(b);
}

int ObjectManager::CancelTagged(absl::string_view tag) {
  if (tag.empty()) return 0;
  Batch b;
  int n = 0;
  {
    MutexLock lock(&mu_);
    std::vector<uint64_t> ids;
    for (const auto& [id, w] : waiters_) {
      if (w.tag == tag) ids.push_back(id);
    }
    for (uint64_t id : ids) {
      std::optional<Waiter> w = TakeWaiterLocked(id, b);
      if (!w) continue;
      ++n;
      b.replies.emplace_back(std::move(w->done),
                             absl::CancelledError("task ended"));
    }
    UpdateGaugesLocked();
  }
  Finish(b);
  return n;
}

void ObjectManager::PumpLocked(const std::string& name, Object& o, Batch& b) {
  // Both helpers run only here, under PumpLocked's hold of mu_.
  auto first = [&](auto pred) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) -> Waiter* {
    for (uint64_t id : o.waiters) {
      Waiter& w = waiters_.at(id);
      if (pred(w)) return &w;
    }
    return nullptr;
  };
  auto complete =
      [&](Waiter* w, absl::StatusOr<Reply> reply)
          ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
            std::optional<Waiter> taken = TakeWaiterLocked(w->id, b);
            b.replies.emplace_back(std::move(taken->done), std::move(reply));
          };
  switch (o.type) {
    case ManagerType::kQueue: {
      const size_t cap =
          o.maxsize > 0 ? static_cast<size_t>(o.maxsize) : options_.max_entries;
      bool progress = true;
      while (progress) {
        progress = false;
        while (!o.items.empty()) {
          Waiter* w = first(
              [](const Waiter& x) { return x.kind == WaitKind::kQueueGet; });
          if (w == nullptr) break;
          Reply r;
          r.value = std::move(o.items.front());
          o.items.pop_front();
          TouchLocked(name, o, "get", "", r.value, b);
          QueueStats(o.items, o.maxsize, o.unfinished, r);
          complete(w, std::move(r));
          progress = true;
        }
        while (o.items.size() < cap) {
          Waiter* w = first(
              [](const Waiter& x) { return x.kind == WaitKind::kQueuePut; });
          if (w == nullptr) break;
          o.items.push_back(w->req.value);
          ++o.unfinished;
          TouchLocked(name, o, "put", "", w->req.value, b);
          Reply r;
          QueueStats(o.items, o.maxsize, o.unfinished, r);
          complete(w, std::move(r));
          progress = true;
        }
      }
      if (o.unfinished == 0) {
        while (Waiter* w = first([](const Waiter& x) {
                 return x.kind == WaitKind::kQueueJoin;
               })) {
          Reply r;
          QueueStats(o.items, o.maxsize, o.unfinished, r);
          complete(w, std::move(r));
        }
      }
      break;
    }
    case ManagerType::kPipe:
      for (int end = 0; end < 2; ++end) {
        while (!o.inbox[end].empty()) {
          Waiter* w = first([end](const Waiter& x) {
            return x.kind == WaitKind::kPipeRecv && x.req.end == end;
          });
          if (w == nullptr) break;
          Reply r;
          r.value = std::move(o.inbox[end].front());
          o.inbox[end].pop_front();
          TouchLocked(name, o, "recv", absl::StrCat(end), r.value, b);
          complete(w, std::move(r));
        }
      }
      break;
    case ManagerType::kLock:
    case ManagerType::kRLock:
    case ManagerType::kCondition:
      while (o.holder_session.empty()) {
        Waiter* w = first([](const Waiter& x) {
          return x.kind == WaitKind::kAcquire ||
                 x.kind == WaitKind::kCondReacquire;
        });
        if (w == nullptr) break;
        auto sit = sessions_.find(w->req.session);
        if (sit == sessions_.end()) {
          complete(w, absl::FailedPreconditionError("session expired"));
          continue;
        }
        const bool reacquire = w->kind == WaitKind::kCondReacquire;
        GrantLockLocked(name, o, sit->second, w->req.owner,
                        reacquire ? w->restore_count : 1);
        TouchLocked(name, o, "acquire", "", "", b);
        Reply r;
        r.flag = reacquire ? w->notified : true;
        r.token = o.token;
        r.count = o.hold_count;
        complete(w, std::move(r));
      }
      break;
    case ManagerType::kSemaphore:
    case ManagerType::kBoundedSemaphore:
      while (o.permits > 0) {
        Waiter* w =
            first([](const Waiter& x) { return x.kind == WaitKind::kAcquire; });
        if (w == nullptr) break;
        auto sit = sessions_.find(w->req.session);
        if (sit == sessions_.end()) {
          complete(w, absl::FailedPreconditionError("session expired"));
          continue;
        }
        --o.permits;
        ++o.held[sit->first];
        sit->second.holdings.insert(name);
        TouchLocked(name, o, "acquire", "", "", b);
        Reply r;
        r.flag = true;
        r.length = o.permits;
        complete(w, std::move(r));
      }
      break;
    case ManagerType::kEvent:
      if (o.is_set) {
        while (Waiter* w = first([](const Waiter&) { return true; })) {
          Reply r;
          r.flag = true;
          complete(w, std::move(r));
        }
      }
      break;
    default:
      break;
  }
}

void ObjectManager::TouchLocked(const std::string& name, Object& o,
                                absl::string_view op, absl::string_view key,
                                absl::string_view value, Batch& b) {
  ++o.version;
  if (store_ != nullptr && Persistent(o.type)) b.dirty.insert(name);
  auto [lo, hi] = watchers_.equal_range(name);
  if (lo == hi) return;
  ManagerChange c;
  c.name = name;
  c.type = o.type;
  c.op = std::string(op);
  c.key = std::string(key);
  c.value = std::string(value);
  c.version = o.version;
  c.time = absl::Now();
  for (auto it = lo; it != hi; ++it) {
    it->second.second->Push(c);
    b.flush.push_back(it->second.second);
  }
}

// ------------------------------------------------------------ objects

std::vector<ManagerObjectInfo> ObjectManager::ListObjects(
    absl::string_view prefix) {
  std::vector<ManagerObjectInfo> out;
  MutexLock lock(&mu_);
  for (auto it = objects_.lower_bound(std::string(prefix));
       it != objects_.end() && absl::StartsWith(it->first, prefix); ++it) {
    const Object& o = it->second;
    ManagerObjectInfo info;
    info.name = it->first;
    info.type = o.type;
    info.version = o.version;
    info.waiters = static_cast<int64_t>(o.waiters.size());
    switch (o.type) {
      case ManagerType::kDict:
      case ManagerType::kNamespace:
        info.size = static_cast<int64_t>(o.map.size());
        break;
      case ManagerType::kList:
        info.size = static_cast<int64_t>(o.list.size());
        break;
      case ManagerType::kValue:
        info.size = static_cast<int64_t>(o.value.size());
        break;
      case ManagerType::kArray:
        info.size = static_cast<int64_t>(o.typecode == 'i' ? o.ints.size()
                                                           : o.doubles.size());
        break;
      case ManagerType::kQueue:
        info.size = static_cast<int64_t>(o.items.size());
        break;
      case ManagerType::kPipe:
        info.size = static_cast<int64_t>(o.inbox[0].size() + o.inbox[1].size());
        break;
      case ManagerType::kSemaphore:
      case ManagerType::kBoundedSemaphore:
        info.size = o.permits;
        break;
      case ManagerType::kEvent:
        info.size = o.is_set ? 1 : 0;
        break;
      default:
        info.size = o.hold_count;
        break;
    }
    out.push_back(std::move(info));
  }
  return out;
}

absl::StatusOr<bool> ObjectManager::DeleteObject(absl::string_view name) {
  FORQ_RETURN_IF_ERROR(ValidateName(name));
  Batch b;
  {
    MutexLock lock(&mu_);
    auto it = objects_.find(std::string(name));
    if (it == objects_.end()) return false;
    const std::string key(name);
    std::vector<uint64_t> ids(it->second.waiters.begin(),
                              it->second.waiters.end());
    for (uint64_t id : ids) {
      std::optional<Waiter> w = TakeWaiterLocked(id, b);
      if (w) {
        b.replies.emplace_back(
            std::move(w->done),
            absl::AbortedError(absl::StrCat("'", key, "' was deleted")));
      }
    }
    for (auto& [sid, s] : sessions_) s.holdings.erase(key);
    const bool persistent = Persistent(it->second.type);
    TouchLocked(key, it->second, "delete", "", "", b);
    objects_.erase(it);
    b.dirty.erase(key);
    if (store_ != nullptr && persistent) {
      b.writes.emplace_back(absl::StrCat(kObjectKeyPrefix, key), std::nullopt);
    }
    QueueWritesLocked(b);
    UpdateGaugesLocked();
  }
  Finish(b);
  return true;
}

uint64_t ObjectManager::Watch(absl::string_view name,
                              std::shared_ptr<ManagerWatchSink> sink) {
  MutexLock lock(&mu_);
  const uint64_t id = next_watch_id_++;
  ManagerChange c;
  c.name = std::string(name);
  c.op = "snapshot";
  c.time = absl::Now();
  auto it = objects_.find(c.name);
  if (it != objects_.end()) {
    c.type = it->second.type;
    c.version = it->second.version;
  }
  // Pushed under the lock so the snapshot precedes every later change.
  sink->Push(c);
  watchers_.emplace(std::string(name), std::make_pair(id, std::move(sink)));
  return id;
}

void ObjectManager::Unwatch(uint64_t id) {
  std::shared_ptr<ManagerWatchSink> dropped;
  MutexLock lock(&mu_);
  for (auto it = watchers_.begin(); it != watchers_.end(); ++it) {
    if (it->second.first == id) {
      dropped = std::move(it->second.second);
      watchers_.erase(it);
      return;
    }
  }
}

size_t ObjectManager::waiter_count() {
  MutexLock lock(&mu_);
  return waiters_.size();
}

size_t ObjectManager::session_count() {
  MutexLock lock(&mu_);
  return sessions_.size();
}

size_t ObjectManager::object_count() {
  MutexLock lock(&mu_);
  return objects_.size();
}

uint64_t ObjectManager::epoch() {
  MutexLock lock(&mu_);
  return epoch_;
}

bool ObjectManager::AwaitWaiterCount(size_t n, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  MutexLock lock(&mu_);
  while (waiters_.size() != n) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) return false;
    waiters_changed_.WaitWithTimeout(&mu_, left);
  }
  return true;
}

void ObjectManager::UpdateGaugesLocked() {
  waiters_changed_.SignalAll();
  gauges_->waiters.store(static_cast<int64_t>(waiters_.size()),
                         std::memory_order_relaxed);
  gauges_->sessions.store(static_cast<int64_t>(sessions_.size()),
                          std::memory_order_relaxed);
  gauges_->objects.store(static_cast<int64_t>(objects_.size()),
                         std::memory_order_relaxed);
}

// ------------------------------------------------------------ persistence

void ObjectManager::QueueWritesLocked(Batch& b) {
  if (store_ == nullptr) return;
  for (const std::string& name : b.dirty) {
    auto it = objects_.find(name);
    if (it == objects_.end()) continue;
    const Object& o = it->second;
    BlobWriter w;
    w.Str("FQO1");
    w.U64(static_cast<uint64_t>(o.type));
    w.U64(o.version);
    switch (o.type) {
      case ManagerType::kDict:
      case ManagerType::kNamespace:
        w.U64(o.map.size());
        for (const auto& [k, v] : o.map) {
          w.Str(k);
          w.Str(v);
        }
        break;
      case ManagerType::kList:
        w.U64(o.list.size());
        for (const auto& v : o.list) w.Str(v);
        break;
      case ManagerType::kValue:
        w.Str(o.value);
        break;
      case ManagerType::kArray:
        w.U64(static_cast<uint64_t>(o.typecode));
        if (o.typecode == 'i') {
          w.U64(o.ints.size());
          for (int64_t v : o.ints) w.U64(static_cast<uint64_t>(v));
        } else {
          w.U64(o.doubles.size());
          for (double d : o.doubles) {
            uint64_t v;
            memcpy(&v, &d, sizeof(v));
            w.U64(v);
          }
        }
        break;
      case ManagerType::kQueue:
        w.U64(static_cast<uint64_t>(o.maxsize));
        w.U64(static_cast<uint64_t>(o.unfinished));
        w.U64(o.items.size());
        for (const auto& v : o.items) w.Str(v);
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
        continue;
    }
    b.writes.emplace_back(absl::StrCat(kObjectKeyPrefix, name),
                          std::move(w.out()));
  }
  b.dirty.clear();
  if (b.writes.empty()) return;
  // Queued under mu_ so the store sees writes in the order changes happened;
  // the replies ride along and are sent once the writes are durable.
  MutexLock lock(&persist_mu_);
  persist_queue_.push_back(
      PersistGroup{std::move(b.writes), std::move(b.replies)});
  b.writes.clear();
  b.replies.clear();
}

void ObjectManager::Finish(Batch& b) {
  for (uint64_t t : b.cancel_timers) timers_.Cancel(t);
  DrainPersist();
  for (auto& [done, reply] : b.replies) done(std::move(reply));
  b.replies.clear();
  for (auto& sink : b.flush) sink->Flush();
}

void ObjectManager::DrainPersist() {
  if (store_ == nullptr) return;
  while (true) {
    std::deque<PersistGroup> groups;
    {
      MutexLock lock(&persist_mu_);
      // One drainer at a time keeps the store calls in queue order.
      if (persisting_ || persist_queue_.empty()) return;
      persisting_ = true;
      groups.swap(persist_queue_);
    }
    // Coalesce: only the last blob per key matters; every reply waits for
    // all writes of the drained groups.
    std::vector<std::pair<std::string, std::optional<std::string>>> writes;
    std::map<std::string, size_t> pos;
    auto replies = std::make_shared<std::vector<Completion>>();
    for (PersistGroup& g : groups) {
      for (auto& [key, blob] : g.writes) {
        auto [it, fresh] = pos.emplace(key, writes.size());
        if (fresh) {
          writes.emplace_back(key, std::move(blob));
        } else {
          writes[it->second].second = std::move(blob);
        }
      }
      for (auto& c : g.replies) replies->push_back(std::move(c));
    }
    struct Pending {
      Mutex mu;
      size_t left ABSL_GUARDED_BY(mu) = 0;
      absl::Status status ABSL_GUARDED_BY(mu);
    };
    auto pending = std::make_shared<Pending>();
    {
      MutexLock lock(&pending->mu);
      pending->left = writes.size();
    }
    auto on_done = [pending, replies](absl::Status s) {
      absl::Status final_status;
      {
        MutexLock lock(&pending->mu);
        if (!s.ok() && pending->status.ok()) pending->status = s;
        if (--pending->left != 0) return;
        final_status = pending->status;
      }
      for (auto& [done, reply] : *replies) {
        if (!final_status.ok() && reply.ok()) {
          done(absl::UnavailableError(
              absl::StrCat("manager change applied but not persisted: ",
                           final_status.message())));
        } else {
          done(std::move(reply));
        }
      }
    };
    for (auto& [key, blob] : writes) {
      if (blob) {
        store_->PutObject(key, std::move(*blob), on_done);
      } else {
        store_->DeleteObject(key, on_done);
      }
    }
    MutexLock lock(&persist_mu_);
    persisting_ = false;
  }
}

}  // namespace forq::server
