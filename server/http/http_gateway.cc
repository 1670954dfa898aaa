#include "server/http/http_gateway.h"

#include <sys/socket.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <deque>
#include <map>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "boost/asio/dispatch.hpp"
#include "boost/asio/executor_work_guard.hpp"
#include "boost/asio/io_context.hpp"
#include "boost/asio/ip/tcp.hpp"
#include "boost/asio/post.hpp"
#include "boost/asio/ssl.hpp"
#include "boost/asio/steady_timer.hpp"
#include "boost/asio/strand.hpp"
#include "boost/beast/core.hpp"
#include "boost/beast/http.hpp"
#include "boost/beast/ssl.hpp"
#include "grpcpp/create_channel.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "spdlog/spdlog.h"

#include "common/mutex.h"
#include "server/auth/tls_material.h"
#include "server/auth/token_auth.h"
#include "server/http/forwarded_call.h"
#include "server/http/http_errors.h"
#include "server/http/json_transcoder.h"
#include "server/http/openapi.h"
#include "server/http/route_table.h"

namespace forq::server {
namespace {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;
using Clock = std::chrono::steady_clock;

constexpr auto kWriteTimeout = std::chrono::seconds(60);
constexpr auto kHandshakeTimeout = std::chrono::seconds(10);
constexpr size_t kHeaderLimit = size_t{16} * 1024;
// Task ids, object names and keys are short; a longer one is a mistake, and
// its echo in an error message would not fit gRPC's metadata limit.
constexpr size_t kMaxPathVariableBytes = 1024;
constexpr absl::string_view kJson = "application/json";
constexpr absl::string_view kNdjson = "application/x-ndjson";
constexpr absl::string_view kMetricsType =
    "text/plain; version=0.0.4; charset=utf-8";

using Headers = std::vector<std::pair<std::string, std::string>>;

std::string Reason(int status) {
  if (status == 499) return "Client Closed Request";
  beast::string_view r = http::obsolete_reason(http::int_to_status(status));
  return std::string(r.data(), r.size());
}

std::string Head(int status, absl::string_view content_type,
                 const Headers& extra, bool keep_alive) {
  std::string h =
      absl::StrCat("HTTP/1.1 ", status, " ", Reason(status),
                   "\r\nServer: forqd\r\nContent-Type: ", content_type, "\r\n");
  for (const auto& [k, v] : extra) absl::StrAppend(&h, k, ": ", v, "\r\n");
  absl::StrAppend(&h, "Connection: ", keep_alive ? "keep-alive" : "close",
                  "\r\n");
  return h;
}

std::string Chunk(absl::string_view data) {
  char size[32];
  std::snprintf(size, sizeof(size), "%zx\r\n", data.size());
  return absl::StrCat(size, data, "\r\n");
}

bool ParseBuffer(const grpc::ByteBuffer& buf, google::protobuf::Message* m) {
  std::vector<grpc::Slice> slices;
  if (!buf.Dump(&slices).ok()) return false;
  std::string bytes;
  for (const grpc::Slice& s : slices) {
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return m->ParseFromString(bytes);
}

absl::StatusOr<tcp::endpoint> ParseListen(const std::string& listen) {
  const size_t colon = listen.rfind(':');
  int port = -1;
  if (colon == std::string::npos ||
      !absl::SimpleAtoi(listen.substr(colon + 1), &port) || port < 0 ||
      port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("listen address '", listen, "' is not host:port"));
  }
  std::string host = listen.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (host.empty()) host = "0.0.0.0";
  beast::error_code ec;
  net::ip::address addr = net::ip::make_address(host, ec);
  if (ec) {
    net::io_context resolver_ctx;
    tcp::resolver resolver(resolver_ctx);
    auto results = resolver.resolve(host, std::to_string(port), ec);
    if (ec || results.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "cannot resolve listen host '", host, "': ", ec.message()));
    }
    return results.begin()->endpoint();
  }
  return tcp::endpoint(addr, static_cast<uint16_t>(port));
}

}  // namespace

// What the gateway needs of a connection, whatever its transport.
class SessionBase {
 public:
  virtual ~SessionBase() = default;
  // The client's address, for per-client limits.
  std::string peer;
  // Closes the connection and cancels the current call. Runs on the strand.
  virtual void Abort() = 0;
  virtual net::any_io_executor executor() = 0;
};

template <class Stream>
class Session;

namespace http_internal {

class GatewayImpl {
 public:
  explicit GatewayImpl(HttpGatewayOptions options)
      : options_(std::move(options)) {}

