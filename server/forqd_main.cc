// forqd: the forq server. See `forqd --help` and docs/operations.md.
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "spdlog/spdlog.h"

#include "common/logging.h"
#include "common/release_build.h"
#include "common/status_macros.h"
#include "server/server.h"
#include "server/store/postgres_store.h"

ABSL_FLAG(std::string, grpc_addr, "127.0.0.1:50051",
          "gRPC listen address (host:port; port 0 = any free port)");
ABSL_FLAG(std::string, http_addr, "127.0.0.1:8080",
          "HTTP listen address for REST, /metrics, /healthz, /readyz");
ABSL_FLAG(int, workers, 0,
          "worker processes; 0 = online CPUs (respects the cgroup CPU quota)");
ABSL_FLAG(std::string, data_dir, "./forq-data", "directory of the task store");
ABSL_FLAG(std::string, store, "sqlite",
          "task store: sqlite (durable, default), memory (nothing survives "
          "a restart), or a PostgreSQL libpq URI postgres://user@host:port/db "
          "(see docs/storage.md)");
ABSL_FLAG(int, store_pool_size, 4,
          "PostgreSQL store: idle read connections kept open");
ABSL_FLAG(bool, cluster, false,
          "PostgreSQL store only: run as one node of a cluster that shares "
          "the database as one queue (docs/storage.md, Cluster mode)");
ABSL_FLAG(std::string, node_id, "",
          "cluster node name; empty = hostname-pid-starttime");
ABSL_FLAG(absl::Duration, cluster_lease, absl::Seconds(10),
          "cluster: lease of a claimed attempt; heartbeat every lease/3, "
          "self-fence after lease/2 without the database");
ABSL_FLAG(absl::Duration, cluster_poll, absl::Milliseconds(100),
          "cluster: fallback poll for work when a notification is missed");
ABSL_FLAG(std::string, advertise_addr, "",
          "cluster: host:port where other nodes reach this node's gRPC port "
          "(Manager calls are forwarded to the node that owns the Manager); "
          "empty = --grpc_addr's host (the host name for 0.0.0.0) and port");
ABSL_FLAG(std::string, cluster_token_file, "",
          "cluster with --auth_tokens_file: file holding the token (first "
          "line, role admin) this node sends with the Manager calls it "
          "forwards to the owner node");
ABSL_FLAG(std::string, durability, "sync",
          "sqlite durability: sync (ack after fsync, group commit), batch "
          "(commit every few ms, acks wait), none (no fsync)");
ABSL_FLAG(std::string, log_level, "info",
          "trace, debug, info, warn, error or off");
ABSL_FLAG(std::vector<std::string>, plugin, {},
          "comma-separated handler plugin .so files, loaded before forking");
ABSL_FLAG(std::vector<std::string>, exec_allow, {},
          "comma-separated absolute paths the exec kind may run (empty = "
          "exec disabled)");
ABSL_FLAG(int, prefetch, -1,
          "assignments queued in each worker behind the one it runs (tasks "
          "with a timeout of 10s or more); 0 = one task per worker at a time; "
          "-1 (default) = 64 on a single node, 8 with --cluster (a node "
          "claims what its workers queue)");
ABSL_FLAG(int, max_tasks_per_child, 0,
          "recycle a worker after this many tasks (0 = never)");
ABSL_FLAG(int, max_worker_rss_mb, 0,
          "recycle/kill a worker whose RSS passes this many MiB (0 = no "
          "limit)");
ABSL_FLAG(absl::Duration, cancel_grace, absl::Seconds(5),
          "time a cancelled task has to stop before its worker is killed");
ABSL_FLAG(absl::Duration, default_timeout, absl::Hours(1),
          "hard timeout of an attempt when the task sets none");
ABSL_FLAG(int, default_max_attempts, 5,
          "attempts for retryable failures when the task sets none");
