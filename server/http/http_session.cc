#include "server/http/http_session.h"

#include <sys/socket.h>

#include <cerrno>
#include <chrono>
#include <deque>
#include <functional>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "boost/asio/dispatch.hpp"
#include "boost/asio/post.hpp"
#include "boost/asio/ssl.hpp"
#include "boost/beast/core.hpp"
#include "boost/beast/http.hpp"
#include "boost/beast/ssl.hpp"
#include "spdlog/spdlog.h"

#include "server/auth/token_auth.h"
#include "server/http/builtin_endpoints.h"
#include "server/http/forwarded_call.h"
#include "server/http/http_errors.h"
#include "server/http/http_gateway_impl.h"
#include "server/http/http_response.h"
#include "server/http/json_transcoder.h"
#include "server/http/rest_call.h"
#include "server/http/route_table.h"

namespace forq::server::http_internal {
namespace {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;
using Clock = GatewayImpl::Clock;

constexpr auto kWriteTimeout = std::chrono::seconds(60);
constexpr auto kHandshakeTimeout = std::chrono::seconds(10);
constexpr size_t kHeaderLimit = size_t{16} * 1024;

absl::string_view View(beast::string_view s) {
  return absl::string_view(s.data(), s.size());
}

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
  Session(GatewayImpl* gw, std::shared_ptr<net::ssl::context> ssl_ctx,
          Args&&... args)
      : gw_(gw),
        ssl_ctx_(std::move(ssl_ctx)),
        stream_(std::forward<Args>(args)...) {}
  ~Session() override { gw_->Unregister(this); }

  void Run() override {
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
    const RequiredAccess access = AccessFor(
        gw_->routes(), gw_->options().metrics_need_token,
        View(req.method_string()), SplitTarget(View(req.target())).path);
    authorization_ = std::string(View(req[http::field::authorization]));
    const absl::Status s =
        tokens->Authorize(authorization_, access.role, access.what);
    if (s.ok()) return true;
    label_ = "unauthorized";
    keep_alive_ = false;  // the body, if any, stays unread
    const bool unauthenticated = s.code() == absl::StatusCode::kUnauthenticated;
    HttpHeaders extra;
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
    const absl::string_view method = View(req.method_string());
    const RequestTarget target = SplitTarget(View(req.target()));
    if (IsBuiltinPath(target.path)) {
      label_ = absl::StrCat("GET ", target.path);
      return Respond(
          AnswerBuiltin(method, target.path, gw_->options(), gw_->openapi()));
    }
    RestCall call = PrepareRestCall(gw_->routes(), method, target,
                                    View(req[kTextHeader.data()]), req.body());
    label_ = std::move(call.label);
    if (call.rejection) return Respond(*std::move(call.rejection));
    route_ = call.route;
    render_ = call.render;
    parser_.reset();  // the body is no longer needed
    Forward(std::move(call.requests));
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
    std::string head = ResponseHead(200, kNdjsonType, {}, keep_alive_);
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
    if (streaming_ && headers_sent_) return EndStream(status);
    if (!status.ok()) return RespondCallError(status);
    if (streaming_) {
      // The stream ended before any message or header: an empty NDJSON body.
      return Respond(200, kNdjsonType, "");
    }
    if (!have_response_) {
      return RespondError(500, MakeHttpError(absl::StatusCode::kInternal,
                                             "the RPC returned no message"));
    }
    auto json = RenderResponse(response_);
    response_.Clear();
    if (!json.ok()) return RespondStatus(json.status());
    Respond(200, kJsonType, *std::move(json));
  }

  // The headers are out, so an error becomes the stream's last line.
  void EndStream(const grpc::Status& status) {
    std::string tail;
    if (!status.ok()) {
      std::string line =
          absl::StrCat("{\"error\":", ErrorFor(status).body, "}\n");
      tail = http10_ ? line : Chunk(line);
    }
    if (!http10_) tail += "0\r\n\r\n";
    gw_->RecordHttp(label_, 200, t0_);
    Enqueue(std::move(tail), [this] { AfterResponse(); });
  }

  void RespondCallError(const grpc::Status& status) {
    HttpError e = ErrorFor(status);
    HttpHeaders extra;
    if (e.retry_after_seconds > 0) {
      extra.emplace_back("Retry-After", std::to_string(e.retry_after_seconds));
    }
    RespondError(e.http_status, e, std::move(extra));
  }

  HttpError ErrorFor(const grpc::Status& status) {
    return RestErrorFor(*route_, status);
  }

  absl::StatusOr<std::string> RenderResponse(const grpc::ByteBuffer& buffer) {
    return RenderRestResponse(*route_, render_, buffer);
  }

  // ---- writing ----
  void RespondStatus(const absl::Status& s) { Respond(StatusAnswer(s)); }

  void RespondError(int status, const HttpError& e, HttpHeaders extra = {}) {
    Respond(ErrorAnswer(status, e, std::move(extra)));
  }

  void Respond(int status, absl::string_view content_type, std::string body) {
    Respond(HttpAnswer{status, std::string(content_type), std::move(body), {}});
  }

  void Respond(HttpAnswer answer) {
    gw_->RecordHttp(label_, answer.status, t0_);
    Enqueue(SerializeAnswer(std::move(answer), keep_alive_),
            [this] { AfterResponse(); });
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

  GatewayImpl* const gw_;
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

}  // namespace

std::shared_ptr<SessionBase> NewPlainSession(GatewayImpl* gw,
                                             tcp::socket socket) {
  return std::make_shared<Session<beast::tcp_stream>>(gw, nullptr,
                                                      std::move(socket));
}

std::shared_ptr<SessionBase> NewTlsSession(
    GatewayImpl* gw, std::shared_ptr<net::ssl::context> ssl_ctx,
    tcp::socket socket) {
  net::ssl::context& ctx = *ssl_ctx;
  return std::make_shared<Session<beast::ssl_stream<beast::tcp_stream>>>(
      gw, std::move(ssl_ctx), std::move(socket), ctx);
}

}  // namespace forq::server::http_internal