  absl::StatusOr<int> Start();
  void Stop();

  const HttpGatewayOptions& options() const { return options_; }
  const RouteTable& routes() const { return *routes_; }
  const std::string& openapi() const { return openapi_; }
  grpc::GenericStub* stub() { return stub_.get(); }
  CallTracker* tracker() { return &tracker_; }
  bool stopping() const { return stopping_.load(std::memory_order_acquire); }

  void RecordHttp(const std::string& label, int status, Clock::time_point t0) {
    if (options_.metrics == nullptr) return;
    const double secs =
        std::chrono::duration<double>(Clock::now() - t0).count();
    options_.metrics->HttpHandled(label, std::to_string(status), secs);
  }

  void Unregister(SessionBase* s) ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(&mu_);
    if (sessions_.erase(s) == 0) return;
    auto it = per_client_.find(s->peer);
    if (it != per_client_.end() && --it->second == 0) per_client_.erase(it);
  }

 private:
  void Accept();

  const HttpGatewayOptions options_;
  std::unique_ptr<RouteTable> routes_;
  std::string openapi_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<grpc::GenericStub> stub_;
  CallTracker tracker_;
  std::atomic<bool> stopping_{false};

  Mutex mu_;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  std::map<SessionBase*, std::weak_ptr<SessionBase>> sessions_
      ABSL_GUARDED_BY(mu_);
  std::map<std::string, size_t> per_client_ ABSL_GUARDED_BY(mu_);
  Clock::time_point last_refusal_log_ ABSL_GUARDED_BY(mu_);
  // TLS: the context new connections use, rebuilt when the certificate
  // files were reloaded.
  std::shared_ptr<net::ssl::context> ssl_ctx_ ABSL_GUARDED_BY(mu_);
  uint64_t ssl_generation_ ABSL_GUARDED_BY(mu_) = 0;

  // Declared last and reset explicitly in Stop(): destroying the io_context
  // destroys pending handlers and with them sessions, which unregister
  // through mu_ above.
  std::unique_ptr<net::io_context> ioc_;
  std::optional<net::executor_work_guard<net::io_context::executor_type>> work_;
  std::unique_ptr<tcp::acceptor> acceptor_;
  std::unique_ptr<net::steady_timer> accept_retry_;
  std::vector<std::thread> threads_;

  template <class Stream>
  friend class ::forq::server::Session;

 public:
  // The TLS context for a new connection; null on error (logged).
  std::shared_ptr<net::ssl::context> SslContext() ABSL_LOCKS_EXCLUDED(mu_);
  void Register(std::shared_ptr<SessionBase> session) ABSL_LOCKS_EXCLUDED(mu_);
  // Why a new connection from `peer` must be refused; empty if it may stay.
  std::string Refusal(const std::string& peer) ABSL_LOCKS_EXCLUDED(mu_);
};

}  // namespace http_internal