ABSL_FLAG(absl::Duration, result_ttl, absl::Hours(24),
          "how long finished tasks stay readable when the task sets none");
ABSL_FLAG(int64_t, max_queued, 1000000,
          "queued tasks allowed per queue before Submit answers "
          "RESOURCE_EXHAUSTED");
ABSL_FLAG(int64_t, max_payload_bytes, 1 << 20,
          "largest task payload accepted (INVALID_ARGUMENT beyond)");
ABSL_FLAG(absl::Duration, drain_grace, absl::Seconds(20),
          "on SIGTERM, how long running tasks may finish before they are "
          "re-queued");
ABSL_FLAG(absl::Duration, running_write_delay, absl::ZeroDuration(),
          "0: a task's RUNNING state is stored when its attempt starts, so "
          "a crash of forqd counts every running attempt; above 0: stored "
          "only when the attempt runs longer than this (fewer writes; after "
          "a crash a younger attempt is not counted)");
ABSL_FLAG(absl::Duration, purge_interval, absl::Minutes(1),
          "how often finished tasks past their result TTL are deleted");
ABSL_FLAG(absl::Duration, retry_backoff, absl::Seconds(1),
          "backoff before the 2nd attempt; doubles per attempt, +-25% jitter");
ABSL_FLAG(absl::Duration, retry_backoff_max, absl::Minutes(5),
          "longest backoff between attempts");
ABSL_FLAG(std::string, auth_tokens_file, "",
          "file of 'TOKEN ROLE' or 'sha256:HEX ROLE' lines (roles: admin, "
          "submit, read); clients then need 'Bearer TOKEN'");
ABSL_FLAG(std::string, tls_cert, "",
          "PEM certificate chain: serve gRPC and HTTP over TLS (re-read on "
          "SIGHUP)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA bundle: require client certificates signed by it (mTLS)");
ABSL_FLAG(bool, metrics_auth, true,
          "with --auth_tokens_file, /metrics needs a read token");
ABSL_FLAG(bool, insecure, false,
          "allow a non-loopback listen address without tokens or TLS");
ABSL_FLAG(int, http_max_connections, 4096,
          "open HTTP connections in total; more get 503 and are closed");
ABSL_FLAG(int, http_max_connections_per_client, 1024,
          "open HTTP connections per client address; more get 503");
ABSL_FLAG(absl::Duration, http_idle_timeout, absl::Seconds(75),
          "HTTP: time to send a whole request header, and idle time between "
          "requests, before the connection is closed");
ABSL_FLAG(int, grpc_max_concurrent_streams, 1000,
          "gRPC calls in progress per connection; more wait in the client");
ABSL_FLAG(absl::Duration, grpc_max_connection_idle, absl::Minutes(10),
          "gRPC: close (GOAWAY) a connection without calls for this long");
ABSL_FLAG(absl::Duration, grpc_max_connection_age, absl::ZeroDuration(),
          "gRPC: close (GOAWAY) connections older than this; 0 = never");
ABSL_FLAG(absl::Duration, grpc_max_connection_age_grace, absl::Minutes(1),
          "gRPC: time calls get to end after a connection's max age");
ABSL_FLAG(absl::Duration, grpc_min_ping_interval, absl::Seconds(10),
          "gRPC: clients pinging more often are disconnected (too_many_pings)");
ABSL_FLAG(absl::Duration, grpc_keepalive_time, absl::Minutes(1),
          "gRPC: ping a connection idle for this long, to find dead peers");
ABSL_FLAG(absl::Duration, grpc_keepalive_timeout, absl::Seconds(20),
          "gRPC: drop a connection whose ping is not answered within this");
ABSL_FLAG(double, submit_rate, 100000,
          "tasks per second each client (token, else address) may submit; "
          "0 = no limit");
ABSL_FLAG(double, submit_burst, 200000,
          "tasks a client may submit at once above --submit_rate");
