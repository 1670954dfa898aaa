// `forq manager TYPE NAME OP [ARGS...]`: one Manager operation per process.
// See docs/manager.md for every type and op.
//
// A CLI process is short-lived, so locks and permits taken here are held by
// a session that outlives it: `acquire` without --session opens one with
// --session-ttl (default 60 s) and prints "session=ID token=N"; the lock is
// held until `release --session ID`, `forq manager session ID close`, or the
// TTL passes without `forq manager session ID keepalive`.
#include <chrono>
#include <functional>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "google/protobuf/util/time_util.h"
#include <grpcpp/grpcpp.h>

#include "client/cli/cli.h"
#include "forq/v1/manager.grpc.pb.h"

namespace forq::cli {
namespace {

using Stub = v1::ManagerService::Stub;

struct ManagerArgs {
  std::string type;
  std::string name;
  std::string op;
  std::vector<std::string> args;
  double timeout = -1;  // seconds; < 0 = wait without limit
  std::string session;
  double session_ttl = 60;
  int64_t maxsize = 0;
  int64_t length = 0;
  std::string typecode;
  int64_t value = -1;
  int end = 0;
  bool one_way = false;
  std::string owner = "cli";
};

struct Env {
  CliContext& ctx;
  ManagerArgs& a;
  Stub& stub;
  absl::Duration rpc_timeout;

  absl::Duration wait() const {
    return a.timeout < 0 ? absl::InfiniteDuration() : absl::Seconds(a.timeout);
  }

  template <typename Req, typename Resp>
  absl::StatusOr<Resp> Call(grpc::Status (Stub::*method)(grpc::ClientContext*,
                                                         const Req&, Resp*),
                            const Req& req, bool blocking = false) {
    grpc::ClientContext gctx;
    absl::Duration w = blocking ? wait() : absl::ZeroDuration();
    if (w != absl::InfiniteDuration()) {
      gctx.set_deadline(std::chrono::system_clock::now() +
                        absl::ToChronoMilliseconds(rpc_timeout + w));
    }
    Resp resp;
    grpc::Status s = (stub.*method)(&gctx, req, &resp);
    if (!s.ok()) return FromGrpcStatus(s);
    return resp;
  }

  template <typename Req>
  void SetTimeout(Req& req) const {
    if (a.timeout < 0) return;
    *req.mutable_timeout() =
        google::protobuf::util::TimeUtil::MillisecondsToDuration(
            static_cast<int64_t>(a.timeout * 1000));
  }

  // Prints the outcome; "said no" answers (timeouts, full/empty, CAS
  // conflict, missing key) exit 1, everything else that fails exits 2.
  template <typename Resp>
  int Out(const absl::StatusOr<Resp>& r,
          const std::function<void(const Resp&)>& text) {
    if (!r.ok()) {
      const absl::StatusCode c = r.status().code();
      if (c == absl::StatusCode::kDeadlineExceeded ||
          c == absl::StatusCode::kResourceExhausted ||
          c == absl::StatusCode::kAborted || c == absl::StatusCode::kNotFound) {
        std::cerr << "forq: " << absl::StatusCodeToString(c) << ": "
                  << r.status().message() << std::endl;
        return kExitTaskFailed;
      }
      return Fail(r.status());
    }
    if (ctx.json) {
      PrintJson(*r);
    } else if (text) {
      text(*r);
    }
    return kExitOk;
  }

  absl::StatusOr<std::string> Arg(size_t i, absl::string_view what) const {
    if (i >= a.args.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat(a.type, " ", a.op, " needs ", what));
    }
    return a.args[i];
  }
  absl::StatusOr<int64_t> IntArg(size_t i, absl::string_view what) const {
    absl::StatusOr<std::string> s = Arg(i, what);
    if (!s.ok()) return s.status();
    int64_t v = 0;
    if (!absl::SimpleAtoi(*s, &v)) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " must be an integer, got '", *s, "'"));
    }
    return v;
  }
  // The session for acquire: --session, or a new one that outlives this
  // process (printed so the user can release it later).
  absl::StatusOr<std::string> SessionForAcquire() {
    if (!a.session.empty()) return a.session;
    v1::OpenSessionRequest req;
    *req.mutable_ttl() =
        google::protobuf::util::TimeUtil::MillisecondsToDuration(
            static_cast<int64_t>(a.session_ttl * 1000));
    req.set_client_name("forq cli");
    absl::StatusOr<v1::OpenSessionResponse> r = Call(&Stub::OpenSession, req);
    if (!r.ok()) return r.status();
    return r->session();
  }
  absl::StatusOr<std::string> NeedSession() const {
    if (a.session.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(a.type, " ", a.op, " needs --session ID"));
    }
    return a.session;
  }
};