// One HTTP/1.1 connection. All of its state is confined to its strand; gRPC
// callbacks reach it only through net::post. Owned by shared_ptr because
// Asio handlers and in-flight gRPC calls each keep it alive (the Beast
// idiom); the cycle with the call ends when the call's on_done runs, which
// GatewayImpl::Stop() waits for. Nothing the session stores in itself (the
// write queue's continuations) may own it: when Stop() abandons a pending
// handler, destroying that handler must be enough to free the session.
// Stream is beast::tcp_stream (plain HTTP) or beast::ssl_stream of one.
template <class Stream>
class Session final : public SessionBase,
                      public std::enable_shared_from_this<Session<Stream>> {
 public:
  static constexpr bool kTls = !std::is_same_v<Stream, beast::tcp_stream>;

  template <class... Args>
  Session(http_internal::GatewayImpl* gw,
          std::shared_ptr<net::ssl::context> ssl_ctx, Args&&... args)
      : gw_(gw),
        ssl_ctx_(std::move(ssl_ctx)),
        stream_(std::forward<Args>(args)...) {}
  ~Session() override { gw_->Unregister(this); }

  void Run() {
    net::dispatch(stream_.get_executor(), [self = this->shared_from_this()] {
      if constexpr (kTls) {
        self->Handshake();
      } else {
        self->ReadRequest();
      }
    });
  }

  void Abort() override {
    closed_ = true;
    if (call_) call_->Cancel();
    beast::error_code ec;
    Lowest().socket().shutdown(tcp::socket::shutdown_both, ec);
    Lowest().close();
  }

  net::any_io_executor executor() override { return stream_.get_executor(); }

 private:
  using std::enable_shared_from_this<Session<Stream>>::shared_from_this;

  beast::tcp_stream& Lowest() { return beast::get_lowest_layer(stream_); }

  void Handshake() {
    Lowest().expires_after(kHandshakeTimeout);
    if constexpr (kTls) {
      stream_.async_handshake(
          net::ssl::stream_base::server,
          [self = shared_from_this()](beast::error_code ec) {
            if (ec) {
              spdlog::debug("http: TLS handshake failed: {}", ec.message());
              return self->Close();
            }
            self->ReadRequest();
          });
    }
  }

  // ---- reading a request ----
  void ReadRequest() {
    if (closed_) return;
    parser_.emplace();
    parser_->header_limit(kHeaderLimit);
    parser_->body_limit(gw_->options().max_body_bytes);
    Lowest().expires_after(
        absl::ToChronoMilliseconds(gw_->options().idle_timeout));
    http::async_read_header(
        stream_, buffer_, *parser_,
        [self = shared_from_this()](beast::error_code ec, size_t) {
          self->OnHeader(ec);
        });
  }

  void OnHeader(beast::error_code ec) {
    t0_ = Clock::now();
    label_ = "malformed";
    if (ec) return OnReadError(ec);
    const auto& req = parser_->get();
    if (!Authorized()) return;
    if (!parser_->is_done() &&
        beast::iequals(req[http::field::expect], "100-continue")) {
      // curl sends this for bodies over 1 KiB and would otherwise stall.
      continue_ = "HTTP/1.1 100 Continue\r\n\r\n";
      Lowest().expires_after(kWriteTimeout);
      net::async_write(
          stream_, net::buffer(continue_),
          [self = shared_from_this()](beast::error_code ec, size_t) {
            if (ec) return self->Close();
            self->ReadBody();
          });
      return;
    }
    ReadBody();
  }

  // With tokens configured: answers 401/403 and returns false unless the
  // request's token allows its route. Runs before the body is read, so an
  // unauthenticated client cannot make forqd parse anything.
  bool Authorized() {
    const TokenTable* tokens = gw_->options().tokens;
    if (tokens == nullptr) return true;
    const auto& req = parser_->get();
    const absl::string_view target(req.target().data(), req.target().size());
    const absl::string_view path = target.substr(0, target.find('?'));
    const absl::string_view method(req.method_string().data(),
                                   req.method_string().size());
    Role required = Role::kNone;
    std::string what;
    if (path == "/metrics") {
      if (gw_->options().metrics_need_token) required = Role::kRead;
      what = "/metrics";
    } else if (path != "/healthz" && path != "/readyz" &&
               path != "/openapi.yaml") {
      const RouteMatch match = gw_->routes().Match(method, path);
      // Unknown routes get their 404/405 from Handle(); a token is still
      // needed to learn which routes exist.
      required = match.kind == RouteMatch::Kind::kFound
                     ? RequiredRole(match.route->grpc_method)
                     : Role::kRead;
      what = match.kind == RouteMatch::Kind::kFound
                 ? match.route->grpc_method.substr(1)
                 : std::string(path.substr(0, 200));
    }
    const auto header = req[http::field::authorization];
    authorization_.assign(header.data(), header.size());
    const absl::Status s = tokens->Authorize(authorization_, required, what);
    if (s.ok()) return true;
    label_ = "unauthorized";
    keep_alive_ = false;  // the body, if any, stays unread
    const bool unauthenticated = s.code() == absl::StatusCode::kUnauthenticated;
    Headers extra;
    if (unauthenticated) extra.emplace_back("WWW-Authenticate", "Bearer");
    RespondError(unauthenticated ? 401 : 403,
                 MakeHttpError(s.code(), s.message()), std::move(extra));
    return false;
  }

  void ReadBody() {
    Lowest().expires_after(
        absl::ToChronoMilliseconds(gw_->options().idle_timeout));
    http::async_read(stream_, buffer_, *parser_,
                     [self = shared_from_this()](beast::error_code ec, size_t) {
                       if (ec) return self->OnReadError(ec);
                       self->Handle();
                     });
  }

  void OnReadError(beast::error_code ec) {
    if (ec == http::error::end_of_stream || ec == net::error::eof ||
        ec == net::error::connection_reset ||
        ec == net::error::operation_aborted || ec == beast::error::timeout ||
        closed_) {
      return Close();
    }
    keep_alive_ = false;
    if (ec == http::error::body_limit) {
      return RespondError(
          413,
          MakeHttpError(absl::StatusCode::kResourceExhausted,
                        absl::StrCat("request body exceeds the limit of ",
                                     gw_->options().max_body_bytes, " bytes")));
    }
    if (ec == http::error::header_limit) {
      return RespondError(431,
                          MakeHttpError(absl::StatusCode::kInvalidArgument,
                                        absl::StrCat("request headers exceed ",
                                                     kHeaderLimit, " bytes")));
    }
    RespondError(400, MakeHttpError(absl::StatusCode::kInvalidArgument,
                                    absl::StrCat("malformed HTTP request: ",
                                                 ec.message())));
  }

  // ---- dispatch ----
  void Handle() {
    ++seq_;
    const auto& req = parser_->get();
    keep_alive_ = req.keep_alive();
    http10_ = req.version() < 11;
    Lowest().expires_never();
    const absl::string_view target(req.target().data(), req.target().size());
    const absl::string_view method(req.method_string().data(),
                                   req.method_string().size());
    const size_t q = target.find('?');
    const absl::string_view path = target.substr(0, q);
    const absl::string_view query =
        q == absl::string_view::npos ? "" : target.substr(q + 1);

    if (path == "/metrics" || path == "/healthz" || path == "/readyz" ||
        path == "/openapi.yaml") {
      return HandleBuiltin(method, path);
    }
    label_ = "unmatched";
    const RouteMatch match = gw_->routes().Match(method, path);
    if (match.kind == RouteMatch::Kind::kNoRoute) {
      return RespondError(
          404, MakeHttpError(absl::StatusCode::kNotFound,
                             absl::StrCat("no route for ", method, " ",
                                          path.substr(0, 200),
                                          "; routes are listed in "
                                          "docs/api.md")));
    }
    if (match.kind == RouteMatch::Kind::kWrongMethod) {
      return RespondError(
          405,
          MakeHttpError(absl::StatusCode::kUnimplemented,
                        absl::StrCat(path.substr(0, 200), " accepts ",
                                     match.allow, ", not ", method)),
          {{"Allow", match.allow}});
    }
    route_ = match.route;
    label_ = route_->label();
    for (const auto& [var, value] : match.bindings) {
      if (value.size() > kMaxPathVariableBytes) {
        return RespondError(
            400,
            MakeHttpError(
                absl::StatusCode::kInvalidArgument,
                absl::StrCat("path variable '", var, "' is ", value.size(),
                             " bytes; the limit is ", kMaxPathVariableBytes)));
      }
    }

    auto params = ParseQuery(query);
    if (!params.ok()) return RespondStatus(params.status());
    const auto text_header = req[kTextHeader.data()];
    auto text = TextModeRequested(
        route_, *params,
        absl::string_view(text_header.data(), text_header.size()));
    if (!text.ok()) return RespondStatus(text.status());
    render_.text = *text;

    auto requests =
        BuildRequests(*route_, match.bindings, *params, parser_->get().body());
    if (!requests.ok()) return RespondStatus(requests.status());
    std::vector<grpc::ByteBuffer> buffers;
    for (const auto& m : *requests) {
      grpc::Slice slice(m->SerializeAsString());
      buffers.emplace_back(&slice, 1);
    }
    parser_.reset();  // the body is no longer needed
    Forward(std::move(buffers));
  }

  void HandleBuiltin(absl::string_view method, absl::string_view path) {
    label_ = absl::StrCat("GET ", path);
    if (method != "GET") {
      return RespondError(
          405,
          MakeHttpError(absl::StatusCode::kUnimplemented,
                        absl::StrCat(path, " accepts GET, not ", method)),
          {{"Allow", "GET"}});
    }
    if (path == "/healthz") return Respond(200, kJson, "{\"status\":\"ok\"}");
    if (path == "/openapi.yaml") {
      return Respond(200, "application/yaml", gw_->openapi());
    }
    if (path == "/metrics") {
      if (gw_->options().metrics == nullptr) {
        return RespondError(503, MakeHttpError(absl::StatusCode::kUnavailable,
                                               "metrics are not configured"));
      }
      return Respond(200, kMetricsType, gw_->options().metrics->Scrape());
    }
    if (!gw_->options().readiness) {
      return Respond(200, kJson, "{\"status\":\"ready\",\"ready\":true}");
    }
    const ReadyState s = gw_->options().readiness();
    Respond(
        s.ready ? 200 : 503, kJson,
        absl::StrCat("{\"status\":", s.ready ? "\"ready\"" : "\"not_ready\"",
                     ",\"ready\":", s.ready ? "true" : "false",
                     ",\"store_open\":", s.store_open ? "true" : "false",
                     ",\"live_workers\":", s.live_workers,
                     ",\"draining\":", s.draining ? "true" : "false",
                     ",\"message\":", JsonQuote(s.message), "}"));
  }

  // ---- the gRPC call ----
  void Forward(std::vector<grpc::ByteBuffer> requests) {
    streaming_ = route_->server_streaming();
    headers_sent_ = false;
    have_response_ = false;
    const uint64_t seq = seq_;
    auto self = shared_from_this();
    auto exec = stream_.get_executor();
    ForwardedCall::Handlers h;
    h.on_headers = [self, exec, seq] {
      net::post(exec, [self, seq] { self->OnCallHeaders(seq); });
    };
    h.on_message = [self, exec, seq](const grpc::ByteBuffer& b) {
      net::post(exec, [self, seq, copy = b]() mutable {
        self->OnCallMessage(seq, std::move(copy));
      });
    };
    h.on_done = [self, exec, seq](const grpc::Status& st) {
      net::post(exec, [self, seq, st] { self->OnCallDone(seq, st); });
    };
    call_ =
        ForwardedCall::Start(gw_->stub(), gw_->tracker(), route_->grpc_method,
                             std::move(requests), std::move(h), authorization_);
    if (!call_) {
      keep_alive_ = false;
      return RespondError(503, MakeHttpError(absl::StatusCode::kUnavailable,
                                             "forqd is shutting down"));
    }
    WatchDisconnect(seq);
  }

  // A long poll can outlive its client; watching the socket for EOF lets the
  // gRPC call be cancelled instead of running to its timeout.
  void WatchDisconnect(uint64_t seq) {
    Lowest().socket().async_wait(
        tcp::socket::wait_read,
        [self = shared_from_this(), seq](beast::error_code ec) {
          self->OnReadable(ec, seq);
        });
  }

  void OnReadable(beast::error_code ec, uint64_t seq) {
    if (seq != seq_ || !call_ || closed_) return;
    if (!ec) {
      char c;
      const ssize_t n = ::recv(Lowest().socket().native_handle(), &c, 1,
                               MSG_PEEK | MSG_DONTWAIT);
      // Pipelined bytes of the next request: the client is still there.
      if (n > 0) return;
      if (n < 0 &&
          (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        return WatchDisconnect(seq);
      }
    }
    client_gone_ = true;
    call_->Cancel();
  }

  void OnCallHeaders(uint64_t seq) {
    if (seq != seq_ || !streaming_ || headers_sent_ || closed_) return;
    SendStreamHeaders();
  }

  void SendStreamHeaders() {
    headers_sent_ = true;
    if (http10_) keep_alive_ = false;
    std::string head = Head(200, kNdjson, {}, keep_alive_);
    absl::StrAppend(&head, http10_ ? "" : "Transfer-Encoding: chunked\r\n",
                    "\r\n");
    Enqueue(std::move(head), nullptr);
  }

  void OnCallMessage(uint64_t seq, grpc::ByteBuffer buffer) {
    if (seq != seq_ || !call_) return;
    if (closed_ || client_gone_) {
      call_->Cancel();
      return;
    }
    if (!streaming_) {
      response_.Swap(&buffer);
      have_response_ = true;
      call_->ReadNext();
      return;
    }
    auto json = RenderResponse(buffer);
    if (!json.ok()) {
      spdlog::error("http: {}", json.status().ToString());
      call_->Cancel();
      return;
    }
    if (!headers_sent_) SendStreamHeaders();
    json->push_back('\n');
    Enqueue(http10_ ? *std::move(json) : Chunk(*json), [this, seq] {
      if (seq == seq_ && call_) call_->ReadNext();
    });
  }

  void OnCallDone(uint64_t seq, const grpc::Status& status) {
    if (seq != seq_) return;
    call_.reset();
    if (closed_) return;
    if (client_gone_) {
      gw_->RecordHttp(label_, 499, t0_);
      return Close();
    }
    if (streaming_ && headers_sent_) {
      std::string tail;
      if (!status.ok()) {
        HttpError e = ErrorFor(status);
        std::string line = absl::StrCat("{\"error\":", e.body, "}\n");
        tail = http10_ ? line : Chunk(line);
      }
      if (!http10_) tail += "0\r\n\r\n";
      gw_->RecordHttp(label_, 200, t0_);
      return Enqueue(std::move(tail), [this] { AfterResponse(); });
    }
    if (!status.ok()) {
      HttpError e = ErrorFor(status);
      Headers extra;
      if (e.retry_after_seconds > 0) {
        extra.emplace_back("Retry-After",
                           std::to_string(e.retry_after_seconds));
      }
      return RespondError(e.http_status, e, extra);
    }
    if (streaming_) {
      // The stream ended before any message or header: an empty NDJSON body.
      return Respond(200, kNdjson, "");
    }
    if (!have_response_) {
      return RespondError(500, MakeHttpError(absl::StatusCode::kInternal,
                                             "the RPC returned no message"));
    }
    auto json = RenderResponse(response_);
    response_.Clear();
    if (!json.ok()) return RespondStatus(json.status());
    Respond(200, kJson, *json);
  }

  // gRPC's own errors (e.g. UNIMPLEMENTED for an unregistered service) come
  // without a message; name the RPC so the answer is never blank.
  HttpError ErrorFor(const grpc::Status& status) {
    std::string message = status.error_message();
    if (message.empty()) {
      message = absl::StrCat(
          route_->grpc_method.substr(1), " failed with ",
          CodeName(static_cast<absl::StatusCode>(status.error_code())));
    }
    return MakeHttpErrorFromGrpc(status.error_code(), message,
                                 status.error_details());
  }

  absl::StatusOr<std::string> RenderResponse(const grpc::ByteBuffer& buffer) {
    auto msg = NewMessage(route_->rpc->output_type());
    if (!ParseBuffer(buffer, msg.get())) {
      return absl::InternalError(
          absl::StrCat("cannot parse the ", msg->GetDescriptor()->full_name(),
                       " answered by ", route_->grpc_method));
    }
    return MessageToJson(*msg, render_);
  }

  // ---- writing ----
  void RespondStatus(const absl::Status& s) {
    RespondError(HttpStatusForCode(s.code()),
                 MakeHttpError(s.code(), s.message()));
  }

  void RespondError(int status, const HttpError& e, Headers extra = {}) {
    Respond(status, kJson, e.body, std::move(extra));
  }

  void Respond(int status, absl::string_view content_type,
               absl::string_view body, Headers extra = {}) {
    gw_->RecordHttp(label_, status, t0_);
    extra.emplace_back("Content-Length", std::to_string(body.size()));
    std::string out = Head(status, content_type, extra, keep_alive_);
    absl::StrAppend(&out, "\r\n", body);
    Enqueue(std::move(out), [this] { AfterResponse(); });
  }

  void AfterResponse() {
    route_ = nullptr;
    if (keep_alive_ && !closed_) return ReadRequest();
    Close();
  }

  // `then` runs on the strand once `data` is written, from OnWritten, whose
  // handler owns the session; so `then` captures `this`, never a shared_ptr:
  // out_ is a member, and an owning capture would be a cycle that outlives
  // the write handler when Stop() abandons it.
  void Enqueue(std::string data, std::function<void()> then) {
    if (closed_) return;
    out_.emplace_back(std::move(data), std::move(then));
    if (!writing_) WriteFront();
  }

  void WriteFront() {
    writing_ = true;
    Lowest().expires_after(kWriteTimeout);
    net::async_write(stream_, net::buffer(out_.front().first),
                     [self = shared_from_this()](beast::error_code ec, size_t) {
                       self->OnWritten(ec);
                     });
  }

  void OnWritten(beast::error_code ec) {
    writing_ = false;
    Lowest().expires_never();
    if (ec) {
      out_.clear();
      if (call_) {
        client_gone_ = true;
        call_->Cancel();
      }
      return Close();
    }
    std::function<void()> then = std::move(out_.front().second);
    out_.pop_front();
    if (!out_.empty()) WriteFront();
    if (then) then();
  }

  void Close() {
    if (closed_) return;
    closed_ = true;
    if (call_) call_->Cancel();
    beast::error_code ec;
    Lowest().socket().shutdown(tcp::socket::shutdown_send, ec);
    Lowest().close();
  }

  http_internal::GatewayImpl* const gw_;
  // Outlives stream_, which refers to it (TLS only).
  const std::shared_ptr<net::ssl::context> ssl_ctx_;
  Stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::string continue_;
  std::deque<std::pair<std::string, std::function<void()>>> out_;
  bool writing_ = false;
  bool closed_ = false;

  // The request in progress.
  uint64_t seq_ = 0;
  Clock::time_point t0_;
  std::string label_;
  bool keep_alive_ = true;
  bool http10_ = false;
  std::string authorization_;
  const Route* route_ = nullptr;
  RenderOptions render_;
  std::shared_ptr<ForwardedCall> call_;
  bool streaming_ = false;
  bool headers_sent_ = false;
  bool have_response_ = false;
  bool client_gone_ = false;
  grpc::ByteBuffer response_;
};

absl::StatusOr<int> http_internal::GatewayImpl::Start() {
  {
    MutexLock lock(&mu_);
    if (started_) return absl::FailedPreconditionError("already started");
    started_ = true;
  }
  if (options_.grpc_target.empty()) {
    return absl::InvalidArgumentError("HttpGateway needs grpc_target");
  }
  auto routes = RouteTable::Build(RouteTable::ForqServices());
  if (!routes.ok()) return routes.status();
  routes_ = *std::move(routes);
  openapi_ = GenerateOpenApi(*routes_);
  auto endpoint = ParseListen(options_.listen);
  if (!endpoint.ok()) return endpoint.status();

  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  channel_ = grpc::CreateCustomChannel(
      options_.grpc_target, grpc::InsecureChannelCredentials(), args);
  stub_ = std::make_unique<grpc::GenericStub>(channel_);

  const int threads = std::max(1, options_.threads);
  ioc_ = std::make_unique<net::io_context>(threads);
  acceptor_ = std::make_unique<tcp::acceptor>(net::make_strand(*ioc_));
  accept_retry_ =
      std::make_unique<net::steady_timer>(acceptor_->get_executor());
  beast::error_code ec;
  acceptor_->open(endpoint->protocol(), ec);
  if (!ec) acceptor_->set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) acceptor_->bind(*endpoint, ec);
  if (!ec) acceptor_->listen(net::socket_base::max_listen_connections, ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", options_.listen, ": ", ec.message()));
  }
  const int port = acceptor_->local_endpoint().port();
  work_.emplace(ioc_->get_executor());
  net::dispatch(acceptor_->get_executor(), [this] { Accept(); });
  for (int i = 0; i < threads; ++i) {
    threads_.emplace_back([this] { ioc_->run(); });
  }
  spdlog::info("http: REST gateway on {} -> gRPC {} ({} routes)",
               acceptor_->local_endpoint().address().to_string() + ":" +
                   std::to_string(port),
               options_.grpc_target, routes_->routes().size());
  return port;
}