ABSL_FLAG(std::string, manager_socket, "",
          "Unix socket path where clients on this host reach the Manager "
          "without gRPC (ManagerOptions::local_socket); empty = none");
ABSL_FLAG(std::string, manager_socket_mode, "0600",
          "permission bits of --manager_socket, in octal: who may connect");
ABSL_FLAG(int, ready_fd, -1,
          "if set, write 'grpc_port=N http_port=M' to this fd once serving");

namespace {

// --prefetch, with -1 resolved: the pool's default on a single node; 8 on
// a cluster node, which claims from the shared queue what its workers can
// hold (a deep prefetch would take work other nodes could run).
int PoolPrefetch(bool cluster) {
  const int prefetch = absl::GetFlag(FLAGS_prefetch);
  if (prefetch != -1) return prefetch;
  return cluster ? 8 : forq::worker::ForkPoolOptions().prefetch;
}

// FORQ_<FLAG> environment variables become flags; command-line flags given
// later win because absl applies them in order.
std::vector<char*> ArgsWithEnvironment(int argc, char** argv,
                                       std::vector<std::string>& storage) {
  static const char* kNames[] = {"grpc_addr",
                                 "http_addr",
                                 "workers",
                                 "data_dir",
                                 "store",
                                 "cluster",
                                 "node_id",
                                 "cluster_lease",
                                 "cluster_poll",
                                 "advertise_addr",
                                 "cluster_token_file",
                                 "durability",
                                 "log_level",
                                 "plugin",
                                 "exec_allow",
                                 "prefetch",
                                 "max_tasks_per_child",
                                 "max_worker_rss_mb",
                                 "cancel_grace",
                                 "default_timeout",
                                 "default_max_attempts",
                                 "result_ttl",
                                 "max_queued",
                                 "max_payload_bytes",
                                 "drain_grace",
                                 "running_write_delay",
                                 "purge_interval",
                                 "retry_backoff",
                                 "retry_backoff_max",
                                 "auth_tokens_file",
                                 "tls_cert",
                                 "tls_key",
                                 "tls_client_ca",
                                 "metrics_auth",
                                 "insecure",
                                 "http_max_connections",
                                 "http_max_connections_per_client",
                                 "http_idle_timeout",
                                 "grpc_max_concurrent_streams",
                                 "grpc_max_connection_idle",
                                 "grpc_max_connection_age",
                                 "grpc_max_connection_age_grace",
                                 "grpc_min_ping_interval",
                                 "grpc_keepalive_time",
                                 "grpc_keepalive_timeout",
                                 "submit_rate",
                                 "submit_burst",
                                 "manager_socket",
                                 "manager_socket_mode"};
  for (const char* name : kNames) {
    std::string env = "FORQ_";
    for (const char* c = name; *c != '\0'; ++c) {
      env += static_cast<char>(std::toupper(static_cast<unsigned char>(*c)));
    }
    if (const char* v = getenv(env.c_str())) {
      storage.push_back(absl::StrCat("--", name, "=", v));
    }
  }
  std::vector<char*> args = {argv[0]};
  for (std::string& s : storage) args.push_back(s.data());
  for (int i = 1; i < argc; ++i) args.push_back(argv[i]);
  return args;
}

// The store flags (--store, --durability, --cluster...) into `o.store`.
absl::Status StoreOptionsFromFlags(forq::server::ServerOptions& o) {
  o.store.kind = absl::GetFlag(FLAGS_store);
  o.store.data_dir = absl::GetFlag(FLAGS_data_dir);
  o.store.pool_size = absl::GetFlag(FLAGS_store_pool_size);
  absl::StatusOr<forq::server::Durability> durability =
      forq::server::ParseDurability(absl::GetFlag(FLAGS_durability));
  if (!durability.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--durability: ", durability.status().ToString()));
  }
  o.store.durability = *durability;
  o.store.cluster.enabled = absl::GetFlag(FLAGS_cluster);
  o.store.cluster.node_id = absl::GetFlag(FLAGS_node_id);
  o.store.cluster.lease = absl::GetFlag(FLAGS_cluster_lease);
  o.store.cluster.poll_interval = absl::GetFlag(FLAGS_cluster_poll);
  o.store.cluster.backoff_base = absl::GetFlag(FLAGS_retry_backoff);
  o.store.cluster.backoff_max = absl::GetFlag(FLAGS_retry_backoff_max);
  if (o.store.cluster.enabled &&
      !forq::server::PostgresStore::IsUri(o.store.kind)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--cluster needs a PostgreSQL store (--store=postgres://...); got "
        "--store=",
        o.store.kind));
  }
  if (o.store.cluster.lease < absl::Milliseconds(300)) {
    return absl::InvalidArgumentError("--cluster_lease must be at least 300ms");
  }
  return absl::OkStatus();
}

