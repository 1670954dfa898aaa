// `forq manager TYPE NAME OP [ARGS...]`: one Manager operation per process.
// The types, ops, their positional ARGS and what is printed come from the
// operation table (api/forq/v1/manager_ops.h); see docs/manager.md.
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

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "google/protobuf/util/time_util.h"
#include <grpcpp/grpcpp.h>

#include "api/forq/v1/manager_ops.h"
#include "client/cli/cli.h"
#include "common/status_macros.h"
#include "forq/manager.h"
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
  bool reverse = false;
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

// `lhs` names the variable it declares, which parentheses would break.
// NOLINTBEGIN(bugprone-macro-parentheses)
#define FORQ_TRY(lhs, expr)                           \
  auto lhs##_or = (expr);                             \
  if (!lhs##_or.ok()) return Fail(lhs##_or.status()); \
  auto lhs = *lhs##_or
// NOLINTEND(bugprone-macro-parentheses)

// Op names the CLI accepts besides the table's own ("" type = any type).
struct Alias {
  const char* type;
  const char* alias;
  const char* op;
};
constexpr Alias kAliases[] = {
    {"", "del", "delete"},      {"", "cas", "compare_and_set"},
    {"", "all", "slice"},       {"dict", "setdefault", "set_if_absent"},
    {"queue", "qsize", "size"}, {"queue", "empty", "size"},
    {"queue", "full", "size"},  {"namespace", "list", "items"},
};

std::string CanonicalType(const std::string& t) {
  if (t == "ns") return "namespace";
  if (t == "bsemaphore") return "bounded_semaphore";
  return t;
}

std::string OpsOf(v1::ManagerType type) {
  std::vector<std::string> ops;
  for (const v1::ManagerOpSpec& s : v1::kManagerOps) {
    if (s.type == type) ops.emplace_back(v1::ManagerOpName(s.op));
  }
  return absl::StrJoin(ops, " ");
}

// Fills `c` from the positional arguments as the row's CLI ARGS say.
absl::Status ParseArgs(const v1::ManagerOpSpec& spec, const ManagerArgs& a,
                       v1::ManagerCall& c) {
  size_t i = 0;
  auto int_arg = [&](absl::string_view what, int64_t* v) -> absl::Status {
    if (!absl::SimpleAtoi(a.args[i], v)) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " must be an integer, got '", a.args[i], "'"));
    }
    return absl::OkStatus();
  };
  for (absl::string_view tok :
       absl::StrSplit(spec.cli_args, ' ', absl::SkipEmpty())) {
    const bool optional = absl::ConsumePrefix(&tok, "[");
    if (optional) absl::ConsumeSuffix(&tok, "]");
    if (tok == "VALUES...") {
      for (; i < a.args.size(); ++i) c.add_values(a.args[i]);
      continue;
    }
    if (tok == "KEY=VALUE...") {
      for (; i < a.args.size(); ++i) {
        const size_t eq = a.args[i].find('=');
        if (eq == std::string::npos) {
          return absl::InvalidArgumentError(
              absl::StrCat(a.op, " takes KEY=VALUE arguments"));
        }
        v1::KeyValue* kv = c.add_items();
        kv->set_key(a.args[i].substr(0, eq));
        kv->set_value(a.args[i].substr(eq + 1));
      }
      continue;
    }
    if (i >= a.args.size()) {
      if (optional) break;
      return absl::InvalidArgumentError(absl::StrCat(
          a.type, " ", a.op, " needs ", spec.cli_args, " (missing ", tok, ")"));
    }
    int64_t n = 0;
    if (tok == "KEY" || tok == "ATTR") {
      c.set_key(a.args[i]);
    } else if (tok == "VALUE" || tok == "ITEM" || tok == "MESSAGE") {
      c.set_value(ReadPayload(a.args[i]));
    } else if (tok == "EXPECTED") {
      if (a.args[i] == "-" && spec.type == v1::ManagerType::kDict) {
        c.set_expect_absent(true);
      } else {
        c.set_expected(a.args[i]);
      }
    } else if (tok == "DELTA") {
      c.set_delta(a.args[i]);
    } else {
      FORQ_RETURN_IF_ERROR(int_arg(tok, &n));
      if (tok == "INDEX") {
        c.set_index(n);
      } else if (tok == "START") {
        c.set_start(n);
      } else if (tok == "STOP") {
        c.set_stop(n);
      } else if (tok == "N") {
        c.set_n(static_cast<int32_t>(n));
      }
    }
    ++i;
  }
  if (i < a.args.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(a.type, " ", a.op, " takes ", spec.cli_args,
                     "; extra argument '", a.args[i], "'"));
  }
  return absl::OkStatus();
}

