#include "server/server.h"

#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <filesystem>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "spdlog/spdlog.h"

#include "server/auth/grpc_security.h"
#include "server/auth/rate_limit.h"
#include "server/auth/token_auth.h"
#include "server/http/http_gateway.h"
#include "server/manager/local_socket.h"
#include "server/manager/manager_service.h"
#include "server/rpc/grpc_metrics.h"
#include "server/rpc/health.h"
#include "server/rpc/malformed_request.h"
#include "server/rpc/pool_service.h"
#include "server/rpc/task_service.h"
#include "server/store/cluster_manager_owner.h"
#include "server/store/postgres_store.h"

namespace forq::server {

struct Server::Services {
  std::unique_ptr<GrpcMetrics> grpc_metrics;
  std::unique_ptr<TaskServiceImpl> tasks;
  std::unique_ptr<PoolServiceImpl> pool;
};

Server::Server(ServerOptions options)
    : options_(std::move(options)), services_(std::make_unique<Services>()) {}

Server::~Server() { Shutdown(); }

namespace {

// True for 127.0.0.0/8, ::1 and localhost (with or without a port).
bool IsLoopbackAddress(const std::string& addr) {
  if (absl::StartsWith(addr, "unix:")) return true;
  std::string host = addr.substr(0, addr.rfind(':'));
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  return host == "localhost" || host == "::1" || absl::StartsWith(host, "127.");
}

// Idle connections must not starve the store, workers and health checks
// of descriptors: take the whole hard limit (the soft one is often 1024).
void RaiseFdLimit() {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= rl.rlim_max) {
    return;
  }
  const rlim_t old = rl.rlim_cur;
  rl.rlim_cur = rl.rlim_max;
  if (setrlimit(RLIMIT_NOFILE, &rl) == 0) {
    spdlog::debug("raised the open-files limit from {} to {}", old,
                  rl.rlim_max);
  }
}

}  // namespace

absl::Status Server::SetUpSecurity() {
  if (!options_.auth_tokens_file.empty()) {
    absl::StatusOr<std::unique_ptr<TokenTable>> t =
        TokenTable::Load(options_.auth_tokens_file);
    if (!t.ok()) return t.status();
    tokens_ = std::move(*t);
    spdlog::info("auth: {} token(s) from {}", tokens_->size(),
                 options_.auth_tokens_file);
  }
  const TlsFiles& f = options_.tls;
  if (!f.cert_file.empty() || !f.key_file.empty() ||
      !f.client_ca_file.empty()) {
    absl::StatusOr<std::unique_ptr<TlsMaterial>> t = TlsMaterial::Load(f);
    if (!t.ok()) return t.status();
    tls_ = std::move(*t);
    spdlog::info("tls: serving {} with {}{}",
                 tls_->mutual() ? "mutual TLS" : "TLS", f.cert_file,
                 tls_->mutual() ? absl::StrCat(", clients verified against ",
                                               f.client_ca_file)
                                : "");
  }
  for (const auto& [flag, addr] : {std::pair<const char*, const std::string&>{
                                       "--grpc_addr", options_.grpc_addr},
                                   {"--http_addr", options_.http_addr}}) {
    if (IsLoopbackAddress(addr)) continue;
    if (tokens_ == nullptr && tls_ == nullptr) {
      if (!options_.insecure) {
        return absl::FailedPreconditionError(absl::StrCat(
            "refusing to listen on ", addr, " (", flag,
            "): it is not a loopback address and neither "
            "--auth_tokens_file nor --tls_cert is set, so anyone who "
            "reaches the port could run tasks and read every result. Set "
            "up tokens and/or TLS (docs/security.md), or pass --insecure "
            "to accept the risk"));
      }
      spdlog::warn(
          "{} {} is reachable from other hosts without tokens or "
          "TLS (--insecure)",
          flag, addr);
    } else if (tokens_ == nullptr && !tls_->mutual()) {
      spdlog::warn(
          "{} {}: TLS without tokens or client certificates lets "
          "every client that reaches the port in",
          flag, addr);
    }
  }
  grpc_security_ =
      std::make_unique<GrpcServerSecurity>(tokens_.get(), tls_.get());
  return absl::OkStatus();
}