void PrintLines(const std::vector<std::string>& lines) {
  for (const auto& l : lines) std::cout << l << "\n";
}

template <typename Map>
void PrintItems(const Map& items) {
  std::map<std::string, std::string> sorted(items.begin(), items.end());
  for (const auto& [k, v] : sorted) std::cout << k << "=" << v << "\n";
}

#define FORQ_TRY(lhs, expr)                           \
  auto lhs##_or = (expr);                             \
  if (!lhs##_or.ok()) return Fail(lhs##_or.status()); \
  auto lhs = *lhs##_or

int DictCmd(Env& e) {
  const std::string& op = e.a.op;
  v1::DictRequest req;
  req.set_name(e.a.name);
  auto print_value = [](const v1::DictResponse& r) {
    std::cout << r.value() << "\n";
  };
  auto print_found = [](const v1::DictResponse& r) {
    std::cout << (r.found() ? "true" : "false") << "\n";
  };
  auto print_len = [](const v1::DictResponse& r) {
    std::cout << r.length() << "\n";
  };
  if (op == "get") {
    FORQ_TRY(k, e.Arg(0, "KEY"));
    req.set_key(k);
    return e.Out<v1::DictResponse>(e.Call(&Stub::DictGet, req), print_value);
  }
  if (op == "set") {
    FORQ_TRY(k, e.Arg(0, "KEY"));
    FORQ_TRY(v, e.Arg(1, "VALUE"));
    req.set_key(k);
    req.set_value(ReadPayload(v));
    return e.Out<v1::DictResponse>(e.Call(&Stub::DictSet, req), nullptr);
  }
  if (op == "delete" || op == "del") {
    FORQ_TRY(k, e.Arg(0, "KEY"));
    req.set_key(k);
    return e.Out<v1::DictResponse>(e.Call(&Stub::DictDelete, req), print_found);
  }
  if (op == "contains") {
    FORQ_TRY(k, e.Arg(0, "KEY"));
    req.set_key(k);
    return e.Out<v1::DictResponse>(e.Call(&Stub::DictContains, req),
                                   print_found);
  }
  if (op == "keys") {
    return e.Out<v1::DictResponse>(
        e.Call(&Stub::DictKeys, req), [](const auto& r) {
          PrintLines({r.keys().begin(), r.keys().end()});
        });
  }
  if (op == "items") {
    return e.Out<v1::DictResponse>(
        e.Call(&Stub::DictItems, req),
        [](const auto& r) { PrintItems(r.items()); });
  }
  if (op == "len")
    return e.Out<v1::DictResponse>(e.Call(&Stub::DictLen, req), print_len);
  if (op == "clear")
    return e.Out<v1::DictResponse>(e.Call(&Stub::DictClear, req), nullptr);
  if (op == "update") {
    for (const std::string& kv : e.a.args) {
      size_t eq = kv.find('=');
      if (eq == std::string::npos)
        return Fail("update takes KEY=VALUE arguments");
      (*req.mutable_items())[kv.substr(0, eq)] = kv.substr(eq + 1);
    }
    return e.Out<v1::DictResponse>(e.Call(&Stub::DictUpdate, req), print_len);
  }
  if (op == "cas") {
    // cas KEY EXPECTED NEW; EXPECTED "-" means "must be absent".
    FORQ_TRY(k, e.Arg(0, "KEY"));
    FORQ_TRY(expected, e.Arg(1, "EXPECTED (- = absent)"));
    FORQ_TRY(v, e.Arg(2, "NEW"));
    req.set_key(k);
    if (expected == "-") {
      req.set_expect_absent(true);
    } else {
      req.set_expected(expected);
    }
    req.set_value(v);
    return e.Out<v1::DictResponse>(e.Call(&Stub::DictCompareAndSet, req),
                                   nullptr);
  }
  if (op == "setdefault") {
    FORQ_TRY(k, e.Arg(0, "KEY"));
    FORQ_TRY(v, e.Arg(1, "VALUE"));
    req.set_key(k);
    req.set_value(v);
    return e.Out<v1::DictResponse>(e.Call(&Stub::DictSetIfAbsent, req),
                                   print_value);
  }
  return Fail(
      "dict ops: get set delete contains keys items len clear update cas "
      "setdefault");
}

int ListCmd(Env& e) {
  const std::string& op = e.a.op;
  v1::ListRequest req;
  req.set_name(e.a.name);
  auto print_value = [](const v1::ListResponse& r) {
    std::cout << r.value() << "\n";
  };
  auto print_len = [](const v1::ListResponse& r) {
    std::cout << r.length() << "\n";
  };
  if (op == "append") {
    FORQ_TRY(v, e.Arg(0, "VALUE"));
    req.set_value(ReadPayload(v));
    return e.Out<v1::ListResponse>(e.Call(&Stub::ListAppend, req), print_len);
  }
  if (op == "extend") {
    for (const auto& v : e.a.args) req.add_values(v);
    return e.Out<v1::ListResponse>(e.Call(&Stub::ListExtend, req), print_len);
  }
  if (op == "get") {
    FORQ_TRY(i, e.IntArg(0, "INDEX"));
    req.set_index(i);
    return e.Out<v1::ListResponse>(e.Call(&Stub::ListGet, req), print_value);
  }
  if (op == "set" || op == "insert") {
    FORQ_TRY(i, e.IntArg(0, "INDEX"));
    FORQ_TRY(v, e.Arg(1, "VALUE"));
    req.set_index(i);
    req.set_value(v);
    return e.Out<v1::ListResponse>(
        e.Call(op == "set" ? &Stub::ListSet : &Stub::ListInsert, req), nullptr);
  }
  if (op == "pop") {
    if (!e.a.args.empty()) {
      FORQ_TRY(i, e.IntArg(0, "INDEX"));
      req.set_index(i);
    }
    return e.Out<v1::ListResponse>(e.Call(&Stub::ListPop, req), print_value);
  }
  if (op == "remove") {
    FORQ_TRY(v, e.Arg(0, "VALUE"));
    req.set_value(v);
    return e.Out<v1::ListResponse>(e.Call(&Stub::ListRemove, req), nullptr);
  }
  if (op == "len")
    return e.Out<v1::ListResponse>(e.Call(&Stub::ListLen, req), print_len);
  if (op == "clear")
    return e.Out<v1::ListResponse>(e.Call(&Stub::ListClear, req), nullptr);
  if (op == "slice" || op == "all") {
    if (e.a.args.size() > 0) {
      FORQ_TRY(s, e.IntArg(0, "START"));
      req.set_start(s);
    }
    if (e.a.args.size() > 1) {
      FORQ_TRY(s, e.IntArg(1, "STOP"));
      req.set_stop(s);
    }
    return e.Out<v1::ListResponse>(
        e.Call(&Stub::ListSlice, req), [](const auto& r) {
          PrintLines({r.values().begin(), r.values().end()});
        });
  }
  if (op == "add") {
    FORQ_TRY(i, e.IntArg(0, "INDEX"));
    FORQ_TRY(d, e.Arg(1, "DELTA"));
    req.set_index(i);
    req.set_delta(d);
    return e.Out<v1::ListResponse>(e.Call(&Stub::ListAdd, req), print_value);
  }
  return Fail(
      "list ops: append extend get set insert pop remove len slice clear add");
}

int ValueCmd(Env& e) {
  v1::ValueRequest req;
  req.set_name(e.a.name);
  auto print = [](const v1::ValueResponse& r) {
    std::cout << r.value() << "\n";
  };
  const std::string& op = e.a.op;
  if (op == "get")
    return e.Out<v1::ValueResponse>(e.Call(&Stub::ValueGet, req), print);
  if (op == "set") {
    FORQ_TRY(v, e.Arg(0, "VALUE"));
    req.set_value(ReadPayload(v));
    return e.Out<v1::ValueResponse>(e.Call(&Stub::ValueSet, req), nullptr);
  }
  if (op == "add") {
    FORQ_TRY(d, e.Arg(0, "DELTA"));
    req.set_delta(d);
    return e.Out<v1::ValueResponse>(e.Call(&Stub::ValueAdd, req), print);
  }
  if (op == "cas") {
    FORQ_TRY(x, e.Arg(0, "EXPECTED"));
    FORQ_TRY(v, e.Arg(1, "NEW"));
    req.set_expected(x);
    req.set_value(v);
    return e.Out<v1::ValueResponse>(e.Call(&Stub::ValueCompareAndSet, req),
                                    print);
  }
  return Fail("value ops: get set add cas");
}

int ArrayCmd(Env& e) {
  v1::ArrayRequest req;
  req.set_name(e.a.name);
  req.set_length(e.a.length);
  req.set_typecode(e.a.typecode);
  auto print = [](const v1::ArrayResponse& r) {
    std::cout << r.value() << "\n";
  };
  const std::string& op = e.a.op;
  if (op == "get" || op == "set" || op == "add") {
    FORQ_TRY(i, e.IntArg(0, "INDEX"));
    req.set_index(i);
    if (op == "get")
      return e.Out<v1::ArrayResponse>(e.Call(&Stub::ArrayGet, req), print);
    FORQ_TRY(v, e.Arg(1, op == "set" ? "VALUE" : "DELTA"));
    if (op == "set") {
      req.set_value(v);
      return e.Out<v1::ArrayResponse>(e.Call(&Stub::ArraySet, req), print);
    }
    req.set_delta(v);
    return e.Out<v1::ArrayResponse>(e.Call(&Stub::ArrayAdd, req), print);
  }
  if (op == "len") {
    return e.Out<v1::ArrayResponse>(
        e.Call(&Stub::ArrayLen, req),
        [](const auto& r) { std::cout << r.length() << "\n"; });
  }
  if (op == "slice" || op == "all") {
    return e.Out<v1::ArrayResponse>(
        e.Call(&Stub::ArraySlice, req), [](const auto& r) {
          std::cout << absl::StrJoin(r.values(), " ") << "\n";
        });
  }
  return Fail(
      "array ops (create with --length N [--typecode i|d]): get set add len "
      "slice");
}

int NamespaceCmd(Env& e) {
  v1::NamespaceRequest req;
  req.set_name(e.a.name);
  const std::string& op = e.a.op;
  if (op == "list") {
    return e.Out<v1::NamespaceResponse>(
        e.Call(&Stub::NamespaceList, req),
        [](const auto& r) { PrintItems(r.attrs()); });
  }
  FORQ_TRY(attr, e.Arg(0, "ATTR"));
  req.set_attr(attr);
  if (op == "get") {
    return e.Out<v1::NamespaceResponse>(
        e.Call(&Stub::NamespaceGet, req),
        [](const auto& r) { std::cout << r.value() << "\n"; });
  }
  if (op == "set") {
    FORQ_TRY(v, e.Arg(1, "VALUE"));
    req.set_value(v);
    return e.Out<v1::NamespaceResponse>(e.Call(&Stub::NamespaceSet, req),
                                        nullptr);
  }
  if (op == "delete" || op == "del") {
    return e.Out<v1::NamespaceResponse>(e.Call(&Stub::NamespaceDelete, req),
                                        nullptr);
  }
  return Fail("namespace ops: get set delete list");
}

int QueueCmd(Env& e) {
  v1::QueueRequest req;
  req.set_name(e.a.name);
  req.set_maxsize(e.a.maxsize);
  e.SetTimeout(req);
  const std::string& op = e.a.op;
  if (op == "put") {
    FORQ_TRY(v, e.Arg(0, "ITEM"));
    req.set_value(ReadPayload(v));
    return e.Out<v1::QueueResponse>(e.Call(&Stub::QueuePut, req, true),
                                    nullptr);
  }
  if (op == "get") {
    return e.Out<v1::QueueResponse>(
        e.Call(&Stub::QueueGet, req, true),
        [](const auto& r) { std::cout << r.value() << "\n"; });
  }
  if (op == "qsize" || op == "size" || op == "empty" || op == "full") {
    return e.Out<v1::QueueResponse>(
        e.Call(&Stub::QueueSize, req), [op](const auto& r) {
          if (op == "empty") {
            std::cout << (r.empty() ? "true" : "false") << "\n";
          } else if (op == "full") {
            std::cout << (r.full() ? "true" : "false") << "\n";
          } else {
            std::cout << r.size() << "\n";
          }
        });
  }
  if (op == "task_done") {
    return e.Out<v1::QueueResponse>(e.Call(&Stub::QueueTaskDone, req), nullptr);
  }
  if (op == "join")
    return e.Out<v1::QueueResponse>(e.Call(&Stub::QueueJoin, req, true),
                                    nullptr);
  return Fail("queue ops: put get qsize empty full task_done join");
}

int PipeCmd(Env& e) {
  v1::PipeRequest req;
  req.set_name(e.a.name);
  req.set_end(e.a.end);
  req.set_one_way(e.a.one_way);
  e.SetTimeout(req);
  const std::string& op = e.a.op;
  if (op == "send") {
    FORQ_TRY(v, e.Arg(0, "MESSAGE"));
    req.set_value(ReadPayload(v));
    return e.Out<v1::PipeResponse>(e.Call(&Stub::PipeSend, req), nullptr);
  }
  if (op == "recv") {
    return e.Out<v1::PipeResponse>(
        e.Call(&Stub::PipeRecv, req, true),
        [](const auto& r) { std::cout << r.value() << "\n"; });
  }
  if (op == "poll") {
    return e.Out<v1::PipeResponse>(
        e.Call(&Stub::PipePoll, req), [](const auto& r) {
          std::cout << (r.readable() ? "true" : "false") << "\n";
        });
  }
  return Fail("pipe ops (--end 0|1): send recv poll");
}

int LockCmd(Env& e, bool reentrant) {
  v1::LockRequest req;
  req.set_name(e.a.name);
  req.set_owner(e.a.owner);
  e.SetTimeout(req);
  const std::string& op = e.a.op;
  if (op == "acquire") {
    FORQ_TRY(session, e.SessionForAcquire());
    req.set_session(session);
    auto r =
        e.Call(reentrant ? &Stub::RLockAcquire : &Stub::LockAcquire, req, true);
    if (r.ok() && !r->acquired()) {
      std::cerr << "forq: lock '" << e.a.name << "' not acquired in time\n";
      if (e.a.session.empty()) {
        // Do not leave an empty session behind until its TTL.
        v1::CloseSessionRequest close;
        close.set_session(session);
        (void)e.Call(&Stub::CloseSession, close);
      }
      if (e.ctx.json) PrintJson(*r);
      return kExitTaskFailed;
    }
    return e.Out<v1::LockResponse>(r, [&session](const auto& resp) {
      std::cout << "session=" << session << " token=" << resp.fencing_token()
                << "\n";
    });
  }
  if (op == "release") {
    FORQ_TRY(session, e.NeedSession());
    req.set_session(session);
    return e.Out<v1::LockResponse>(
        e.Call(reentrant ? &Stub::RLockRelease : &Stub::LockRelease, req),
        nullptr);
  }
  return Fail(
      "lock ops: acquire [--timeout S] [--session ID] [--session-ttl S], "
      "release --session ID");
}

int SemaphoreCmd(Env& e, bool bounded) {
  v1::SemaphoreRequest req;
  req.set_name(e.a.name);
  if (e.a.value >= 0) req.set_value(e.a.value);
  e.SetTimeout(req);
  const std::string& op = e.a.op;
  auto print_value = [](const v1::SemaphoreResponse& r) {
    std::cout << r.value() << "\n";
  };
  if (op == "acquire") {
    FORQ_TRY(session, e.SessionForAcquire());
    req.set_session(session);
    auto r = e.Call(
        bounded ? &Stub::BoundedSemaphoreAcquire : &Stub::SemaphoreAcquire, req,
        true);
    if (r.ok() && !r->acquired()) {
      std::cerr << "forq: no permit of '" << e.a.name << "' in time\n";
      return kExitTaskFailed;
    }
    return e.Out<v1::SemaphoreResponse>(r, [&session](const auto& resp) {
      std::cout << "session=" << session << " value=" << resp.value() << "\n";
    });
  }
  if (op == "release") {
    req.set_session(e.a.session);
    return e.Out<v1::SemaphoreResponse>(
        e.Call(
            bounded ? &Stub::BoundedSemaphoreRelease : &Stub::SemaphoreRelease,
            req),
        print_value);
  }
  if (op == "value") {
    return e.Out<v1::SemaphoreResponse>(
        e.Call(bounded ? &Stub::BoundedSemaphoreValue : &Stub::SemaphoreValue,
               req),
        print_value);
  }
  return Fail("semaphore ops: acquire release value (--value N creates)");
}

int ConditionCmd(Env& e) {
  v1::ConditionRequest req;
  req.set_name(e.a.name);
  req.set_owner(e.a.owner);
  e.SetTimeout(req);
  const std::string& op = e.a.op;
  if (op == "acquire") {
    FORQ_TRY(session, e.SessionForAcquire());
    req.set_session(session);
    auto r = e.Call(&Stub::ConditionAcquire, req, true);
    if (r.ok() && !r->acquired()) return kExitTaskFailed;
    return e.Out<v1::ConditionResponse>(r, [&session](const auto& resp) {
      std::cout << "session=" << session << " token=" << resp.fencing_token()
                << "\n";
    });
  }
  FORQ_TRY(session, e.NeedSession());
  req.set_session(session);
  if (op == "release") {
    return e.Out<v1::ConditionResponse>(e.Call(&Stub::ConditionRelease, req),
                                        nullptr);
  }
  if (op == "wait") {
    auto r = e.Call(&Stub::ConditionWait, req, true);
    if (r.ok() && !r->notified()) return kExitTaskFailed;
    return e.Out<v1::ConditionResponse>(r, nullptr);
  }
  if (op == "notify" || op == "notify_all") {
    if (!e.a.args.empty()) {
      FORQ_TRY(n, e.IntArg(0, "N"));
      req.set_n(static_cast<int32_t>(n));
    }
    return e.Out<v1::ConditionResponse>(
        e.Call(
            op == "notify" ? &Stub::ConditionNotify : &Stub::ConditionNotifyAll,
            req),
        [](const auto& r) { std::cout << r.woken() << "\n"; });
  }
  return Fail("condition ops: acquire release wait notify notify_all");
}

int EventCmd(Env& e) {
  v1::EventRequest req;
  req.set_name(e.a.name);
  e.SetTimeout(req);
  auto print = [](const v1::EventResponse& r) {
    std::cout << (r.is_set() ? "true" : "false") << "\n";
  };
  const std::string& op = e.a.op;
  if (op == "set")
    return e.Out<v1::EventResponse>(e.Call(&Stub::EventSet, req), nullptr);
  if (op == "clear")
    return e.Out<v1::EventResponse>(e.Call(&Stub::EventClear, req), nullptr);
  if (op == "is_set")
    return e.Out<v1::EventResponse>(e.Call(&Stub::EventIsSet, req), print);
  if (op == "wait") {
    auto r = e.Call(&Stub::EventWait, req, true);
    if (r.ok() && !r->is_set()) {
      std::cerr << "forq: event '" << e.a.name << "' not set in time\n";
      return kExitTaskFailed;
    }
    return e.Out<v1::EventResponse>(r, print);
  }
  return Fail("event ops: set clear is_set wait");
}

int SessionCmd(Env& e) {
  const std::string& op = e.a.op;
  if (op == "open") {
    e.a.session.clear();
    FORQ_TRY(session, e.SessionForAcquire());
    std::cout << session << "\n";
    return kExitOk;
  }
  if (op == "keepalive") {
    v1::KeepAliveRequest req;
    req.set_session(e.a.name);
    return e.Out<v1::KeepAliveResponse>(e.Call(&Stub::KeepAlive, req), nullptr);
  }
  if (op == "close") {
    v1::CloseSessionRequest req;
    req.set_session(e.a.name);
    return e.Out<v1::CloseSessionResponse>(
        e.Call(&Stub::CloseSession, req), [](const auto& r) {
          std::cout << "released=" << r.released() << "\n";
        });
  }
  return Fail("session ops: open (NAME ignored), keepalive, close");
}

int ObjectsCmd(Env& e) {
  if (e.a.op == "list" || e.a.op == "ls") {
    v1::ListObjectsRequest req;
    req.set_prefix(e.a.name == "-" ? "" : e.a.name);
    return e.Out<v1::ListObjectsResponse>(
        e.Call(&Stub::ListObjects, req), [](const auto& r) {
          for (const auto& o : r.objects()) {
            std::string type = v1::ObjectType_Name(o.type());
            std::cout << o.name() << "\t"
                      << type.substr(sizeof("OBJECT_TYPE_") - 1)
                      << "\tsize=" << o.size() << "\twaiters=" << o.waiters()
                      << "\n";
          }
        });
  }
  if (e.a.op == "delete") {
    v1::DeleteObjectRequest req;
    req.set_name(e.a.name);
    return e.Out<v1::DeleteObjectResponse>(
        e.Call(&Stub::DeleteObject, req), [](const auto& r) {
          std::cout << (r.deleted() ? "true" : "false") << "\n";
        });
  }
  return Fail("objects ops: list (NAME = prefix or -), delete");
}

#undef FORQ_TRY

int RunManager(CliContext& ctx, ManagerArgs& a) {
  absl::StatusOr<Client*> client = ctx.client();
  if (!client.ok()) return Fail(client.status());
  std::unique_ptr<Stub> stub =
      v1::ManagerService::NewStub((*client)->channel());
  Env e{ctx, a, *stub, (*client)->options().rpc_timeout};
  const std::string& t = a.type;
  if (t == "dict") return DictCmd(e);
  if (t == "list") return ListCmd(e);
  if (t == "value") return ValueCmd(e);
  if (t == "array") return ArrayCmd(e);
  if (t == "namespace" || t == "ns") return NamespaceCmd(e);
  if (t == "queue") return QueueCmd(e);
  if (t == "pipe") return PipeCmd(e);
  if (t == "lock") return LockCmd(e, false);
  if (t == "rlock") return LockCmd(e, true);
  if (t == "semaphore") return SemaphoreCmd(e, false);
  if (t == "bounded_semaphore" || t == "bsemaphore")
    return SemaphoreCmd(e, true);
  if (t == "condition") return ConditionCmd(e);
  if (t == "event") return EventCmd(e);
  if (t == "session") return SessionCmd(e);
  if (t == "objects") return ObjectsCmd(e);
  return Fail(absl::StrCat(
      "unknown manager type '", t,
      "' (dict list value array namespace queue pipe lock rlock semaphore "
      "bounded_semaphore condition event session objects)"));
}

}  // namespace

