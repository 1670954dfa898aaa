#include "server/server.h"

#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "spdlog/spdlog.h"

#include "server/rpc/pool_service.h"
#include "server/rpc/task_service.h"

namespace forq::server {

struct Server::Services {
  std::unique_ptr<TaskServiceImpl> tasks;
  std::unique_ptr<PoolServiceImpl> pool;
};

Server::Server(ServerOptions options)
    : options_(std::move(options)), services_(std::make_unique<Services>()) {}

Server::~Server() { Shutdown(); }

absl::StatusOr<std::unique_ptr<Server>> Server::Create(ServerOptions options) {
  std::unique_ptr<Server> server(new Server(std::move(options)));
  absl::StatusOr<std::unique_ptr<worker::WorkerPool>> pool =
      worker::CreateForkPool(server->options_.pool);
  if (!pool.ok()) return pool.status();
  server->pool_ = std::move(*pool);
  return server;
}

absl::Status Server::Start() {
  absl::StatusOr<std::unique_ptr<Store>> store = OpenStore(options_.store);
  if (!store.ok()) return store.status();
  store_ = std::move(*store);

  scheduler_ = std::make_unique<Scheduler>(options_.scheduler, *store_, *pool_,
                                           metrics_);
  absl::Status s = scheduler_->Start();
  if (!s.ok()) return s;

  services_->tasks = std::make_unique<TaskServiceImpl>(*scheduler_);
  services_->pool = std::make_unique<PoolServiceImpl>(*scheduler_, *pool_);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options_.grpc_addr,
                           grpc::InsecureServerCredentials(), &grpc_port_);
  builder.SetMaxReceiveMessageSize(options_.max_message_bytes);
  builder.SetMaxSendMessageSize(options_.max_message_bytes);
  builder.RegisterService(services_->tasks.get());
  builder.RegisterService(services_->pool.get());
  grpc_server_ = builder.BuildAndStart();
  if (grpc_server_ == nullptr || grpc_port_ == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen for gRPC on ", options_.grpc_addr,
                     " (address in use or invalid?)"));
  }
  grpc_server_->GetHealthCheckService()->SetServingStatus(true);

  spdlog::info(
      "forqd serving gRPC on port {} with {} workers (store: {} in {})",
      grpc_port_, pool_->size(), options_.store.kind, options_.store.data_dir);
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
  if (grpc_server_ != nullptr) {
    grpc_server_->GetHealthCheckService()->SetServingStatus(false);
  }
  if (scheduler_ != nullptr) scheduler_->Shutdown(options_.drain_grace);
  if (grpc_server_ != nullptr) {
    grpc_server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
  }
  if (pool_ != nullptr) pool_->Shutdown();
  if (store_ != nullptr) store_->Close();
  spdlog::info("forqd stopped");
}

}  // namespace forq::server