absl::Status Server::ReloadTls() {
  if (tls_ == nullptr) {
    return absl::FailedPreconditionError("TLS is not configured");
  }
  return tls_->Reload();
}

absl::Status Server::ReloadTokens() {
  if (tokens_ == nullptr) {
    return absl::FailedPreconditionError("--auth_tokens_file is not set");
  }
  absl::Status s = tokens_->Reload(options_.auth_tokens_file);
  if (s.ok()) {
    spdlog::info("auth: {} token(s) from {}", tokens_->size(),
                 options_.auth_tokens_file);
  }
  return s;
}

absl::StatusOr<std::unique_ptr<Server>> Server::Create(ServerOptions options) {
  std::unique_ptr<Server> server(new Server(std::move(options)));
  // Files forqd creates (store, WAL, sockets) are for its own user only.
  umask(077);
  RaiseFdLimit();
  absl::Status s = server->SetUpSecurity();
  if (!s.ok()) return s;
  absl::StatusOr<std::unique_ptr<worker::WorkerPool>> pool =
      worker::CreateForkPool(server->options_.pool);
  if (!pool.ok()) return pool.status();
  server->pool_ = std::move(*pool);
  return server;
}

absl::Status Server::StartManagerElection() {
  ManagerOwnerOptions o;
  o.uri = PostgresStore::IsUri(options_.store.kind)
              ? options_.store.kind
              : options_.store.postgres_uri;
  o.node_id = store_->work_source()->node_id();
  o.lease = options_.store.cluster.lease;
  o.address = options_.advertise_addr;
  if (o.address.empty()) {
    std::string host =
        options_.grpc_addr.substr(0, options_.grpc_addr.rfind(':'));
    if (host.empty() || host == "0.0.0.0" || host == "[::]") {
      char name[256] = {};
      host = gethostname(name, sizeof(name) - 1) == 0 ? name : "localhost";
    }
    o.address = absl::StrCat(host, ":", grpc_port_);
  }
  ManagerRouter* router = &manager_->router();
  ManagerOwnerCallbacks cb;
  cb.acquired = [router] { return router->BecomeOwner(); };
  cb.lost = [router] { router->StepDown(); };
  cb.follow = [router](const std::string& node, const std::string& address) {
    router->Follow(node, address);
  };
  absl::StatusOr<std::unique_ptr<ManagerOwnerElection>> e =
      ManagerOwnerElection::Start(std::move(o), std::move(cb));
  if (!e.ok()) return e.status();
  manager_owner_ = *std::move(e);
  manager_owner_ptr_.store(manager_owner_.get());
  return absl::OkStatus();
}