void AddManagerCommands(CLI::App& app, CliContext& ctx) {
  auto args = std::make_shared<ManagerArgs>();
  CLI::App* cmd =
      app.add_subcommand("manager",
                         "Shared objects: forq manager TYPE NAME OP [ARGS...]\n"
                         "  e.g. forq manager dict cfg set k v; forq manager "
                         "queue q get --timeout 5;\n"
                         "       forq manager lock l1 acquire --session-ttl 60 "
                         "(prints session=ID token=N),\n"
                         "       forq manager lock l1 release --session ID");
  cmd->add_option("type", args->type,
                  "dict list value array namespace queue pipe "
                  "lock rlock semaphore bounded_semaphore "
                  "condition event session objects")
      ->required();
  cmd->add_option("name", args->name, "Object name (session id for `session`)")
      ->required();
  cmd->add_option("op", args->op, "Operation, e.g. get set append put acquire")
      ->required();
  cmd->add_option("args", args->args, "Operation arguments");
  cmd->add_option(
      "--timeout", args->timeout,
      "Seconds a blocking op may wait (default: no limit; 0 = try once)");
  cmd->add_option("--session", args->session,
                  "Session that owns locks/permits");
  cmd->add_option("--session-ttl", args->session_ttl,
                  "Lease of the session acquire opens (seconds)")
      ->capture_default_str();
  cmd->add_option("--maxsize", args->maxsize, "Queue bound when it is created");
  cmd->add_option("--length", args->length, "Array length when it is created");
  cmd->add_option("--typecode", args->typecode, "Array element type: i or d");
  cmd->add_option("--value", args->value, "Semaphore start value when created");
  cmd->add_option("--end", args->end, "Pipe end: 0 or 1");
  cmd->add_flag("--one-way", args->one_way, "Create the pipe one-way");
  cmd->add_option("--owner", args->owner,
                  "RLock/Condition owner within the session")
      ->capture_default_str();
  AddJsonFlag(cmd, ctx);
  cmd->callback([&ctx, args] { ctx.exit_code = RunManager(ctx, *args); });
}

}  // namespace forq::cli