// Runs one row of the operation table through ManagerService.Call.
int TableCmd(Env& e, v1::ManagerType type) {
  const ManagerArgs& a = e.a;
  std::string op_name = a.op;
  for (const Alias& al : kAliases) {
    if ((al.type[0] == '\0' || a.type == al.type) && a.op == al.alias) {
      op_name = al.op;
    }
  }
  v1::ManagerOp op{};
  const v1::ManagerOpSpec* spec =
      v1::ParseManagerOp(op_name, &op) ? v1::FindManagerOp(type, op) : nullptr;
  if (spec == nullptr) {
    return Fail(absl::StrCat(a.type, " ops: ", OpsOf(type)));
  }
  v1::ManagerCall c =
      Manager::MakeCall(static_cast<v1::ObjectType>(type), op_name, a.name);
  if (absl::Status s = ParseArgs(*spec, a, c); !s.ok()) return Fail(s);
  c.set_maxsize(a.maxsize);
  c.set_length(a.length);
  c.set_typecode(a.typecode);
  if (a.value >= 0) c.set_initial(a.value);
  c.set_end(a.end);
  c.set_one_way(a.one_way);
  c.set_reverse(a.reverse);
  if (type == v1::ManagerType::kRLock || type == v1::ManagerType::kLock ||
      type == v1::ManagerType::kCondition) {
    c.set_owner(a.owner);
  }
  if (spec->blocks()) e.SetTimeout(c);
  // Session-owned ops: acquire opens a session that outlives this process
  // unless --session names one; the others need --session.
  bool opened = false;
  if (type == v1::ManagerType::kSession) {
    if (op == v1::ManagerOp::kOpen) {
      *c.mutable_ttl() =
          google::protobuf::util::TimeUtil::MillisecondsToDuration(
              static_cast<int64_t>(a.session_ttl * 1000));
      c.set_key("forq cli");
    } else {
      c.set_session(a.name);
    }
  } else if (spec->needs_session() && op == v1::ManagerOp::kAcquire) {
    opened = a.session.empty();
    FORQ_TRY(session, e.SessionForAcquire());
    c.set_session(session);
  } else if (spec->needs_session()) {
    FORQ_TRY(session, e.NeedSession());
    c.set_session(session);
  } else {
    c.set_session(a.session);
  }
  absl::StatusOr<v1::ManagerResult> r = e.Call(&Stub::Call, c, spec->blocks());
  const bool said_no = r.ok() && !r->flag() &&
                       (spec->out == v1::ManagerOut::kGrant ||
                        spec->out == v1::ManagerOut::kPermit ||
                        spec->out == v1::ManagerOut::kFlagOrFail);
  if (said_no) {
    std::cerr << "forq: " << a.type << " '" << a.name << "' " << op_name
              << " timed out\n";
    if (opened) {
      // Do not leave an empty session behind until its TTL.
      v1::CloseSessionRequest close;
      close.set_session(c.session());
      (void)e.Call(&Stub::CloseSession, close);
    }
    if (e.ctx.json) PrintJson(*r);
    return kExitTaskFailed;
  }
  return e.Out<v1::ManagerResult>(r, [&](const v1::ManagerResult& res) {
    switch (spec->out) {
      case v1::ManagerOut::kNone:
        break;
      case v1::ManagerOut::kValue:
      case v1::ManagerOut::kSession:
        std::cout << res.value() << "\n";
        break;
      case v1::ManagerOut::kFound:
        std::cout << (res.found() ? "true" : "false") << "\n";
        break;
      case v1::ManagerOut::kLength:
        if (a.op == "empty" || a.op == "full") {
          const bool b = a.op == "empty" ? res.found() : res.flag();
          std::cout << (b ? "true" : "false") << "\n";
        } else {
          std::cout << res.length() << "\n";
        }
        break;
      case v1::ManagerOut::kLines:
        PrintLines({res.values().begin(), res.values().end()});
        break;
      case v1::ManagerOut::kWords:
        std::cout << absl::StrJoin(res.values(), " ") << "\n";
        break;
      case v1::ManagerOut::kItems:
        for (const auto& kv : res.items()) {
          std::cout << kv.key() << "=" << kv.value() << "\n";
        }
        break;
      case v1::ManagerOut::kFlag:
      case v1::ManagerOut::kFlagOrFail:
        std::cout << (res.flag() ? "true" : "false") << "\n";
        break;
      case v1::ManagerOut::kCount:
        if (type == v1::ManagerType::kSession) std::cout << "released=";
        std::cout << res.count() << "\n";
        break;
      case v1::ManagerOut::kGrant:
        std::cout << "session=" << c.session() << " token=" << res.token()
                  << "\n";
        break;
      case v1::ManagerOut::kPermit:
        std::cout << "session=" << c.session() << " value=" << res.length()
                  << "\n";
        break;
    }
  });
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
  if (!client.ok()) return FailConnect(client.status());
  std::unique_ptr<Stub> stub =
      v1::ManagerService::NewStub((*client)->channel());
  Env e{ctx, a, *stub, (*client)->options().rpc_timeout};
  a.type = CanonicalType(a.type);
  if (a.type == "objects") return ObjectsCmd(e);
  v1::ManagerType type{};
  if (v1::ParseManagerType(a.type, &type)) return TableCmd(e, type);
  return Fail(absl::StrCat(
      "unknown manager type '", a.type,
      "' (dict list value array namespace queue pipe lock rlock semaphore "
      "bounded_semaphore condition event barrier session objects)"));
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
                  "condition event barrier session objects")
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
  cmd->add_option("--length", args->length,
                  "Array length / barrier parties when it is created");
  cmd->add_option("--typecode", args->typecode, "Array element type: i or d");
  cmd->add_option("--value", args->value, "Semaphore start value when created");
  cmd->add_option("--end", args->end, "Pipe end: 0 or 1");
  cmd->add_flag("--one-way", args->one_way, "Create the pipe one-way");
  cmd->add_flag("--reverse", args->reverse, "List sort: descending");
  cmd->add_option("--owner", args->owner,
                  "RLock/Condition owner within the session")
      ->capture_default_str();
  AddJsonFlag(cmd, ctx);
  cmd->callback([&ctx, args] { ctx.exit_code = RunManager(ctx, *args); });
}

}  // namespace forq::cli