absl::Status Server::Start() {
  absl::StatusOr<std::unique_ptr<Store>> store = OpenStore(options_.store);
  if (!store.ok()) return store.status();
  store_ = std::move(*store);
  if (options_.store.kind == "sqlite" && !options_.store.data_dir.empty()) {
    // A data dir made by an older forqd or by hand may be world-readable.
    std::error_code ec;
    std::filesystem::permissions(options_.store.data_dir,
                                 std::filesystem::perms::owner_all,
                                 std::filesystem::perm_options::replace, ec);
    if (ec) {
      spdlog::warn("cannot make {} private (chmod 700): {}",
                   options_.store.data_dir, ec.message());
    }
  }

  absl::Status s;
  if (store_->work_source() != nullptr) {
    // Cluster: one node owns the Manager objects (elected once the gRPC
    // port is up, below); the others forward to it.
    ManagerForwarding f;
    f.node_id = store_->work_source()->node_id();
    f.token = options_.cluster_token;
    if (tls_ != nullptr) {
      std::shared_ptr<const TlsPems> pems = tls_->Current();
      grpc::SslCredentialsOptions ssl;
      if (tls_->mutual()) {
        // Nodes are clients of each other: the client CA vouches for the
        // owner's certificate too, and this node presents its own.
        ssl.pem_root_certs = pems->client_ca;
        ssl.pem_private_key = pems->key;
        ssl.pem_cert_chain = pems->cert;
      }
      f.credentials = grpc::SslCredentials(ssl);
    }
    std::atomic<ManagerOwnerElection*>* election = &manager_owner_ptr_;
    f.on_unreachable = [election] {
      if (ManagerOwnerElection* e = election->load()) e->Refresh();
    };
    manager_ =
        std::make_unique<ManagerService>(store_.get(), &metrics_, std::move(f));
  } else {
    manager_ = std::make_unique<ManagerService>(store_.get(), &metrics_);
    s = manager_->Recover();
    if (!s.ok()) return s;
  }

  // Cluster mode: the scheduler claims shared work instead of keeping a
  // queue in memory.
  options_.scheduler.work_source = store_->work_source();
  // Without fsync a terminal write is one group commit away: a Submit
  // answer may wait for it and carry the result (WaitIfFinishing).
  options_.scheduler.answer_finished_submits =
      options_.store.durability == Durability::kNone;
  scheduler_ = std::make_unique<Scheduler>(options_.scheduler, *store_, *pool_,
                                           metrics_);
  ManagerService* manager = manager_.get();
  scheduler_->SetCallHandler(
      [manager](absl::string_view task_id, absl::string_view request,
                std::function<void(absl::StatusOr<std::string>)> reply) {
        manager->HandleTaskCall(task_id, request, std::move(reply));
      });
  // A pool without its supervisor cannot replace a dead worker, and forking
  // a new supervisor from this (threaded) process is unsafe: stop, and let
  // the service manager start forqd again (SIGTERM to ourselves, taken by
  // main's sigwait).
  scheduler_->SetPoolLostHandler([this](const absl::Status&) {
    if (!pool_lost_.exchange(true)) {
      spdlog::critical("forqd stops so it can be restarted with a new pool");
      kill(getpid(), SIGTERM);
    }
  });
  scheduler_->SetAttemptEndHandler([manager](absl::string_view task_id) {
    manager->CancelTaskCalls(task_id);
  });
  s = scheduler_->Start();
  if (!s.ok()) return s;

  Scheduler* scheduler = scheduler_.get();
  health_ = std::make_unique<HealthReporter>(
      [scheduler] { return scheduler->draining(); });
  // TaskService and PoolService count their own calls; the interceptor
  // covers the others.
  services_->grpc_metrics = std::make_unique<GrpcMetrics>(&metrics_);
  services_->grpc_metrics->CountedByHandlers(
      v1::TaskService::service_full_name());
  services_->grpc_metrics->CountedByHandlers(
      v1::PoolService::service_full_name());
  // So does the Manager's unary Call, which also parses its own request:
  // no interceptor runs for it.
  services_->grpc_metrics->CountedByHandler(ManagerService::kCallPath);
  {
    GrpcMetrics::Method* call =
        services_->grpc_metrics->Get("forq.v1.ManagerService", "Call");
    manager_->SetCallHooks(
        {.record =
             [call](grpc::StatusCode code,
                    GrpcMetrics::Clock::time_point start) {
               call->Record(code, start);
             },
         .malformed = MalformedRequestMessage(ManagerService::kCallPath)});
  }
  services_->tasks = std::make_unique<TaskServiceImpl>(
      *scheduler_, services_->grpc_metrics.get());
  if (options_.submit_rate > 0) {
    limiter_ = std::make_unique<SubmitRateLimiter>(
        RateLimitOptions{.rate = options_.submit_rate,
                         .burst = std::max(options_.submit_burst, 1.0),
                         .by_token = tokens_ != nullptr});
    services_->tasks->SetSubmitLimiter(limiter_.get());
  }
  services_->pool = std::make_unique<PoolServiceImpl>(
      *scheduler_, *pool_, *health_, services_->grpc_metrics.get());

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options_.grpc_addr,
                           grpc_security_->PortCredentials(), &grpc_port_);
  std::string gateway_target;
  if (tls_ != nullptr) {
    // The gateway cannot present the clients' TLS identity to the public
    // port; it talks to gRPC over a unix socket in a private directory
    // instead (tokens are still checked there).
    char dir[] = "/tmp/forqd-XXXXXX";
    if (mkdtemp(dir) == nullptr) {
      return absl::InternalError("cannot create a private socket directory");
    }
    private_dir_ = dir;
    gateway_target = absl::StrCat("unix:", private_dir_, "/grpc.sock");
    builder.AddListeningPort(gateway_target,
                             grpc_security_->PrivatePortCredentials());
  }
  builder.SetMaxReceiveMessageSize(options_.max_message_bytes);
  auto ms = [](absl::Duration d) {
    return static_cast<int>(
        std::min<int64_t>(absl::ToInt64Milliseconds(d), INT32_MAX));
  };
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS,
                             std::max(1, options_.grpc_max_concurrent_streams));
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS,
                             ms(options_.grpc_max_connection_idle));
  if (options_.grpc_max_connection_age > absl::ZeroDuration()) {
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_MS,
                               ms(options_.grpc_max_connection_age));
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS,
                               ms(options_.grpc_max_connection_age_grace));
  }
  builder.AddChannelArgument(
      GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
      ms(options_.grpc_min_ping_interval));
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 2);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS,
                             ms(options_.grpc_keepalive_time));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
                             ms(options_.grpc_keepalive_timeout));
  builder.SetMaxSendMessageSize(options_.max_message_bytes);
  builder.RegisterService(services_->tasks.get());
  builder.RegisterService(services_->pool.get());
  builder.RegisterService(manager_->grpc_service());
  std::vector<
      std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
      interceptors;
  // First, so the metrics interceptor counts the status it corrects. The
  // methods that count their own calls also parse their own requests
  // (ParsedRequest, or raw bytes for the Manager's Call), so neither
  // interceptor runs for them.
  interceptors.push_back(MakeMalformedRequestInterceptorFactory(
      [metrics = services_->grpc_metrics.get()](const char* method) {
        return metrics->SelfCounted(method);
      }));
  interceptors.push_back(services_->grpc_metrics->MakeInterceptorFactory());
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  grpc_server_ = builder.BuildAndStart();
  if (grpc_server_ == nullptr || grpc_port_ == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen for gRPC on ", options_.grpc_addr,
                     " (address in use or invalid?)"));
  }
  // Registers every service name with grpc.health.v1.Health; names it does
  // not list answer NOT_FOUND.
  health_->Attach(grpc_server_->GetHealthCheckService());

  if (store_->work_source() != nullptr) {
    s = StartManagerElection();
    if (!s.ok()) return s;
  }
  if (!options_.manager_socket.empty()) {
    absl::StatusOr<std::unique_ptr<ManagerLocalSocket>> sock =
        ManagerLocalSocket::Listen(
            manager_->router(), {.path = options_.manager_socket,
                                 .mode = options_.manager_socket_mode,
                                 .max_message_bytes = static_cast<size_t>(
                                     std::max(options_.max_message_bytes, 0)),
                                 .tokens = tokens_.get(),
                                 .metrics = &metrics_});
    if (!sock.ok()) return sock.status();
    manager_socket_ = *std::move(sock);
    spdlog::info("local Manager socket at {}", options_.manager_socket);
  }

  // REST is a gateway onto the gRPC port: one code path for both front ends.
  std::string grpc_host =
      options_.grpc_addr.substr(0, options_.grpc_addr.rfind(':'));
  if (grpc_host.empty() || grpc_host == "0.0.0.0" || grpc_host == "[::]") {
    grpc_host = "127.0.0.1";
  }
  // A Unix socket (--grpc_addr=unix:PATH) is its own target: gRPC reports
  // no port for it.
  const bool grpc_unix = absl::StartsWith(options_.grpc_addr, "unix:");
  HttpGatewayOptions http;
  http.listen = options_.http_addr;
  http.grpc_target = !gateway_target.empty() ? gateway_target
                     : grpc_unix             ? options_.grpc_addr
                                 : absl::StrCat(grpc_host, ":", grpc_port_);
  http.metrics = &metrics_;
  http.tokens = tokens_.get();
  http.metrics_need_token = options_.metrics_need_token;
  http.tls = tls_.get();
  http.max_connections = options_.http_max_connections;
  http.max_connections_per_client = options_.http_max_connections_per_client;
  http.idle_timeout = options_.http_idle_timeout;
  worker::WorkerPool* pool = pool_.get();
  HealthReporter* health = health_.get();
  http.readiness = [scheduler, health, pool] {
    ReadyState r;
    // A store that fails terminal writes holds finished tasks back (they are
    // written again); readiness says so.
    r.store_open = !scheduler->store_failing();
    for (const worker::WorkerInfo& w : pool->Workers()) {
      if (w.state == worker::WorkerState::kIdle ||
          w.state == worker::WorkerState::kBusy) {
        ++r.live_workers;
      }
    }
    // The same phase grpc.health.v1.Health publishes.
    const ServingPhase phase = health->phase();
    r.draining = phase != ServingPhase::kServing;
    r.ready = r.live_workers > 0 && !r.draining && r.store_open;
    if (!r.store_open) {
      r.message = "store writes failing";
    } else if (r.draining) {
      r.message = std::string(ServingPhaseName(phase));
    } else if (r.live_workers == 0) {
      r.message = "no live workers";
    }
    return r;
  };
  http_ = std::make_unique<HttpGateway>(std::move(http));
  absl::StatusOr<int> http_port = http_->Start();
  if (!http_port.ok()) return http_port.status();
  http_port_ = *http_port;

  spdlog::info(
      "forqd serving gRPC on {} and HTTP on port {} with {} workers "
      "(store: {})",
      grpc_unix ? options_.grpc_addr : absl::StrCat("port ", grpc_port_),
      http_port_, pool_->size(), DescribeStore(options_.store));
  if (options_.ready_fd >= 0) {
    std::string line =
        absl::StrCat("grpc_port=", grpc_port_, " http_port=", http_port_, "\n");
    if (write(options_.ready_fd, line.data(), line.size()) < 0) {
      spdlog::warn("cannot write to --ready_fd {}", options_.ready_fd);
    }
    close(options_.ready_fd);
  }
  return absl::OkStatus();
}

void Server::Shutdown() {
  if (shut_down_) return;
  shut_down_ = true;
  spdlog::info("shutting down: draining for up to {}",
               absl::FormatDuration(options_.drain_grace));
  if (health_ != nullptr) health_->SetStopping();
  if (scheduler_ != nullptr) scheduler_->Shutdown(options_.drain_grace);
  // A Manager owner hands the objects over (another node takes the lock
  // within its poll) before it stops answering.
  if (manager_owner_ != nullptr) manager_owner_->Stop();
  if (manager_socket_ != nullptr) manager_socket_->Stop();
  if (manager_ != nullptr) manager_->Shutdown();
  if (http_ != nullptr) http_->Stop();
  if (grpc_server_ != nullptr) {
    // The drain is over: calls still open (watches, maps, parked Manager
    // calls) get a short moment to finish, then they are cancelled.
    grpc_server_->Shutdown(
        absl::ToChronoTime(absl::Now() + absl::Milliseconds(500)));
  }
  if (pool_ != nullptr) pool_->Shutdown();
  if (store_ != nullptr) store_->Close();
  if (!private_dir_.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(private_dir_, ec);
  }
  spdlog::info("forqd stopped");
}

}  // namespace forq::server