void http_internal::GatewayImpl::Accept() {
  acceptor_->async_accept(net::make_strand(*ioc_), [this](beast::error_code ec,
                                                          tcp::socket s) {
    if (stopping() || !acceptor_->is_open()) return;
    if (ec) {
      // EMFILE and friends: back off instead of spinning.
      spdlog::warn("http: accept failed: {}", ec.message());
      accept_retry_->expires_after(std::chrono::milliseconds(100));
      accept_retry_->async_wait([this](beast::error_code) {
        if (!stopping()) Accept();
      });
      return;
    }
    beast::error_code ignored;
    s.set_option(tcp::no_delay(true), ignored);
    const auto remote = s.remote_endpoint(ignored);
    const std::string peer = ignored ? "" : remote.address().to_string();
    const std::string refusal = Refusal(peer);
    if (!refusal.empty()) {
      // Best effort, never blocking: a plain-HTTP client learns why.
      if (options_.tls == nullptr) {
        const std::string body =
            MakeHttpError(absl::StatusCode::kResourceExhausted, refusal).body;
        const std::string out =
            absl::StrCat(Head(503, kJson,
                              {{"Retry-After", "1"},
                               {"Content-Length", std::to_string(body.size())}},
                              false),
                         "\r\n", body);
        (void)::send(s.native_handle(), out.data(), out.size(),
                     MSG_DONTWAIT | MSG_NOSIGNAL);
      }
      s.shutdown(tcp::socket::shutdown_both, ignored);
      s.close(ignored);
      return Accept();
    }
    if (options_.tls != nullptr) {
      std::shared_ptr<net::ssl::context> ctx = SslContext();
      if (ctx != nullptr) {
        auto session =
            std::make_shared<Session<beast::ssl_stream<beast::tcp_stream>>>(
                this, ctx, std::move(s), *ctx);
        session->peer = peer;
        Register(session);
        session->Run();
      }
    } else {
      auto session = std::make_shared<Session<beast::tcp_stream>>(this, nullptr,
                                                                  std::move(s));
      session->peer = peer;
      Register(session);
      session->Run();
    }
    Accept();
  });
}

