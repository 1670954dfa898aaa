#include "forq/executor.h"

#include <utility>

#include "client/src/task_tracker.h"

namespace forq {

Executor::Executor(Client& client, ExecutorOptions options)
    : client_(client),
      options_(std::move(options)),
      tracker_(std::make_shared<client_internal::TaskTracker>(client)) {}

Executor::~Executor() {
  if (wait_on_destroy_) {
    (void)Shutdown(/*wait=*/true);
  } else {
    tracker_->Close();
  }
}

SubmitOptions Executor::TaskOptions() const {
  SubmitOptions so;
  so.queue = options_.queue;
  so.priority = options_.priority;
  so.max_attempts = options_.max_attempts;
  so.timeout = options_.timeout;
  return so;
}

absl::StatusOr<TaskFuture> Executor::Submit(absl::string_view kind,
                                            absl::string_view payload) {
  if (!tracker_->BeginSubmit()) {
    return absl::UnavailableError("executor is shut down");
  }
  absl::StatusOr<TaskFuture> f = client_.Submit(kind, payload, TaskOptions());
  tracker_->EndSubmit(f.ok() ? f->id() : std::string());
  return f;
}

absl::StatusOr<std::string> Executor::Run(absl::string_view kind,
                                          absl::string_view payload) {
  if (!tracker_->BeginSubmit()) {
    return absl::UnavailableError("executor is shut down");
  }
  // Finished when it returns: nothing for Shutdown to wait for.
  absl::StatusOr<std::string> r = client_.Apply(kind, payload, TaskOptions());
  tracker_->EndSubmit(std::string());
  return r;
}

MapStream Executor::OpenMap(absl::string_view kind, MapSource inputs,
                            bool ordered, bool fail_fast) {
  if (!tracker_->BeginStream()) {
    return MapStream::Failed(absl::UnavailableError("executor is shut down"));
  }
  MapOptions mo;
  mo.queue = options_.queue;
  mo.priority = options_.priority;
  mo.max_attempts = options_.max_attempts;
  mo.timeout = options_.timeout;
  mo.window = options_.map_window;
  mo.fail_fast = fail_fast;
  // The stream may outlive this executor, hence the shared tracker.
  std::shared_ptr<client_internal::TaskTracker> tracker = tracker_;
  return MapStream::Open(client_.channel(), kind, std::move(inputs), mo,
                         ordered, [tracker] { tracker->EndStream(); });
}

MapStream Executor::Map(absl::string_view kind, MapSource inputs) {
  return OpenMap(kind, std::move(inputs), /*ordered=*/true,
                 /*fail_fast=*/false);
}

MapStream Executor::MapUnordered(absl::string_view kind, MapSource inputs) {
  return OpenMap(kind, std::move(inputs), /*ordered=*/false,
                 /*fail_fast=*/false);
}

absl::Status Executor::Shutdown(bool wait, bool cancel_futures) {
  tracker_->Close();
  absl::Status status;
  if (cancel_futures) status = tracker_->CancelAll();
  if (wait) {
    absl::Status w = tracker_->WaitAll();
    if (status.ok()) status = w;
  }
  return status;
}

bool Executor::is_shutdown() const { return tracker_->closed(); }

}  // namespace forq