// The pool and scheduler flags into `o.pool` and `o.scheduler`.
absl::Status PoolOptionsFromFlags(forq::server::ServerOptions& o) {
  o.pool.workers = absl::GetFlag(FLAGS_workers);
  o.pool.plugins = absl::GetFlag(FLAGS_plugin);
  o.pool.exec_allow = absl::GetFlag(FLAGS_exec_allow);
  o.pool.max_tasks_per_child = absl::GetFlag(FLAGS_max_tasks_per_child);
  o.pool.prefetch = PoolPrefetch(o.store.cluster.enabled);
  o.pool.max_worker_rss_bytes =
      static_cast<uint64_t>(absl::GetFlag(FLAGS_max_worker_rss_mb)) << 20;
  o.pool.cancel_grace = absl::GetFlag(FLAGS_cancel_grace);
  o.scheduler.default_timeout = absl::GetFlag(FLAGS_default_timeout);
  o.scheduler.default_max_attempts = absl::GetFlag(FLAGS_default_max_attempts);
  o.scheduler.default_result_ttl = absl::GetFlag(FLAGS_result_ttl);
  o.scheduler.max_queued = absl::GetFlag(FLAGS_max_queued);
  o.scheduler.max_payload_bytes =
      static_cast<size_t>(absl::GetFlag(FLAGS_max_payload_bytes));
  o.scheduler.purge_interval = absl::GetFlag(FLAGS_purge_interval);
  o.scheduler.running_write_delay = absl::GetFlag(FLAGS_running_write_delay);
  o.scheduler.backoff_base = absl::GetFlag(FLAGS_retry_backoff);
  o.scheduler.backoff_max = absl::GetFlag(FLAGS_retry_backoff_max);
  if (o.pool.workers < 0 || o.scheduler.default_max_attempts < 1 ||
      o.scheduler.max_queued < 1 || o.scheduler.max_payload_bytes < 1) {
    return absl::InvalidArgumentError(
        "--workers must be >= 0; --default_max_attempts, --max_queued and "
        "--max_payload_bytes must be >= 1");
  }
  return absl::OkStatus();
}

// The access flags (tokens, TLS, cluster token) into `o`.
absl::Status AccessOptionsFromFlags(forq::server::ServerOptions& o) {
  o.auth_tokens_file = absl::GetFlag(FLAGS_auth_tokens_file);
  o.advertise_addr = absl::GetFlag(FLAGS_advertise_addr);
  if (const std::string path = absl::GetFlag(FLAGS_cluster_token_file);
      !path.empty()) {
    std::ifstream in(path);
    std::getline(in, o.cluster_token);
    o.cluster_token = std::string(absl::StripAsciiWhitespace(o.cluster_token));
    if (!in && o.cluster_token.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--cluster_token_file ", path, ": cannot read a token"));
    }
  }
  o.tls.cert_file = absl::GetFlag(FLAGS_tls_cert);
  o.tls.key_file = absl::GetFlag(FLAGS_tls_key);
  o.tls.client_ca_file = absl::GetFlag(FLAGS_tls_client_ca);
  o.metrics_need_token = absl::GetFlag(FLAGS_metrics_auth);
  o.insecure = absl::GetFlag(FLAGS_insecure);
  return absl::OkStatus();
}