void http_internal::GatewayImpl::Register(std::shared_ptr<SessionBase> s) {
  // Checked under mu_ so Stop() either sees this session or this handler
  // sees stopped_ (then the session dies with the last handler).
  MutexLock lock(&mu_);
  if (stopped_) {
    net::post(s->executor(), [s] { s->Abort(); });
    return;
  }
  if (sessions_.emplace(s.get(), s).second) ++per_client_[s->peer];
}

std::string http_internal::GatewayImpl::Refusal(const std::string& peer) {
  MutexLock lock(&mu_);
  std::string why;
  if (sessions_.size() >= options_.max_connections) {
    why = absl::StrCat("forqd has too many HTTP connections open (limit ",
                       options_.max_connections, "); retry later");
  } else if (auto it = per_client_.find(peer);
             it != per_client_.end() &&
             it->second >= options_.max_connections_per_client) {
    why = absl::StrCat("too many HTTP connections from ", peer, " (limit ",
                       options_.max_connections_per_client,
                       " per client); close idle ones or retry later");
  }
  if (!why.empty() &&
      Clock::now() - last_refusal_log_ > std::chrono::seconds(10)) {
    last_refusal_log_ = Clock::now();
    spdlog::warn("http: refusing connections: {}", why);
  }
  return why;
}

