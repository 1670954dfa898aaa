// forqd assembled: worker pool, store, scheduler, Manager, gRPC and HTTP
// front ends, with the start-up order fork-first and a graceful drain on
// shutdown.
#ifndef FORQ_SERVER_SERVER_H_
#define FORQ_SERVER_SERVER_H_

#include <sys/types.h>

#include <atomic>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

#include "server/auth/tls_material.h"
#include "server/metrics/metrics.h"
#include "server/scheduler/scheduler.h"
#include "server/store/store.h"
#include "worker/fork_pool.h"

namespace grpc {
class Server;
}

namespace forq::server {
class HealthReporter;
class GrpcServerSecurity;
class HttpGateway;
class ManagerOwnerElection;
class ManagerLocalSocket;
class ManagerService;
class TokenTable;
class SubmitRateLimiter;
}  // namespace forq::server

namespace forq::server {

struct ServerOptions {
  // host:port; port 0 picks a free port.
  std::string grpc_addr = "127.0.0.1:50051";
  std::string http_addr = "127.0.0.1:8080";
  StoreOptions store;
  worker::ForkPoolOptions pool;
  SchedulerOptions scheduler;
  // On SIGTERM: how long running tasks may finish before being re-queued.
  absl::Duration drain_grace = absl::Seconds(20);
  // Largest gRPC message accepted (payload limits are checked separately,
  // with a clearer error, by the scheduler).
  int max_message_bytes = 64 << 20;
  // If >= 0, "grpc_port=N http_port=M\n" is written here once serving.
  int ready_fd = -1;
  // Cluster mode: host:port where the other nodes reach this node's gRPC
  // port (they forward Manager calls to the node that owns the Manager).
  // Empty: grpc_addr's host (the host name when it is 0.0.0.0 or [::])
  // with the bound port.
  std::string advertise_addr;
  // Cluster mode with --auth_tokens_file: the token this node sends with
  // the Manager calls it forwards to the owner (it must be in every node's
  // tokens file with role admin: it carries calls of every role, each
  // checked by this node first). Empty: a client's call is forwarded with
  // the client's token, a task's call with none.
  std::string cluster_token;

  // Security (docs/security.md). Tokens file: `TOKEN ROLE` or
  // `sha256:HEX ROLE` lines; empty = no token check.
  std::string auth_tokens_file;
  // TLS for both front ends when tls.cert_file is set; mTLS with
  // tls.client_ca_file.
  TlsFiles tls;
  // With tokens: /metrics needs a read token (false: /metrics stays open).
  bool metrics_need_token = true;
  // Allows a non-loopback listen address with neither tokens nor TLS.
  bool insecure = false;
  // HTTP connection caps (HttpGatewayOptions).
  size_t http_max_connections = 4096;
  size_t http_max_connections_per_client = 1024;
  // An HTTP connection must deliver a whole request header within this
  // time, and is closed after this long idle between requests.
  absl::Duration http_idle_timeout = absl::Seconds(75);
  // gRPC limits: concurrent calls per connection (more wait in the
  // client), GOAWAY after a connection had no call for `idle` or (if not
  // zero) lived for `age` (+ `age_grace` for its calls to end), and the
  // keepalive policy: pings closer than `min_ping_interval` count as
  // strikes (2 strikes: GOAWAY "too_many_pings"); forqd pings an idle peer
  // every `keepalive_time` and drops it after `keepalive_timeout`.
  int grpc_max_concurrent_streams = 1000;
  absl::Duration grpc_max_connection_idle = absl::Minutes(10);
  absl::Duration grpc_max_connection_age = absl::ZeroDuration();
  absl::Duration grpc_max_connection_age_grace = absl::Minutes(1);
  absl::Duration grpc_min_ping_interval = absl::Seconds(10);
  absl::Duration grpc_keepalive_time = absl::Minutes(1);
  absl::Duration grpc_keepalive_timeout = absl::Seconds(20);
  // Tasks per second each client (token, else address) may submit through
  // Submit, SubmitBatch, Map and MapBatched, with bursts up to
  // `submit_burst`; 0 = no limit.
  double submit_rate = 10000;
  double submit_burst = 20000;
  // The local Manager socket (docs/manager.md, "Local socket"): a Unix
  // socket path where clients on this host reach the Manager without gRPC;
  // empty = none. `manager_socket_mode` is the socket file's permission
  // bits (who may connect); tokens are checked as on gRPC.
  std::string manager_socket;
  mode_t manager_socket_mode = 0600;
};

// Thread-safe after Start.
class Server {
 public:
  // Forks the worker pool. Must run while the process is single-threaded.
  static absl::StatusOr<std::unique_ptr<Server>> Create(ServerOptions options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Opens the store, recovers tasks, starts the scheduler and both front
  // ends, then reports readiness.
  absl::Status Start();
  // Graceful stop: gRPC health NOT_SERVING for every service name and
  // /readyz 503 first, then new submits refused (UNAVAILABLE),
  // running tasks get drain_grace, the rest stay QUEUED on disk.
  void Shutdown();

  // True once the worker pool was lost (its supervisor died). forqd then
  // stops as on SIGTERM and exits non-zero so it is restarted; every
  // acknowledged task is in the store and runs after the restart.
  bool pool_lost() const { return pool_lost_.load(); }
  // SIGHUP: re-reads the TLS certificate, key and client CA; new
  // connections use them, open ones keep theirs. On error the old ones stay.
  absl::Status ReloadTls();
  // SIGHUP: re-reads --auth_tokens_file; calls checked afterwards see only
  // the new tokens. On error the old tokens stay.
  absl::Status ReloadTokens();

  int grpc_port() const { return grpc_port_; }
  int http_port() const { return http_port_; }

 private:
  explicit Server(ServerOptions options);
  struct Services;
  // Loads tokens and TLS files and refuses an exposed, unprotected listen
  // address.
  absl::Status SetUpSecurity();
  // Cluster mode: joins the Manager owner election.
  absl::Status StartManagerElection();

  ServerOptions options_;
  // Used by gRPC for every call and handshake: declared before (destroyed
  // after) the gRPC server and the HTTP gateway.
  std::unique_ptr<TokenTable> tokens_;
  std::unique_ptr<SubmitRateLimiter> limiter_;
  std::unique_ptr<TlsMaterial> tls_;
  std::unique_ptr<GrpcServerSecurity> grpc_security_;
  // With TLS, the HTTP gateway reaches gRPC over a unix socket here.
  std::string private_dir_;
  Metrics metrics_;
  std::unique_ptr<worker::WorkerPool> pool_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<ManagerService> manager_;
  // Stopped before the Manager shuts down.
  std::unique_ptr<ManagerLocalSocket> manager_socket_;
  // Cluster mode: the Manager owner election (after the gRPC port is up).
  std::unique_ptr<ManagerOwnerElection> manager_owner_;
  // The same, for forwarding callbacks that run on gRPC threads.
  std::atomic<ManagerOwnerElection*> manager_owner_ptr_{nullptr};
  std::unique_ptr<HealthReporter> health_;
  std::unique_ptr<Services> services_;
  std::unique_ptr<HttpGateway> http_;
  std::unique_ptr<grpc::Server> grpc_server_;
  int grpc_port_ = 0;
  int http_port_ = 0;
  bool shut_down_ = false;
  std::atomic<bool> pool_lost_{false};
};

}  // namespace forq::server

#endif  // FORQ_SERVER_SERVER_H_
