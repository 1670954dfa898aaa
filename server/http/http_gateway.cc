#include "server/http/http_gateway.h"

#include <sys/socket.h>

#include <algorithm>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "boost/asio/dispatch.hpp"
#include "boost/asio/post.hpp"
#include "boost/asio/strand.hpp"
#include "boost/beast/core/error.hpp"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "spdlog/spdlog.h"

#include "server/auth/tls_material.h"
#include "server/http/http_errors.h"
#include "server/http/http_gateway_impl.h"
#include "server/http/http_response.h"
#include "server/http/openapi.h"

namespace forq::server {
namespace {

namespace net = boost::asio;
namespace beast = boost::beast;
using tcp = net::ip::tcp;
using Clock = http_internal::GatewayImpl::Clock;

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
  if (absl::Status s = Listen(*endpoint); !s.ok()) return s;
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

absl::Status http_internal::GatewayImpl::Listen(const tcp::endpoint& endpoint) {
  acceptor_ = std::make_unique<tcp::acceptor>(net::make_strand(*ioc_));
  accept_retry_ =
      std::make_unique<net::steady_timer>(acceptor_->get_executor());
  beast::error_code ec;
  acceptor_->open(endpoint.protocol(), ec);
  if (!ec) acceptor_->set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) acceptor_->bind(endpoint, ec);
  if (!ec) acceptor_->listen(net::socket_base::max_listen_connections, ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", options_.listen, ": ", ec.message()));
  }
  return absl::OkStatus();
}

void http_internal::GatewayImpl::Accept() {
  acceptor_->async_accept(
      net::make_strand(*ioc_), [this](beast::error_code ec, tcp::socket s) {
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
        Serve(std::move(s), ignored ? "" : remote.address().to_string());
        Accept();
      });
}

void http_internal::GatewayImpl::Serve(tcp::socket s, const std::string& peer) {
  const std::string refusal = Refusal(peer);
  if (!refusal.empty()) {
    // Best effort, never blocking: a plain-HTTP client learns why.
    if (options_.tls == nullptr) {
      const std::string out = SerializeAnswer(
          ErrorAnswer(
              503, MakeHttpError(absl::StatusCode::kResourceExhausted, refusal),
              {{"Retry-After", "1"}}),
          false);
      (void)::send(s.native_handle(), out.data(), out.size(),
                   MSG_DONTWAIT | MSG_NOSIGNAL);
    }
    beast::error_code ignored;
    s.shutdown(tcp::socket::shutdown_both, ignored);
    s.close(ignored);
    return;
  }
  std::shared_ptr<SessionBase> session;
  if (options_.tls == nullptr) {
    session = NewPlainSession(this, std::move(s));
  } else if (std::shared_ptr<net::ssl::context> ctx = SslContext()) {
    session = NewTlsSession(this, std::move(ctx), std::move(s));
  } else {
    return;
  }
  session->peer = peer;
  Register(session);
  session->Run();
}

void http_internal::GatewayImpl::RecordHttp(const std::string& label,
                                            int status, Clock::time_point t0) {
  if (options_.metrics == nullptr) return;
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  options_.metrics->HttpHandled(label, std::to_string(status), secs);
}

void http_internal::GatewayImpl::Unregister(SessionBase* s) {
  MutexLock lock(&mu_);
  if (sessions_.erase(s) == 0) return;
  auto it = per_client_.find(s->peer);
  if (it != per_client_.end() && --it->second == 0) per_client_.erase(it);
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