std::shared_ptr<net::ssl::context> http_internal::GatewayImpl::SslContext() {
  const uint64_t gen = options_.tls->generation();
  {
    MutexLock lock(&mu_);
    if (ssl_ctx_ != nullptr && ssl_generation_ == gen) return ssl_ctx_;
  }
  std::shared_ptr<const TlsPems> pems = options_.tls->Current();
  auto ctx = std::make_shared<net::ssl::context>(net::ssl::context::tls_server);
  beast::error_code ec;
  ctx->set_options(
      net::ssl::context::default_workarounds | net::ssl::context::no_sslv2 |
          net::ssl::context::no_sslv3 | net::ssl::context::no_tlsv1 |
          net::ssl::context::no_tlsv1_1 | net::ssl::context::single_dh_use,
      ec);
  if (!ec) ctx->use_certificate_chain(net::buffer(pems->cert), ec);
  if (!ec) {
    ctx->use_private_key(net::buffer(pems->key), net::ssl::context::pem, ec);
  }
  if (!ec && !pems->client_ca.empty()) {
    ctx->add_certificate_authority(net::buffer(pems->client_ca), ec);
    if (!ec) {
      ctx->set_verify_mode(
          net::ssl::verify_peer | net::ssl::verify_fail_if_no_peer_cert, ec);
    }
  }
  if (ec) {
    spdlog::error("http: cannot use the TLS certificate: {}", ec.message());
    return nullptr;
  }
  MutexLock lock(&mu_);
  ssl_ctx_ = ctx;
  ssl_generation_ = gen;
  return ctx;
}