// The connection limits of the gRPC and HTTP front ends into `o`.
absl::Status ConnectionOptionsFromFlags(forq::server::ServerOptions& o) {
  o.http_max_connections = static_cast<size_t>(
      std::max(1, absl::GetFlag(FLAGS_http_max_connections)));
  o.http_max_connections_per_client = static_cast<size_t>(
      std::max(1, absl::GetFlag(FLAGS_http_max_connections_per_client)));
  o.http_idle_timeout = absl::GetFlag(FLAGS_http_idle_timeout);
  o.grpc_max_concurrent_streams =
      absl::GetFlag(FLAGS_grpc_max_concurrent_streams);
  o.grpc_max_connection_idle = absl::GetFlag(FLAGS_grpc_max_connection_idle);
  o.grpc_max_connection_age = absl::GetFlag(FLAGS_grpc_max_connection_age);
  o.grpc_max_connection_age_grace =
      absl::GetFlag(FLAGS_grpc_max_connection_age_grace);
  o.grpc_min_ping_interval = absl::GetFlag(FLAGS_grpc_min_ping_interval);
  o.grpc_keepalive_time = absl::GetFlag(FLAGS_grpc_keepalive_time);
  o.grpc_keepalive_timeout = absl::GetFlag(FLAGS_grpc_keepalive_timeout);
  o.submit_rate = absl::GetFlag(FLAGS_submit_rate);
  o.submit_burst = absl::GetFlag(FLAGS_submit_burst);
  if (o.grpc_max_concurrent_streams < 1 ||
      o.http_idle_timeout <= absl::ZeroDuration() ||
      o.grpc_max_connection_idle <= absl::ZeroDuration() ||
      o.grpc_max_connection_age < absl::ZeroDuration() ||
      o.grpc_keepalive_time <= absl::ZeroDuration() ||
      o.grpc_keepalive_timeout <= absl::ZeroDuration() || o.submit_rate < 0 ||
      o.submit_burst < 0) {
    return absl::InvalidArgumentError(
        "--grpc_max_concurrent_streams must be >= 1; --http_idle_timeout, "
        "--grpc_max_connection_idle, --grpc_keepalive_time/_timeout must be "
        "> 0; --grpc_max_connection_age, --submit_rate and --submit_burst "
        "must be >= 0");
  }
  return absl::OkStatus();
}

// Every flag into ServerOptions; InvalidArgument names a flag out of range
// (the store's, then the pool's, the access and the connection flags).
absl::StatusOr<forq::server::ServerOptions> ServerOptionsFromFlags() {
  forq::server::ServerOptions o;
  o.grpc_addr = absl::GetFlag(FLAGS_grpc_addr);
  o.http_addr = absl::GetFlag(FLAGS_http_addr);
  o.drain_grace = absl::GetFlag(FLAGS_drain_grace);
  o.ready_fd = absl::GetFlag(FLAGS_ready_fd);
  FORQ_RETURN_IF_ERROR(StoreOptionsFromFlags(o));
  FORQ_RETURN_IF_ERROR(PoolOptionsFromFlags(o));
  FORQ_RETURN_IF_ERROR(AccessOptionsFromFlags(o));
  FORQ_RETURN_IF_ERROR(ConnectionOptionsFromFlags(o));
  o.manager_socket = absl::GetFlag(FLAGS_manager_socket);
  const std::string mode = absl::GetFlag(FLAGS_manager_socket_mode);
  unsigned bits = 0;
  const auto [end, err] =
      std::from_chars(mode.data(), mode.data() + mode.size(), bits, 8);
  if (mode.empty() || err != std::errc() || end != mode.data() + mode.size() ||
      bits > 0777) {
    return absl::InvalidArgumentError(
        absl::StrCat("--manager_socket_mode: '", mode,
                     "' is not permission bits in octal (0600, 0660, ...)"));
  }
  o.manager_socket_mode = static_cast<mode_t>(bits);
  return o;
}