void http_internal::GatewayImpl::Stop() {
  std::vector<std::shared_ptr<SessionBase>> sessions;
  {
    MutexLock lock(&mu_);
    if (!started_ || stopped_) return;
    stopped_ = true;
    stopping_.store(true, std::memory_order_release);
    for (auto& [key, weak] : sessions_) {
      if (auto s = weak.lock()) sessions.push_back(std::move(s));
    }
  }
  if (acceptor_ != nullptr) {
    net::post(acceptor_->get_executor(), [this] {
      beast::error_code ec;
      acceptor_->close(ec);
      accept_retry_->cancel();
    });
  }
  for (auto& s : sessions) {
    net::post(s->executor(), [s] { s->Abort(); });
  }
  sessions.clear();
  // The I/O threads keep running here so sessions can serve their calls'
  // last callbacks while the calls are cancelled.
  tracker_.CancelAllAndWait();
  work_.reset();
  if (ioc_) ioc_->stop();
  for (std::thread& t : threads_) t.join();
  threads_.clear();
  acceptor_.reset();
  accept_retry_.reset();
  // Destroys the handlers the stopped io_context never ran; each session
  // is owned only by such handlers by now, so every one is freed here.
  ioc_.reset();
  stub_.reset();
  channel_.reset();
  MutexLock lock(&mu_);
  if (!sessions_.empty()) {
    spdlog::error("http: {} connection(s) outlived the gateway's stop",
                  sessions_.size());
  }
}

HttpGateway::HttpGateway(HttpGatewayOptions options)
    : impl_(std::make_unique<http_internal::GatewayImpl>(std::move(options))) {}

HttpGateway::~HttpGateway() { Stop(); }

absl::StatusOr<int> HttpGateway::Start() { return impl_->Start(); }

void HttpGateway::Stop() { impl_->Stop(); }

}  // namespace forq::server