// Reloads the TLS files and the tokens on each SIGHUP in `signals` (blocked
// in every thread); returns the first other signal.
int ReloadUntilStopped(forq::server::Server& server,
                       const forq::server::ServerOptions& o,
                       const sigset_t& signals) {
  int sig = 0;
  while (sigwait(&signals, &sig) == 0 && sig == SIGHUP) {
    if (!o.tls.cert_file.empty()) {
      absl::Status r = server.ReloadTls();
      if (r.ok()) {
        spdlog::info("SIGHUP: reloaded the TLS certificate and key");
      } else {
        spdlog::error("SIGHUP: TLS not reloaded, keeping the old files: {}",
                      r.ToString());
      }
    }
    if (!o.auth_tokens_file.empty()) {
      absl::Status r = server.ReloadTokens();
      if (r.ok()) {
        spdlog::info("SIGHUP: reloaded the tokens");
      } else {
        spdlog::error("SIGHUP: tokens not reloaded, keeping the old ones: {}",
                      r.ToString());
      }
    }
  }
  return sig;
}

}  // namespace

int main(int argc, char** argv) {
  forq::SkipDeadlockDetectionInReleaseBuilds();
  absl::SetProgramUsageMessage(
      "forqd: the forq task queue server.\n"
      "Flags may also come from FORQ_<FLAG> environment variables or a "
      "--flagfile.");
  std::vector<std::string> env_storage;
  std::vector<char*> args = ArgsWithEnvironment(argc, argv, env_storage);
  absl::ParseCommandLine(static_cast<int>(args.size()), args.data());

  absl::Status s = forq::InitLogging("forqd", absl::GetFlag(FLAGS_log_level));
  if (!s.ok()) {
    fprintf(stderr, "forqd: %s\n", std::string(s.message()).c_str());
    return 2;
  }

  absl::StatusOr<forq::server::ServerOptions> options =
      ServerOptionsFromFlags();
  if (!options.ok()) {
    spdlog::critical("{}", std::string(options.status().message()));
    return 2;
  }
  const forq::server::ServerOptions& o = *options;

  // The pool forks here, before any thread exists.
  absl::StatusOr<std::unique_ptr<forq::server::Server>> server =
      forq::server::Server::Create(o);
  if (!server.ok()) {
    spdlog::critical("cannot start forqd: {}", server.status().ToString());
    return 1;
  }

  // Signals are taken synchronously by this thread; every thread created
  // from here on inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  s = (*server)->Start();
  if (!s.ok()) {
    spdlog::critical("cannot start forqd: {}", s.ToString());
    (*server)->Shutdown();
    return 1;
  }
  const int sig = ReloadUntilStopped(**server, o, signals);
  spdlog::info("received {}", sig == SIGTERM ? "SIGTERM" : "SIGINT");
  // Shutdown must end even if some handler is stuck: past the drain grace
  // plus a margin, exit anyway (the store is durable; tasks still running
  // are re-queued at the next start as after a crash).
  const absl::Duration limit = o.drain_grace + absl::Seconds(15);
  std::thread([limit] {
    absl::SleepFor(limit);
    spdlog::critical("shutdown did not finish within {}; exiting now",
                     absl::FormatDuration(limit));
    spdlog::default_logger()->flush();
    _exit(1);
  }).detach();
  (*server)->Shutdown();
  // Exit code 3: the worker pool was lost; restart forqd (systemd's
  // Restart=on-failure, a container restart policy) to get a new one.
  return (*server)->pool_lost() ? 3 : 0;
}
