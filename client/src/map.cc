#include "forq/map.h"

#include <algorithm>
#include <atomic>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/util/time_util.h"
#include "grpcpp/grpcpp.h"

#include "forq/client.h"
#include "forq/v1/task.grpc.pb.h"

namespace forq {

// One MapBatched RPC driven by the iterating thread (sync bidi stream). The
// writer and the reader are the same thread: once the results of the last
// message have all been yielded, the window is topped up with one Write
// (many inputs per message) before the next Read (many results per
// message). The server keeps reading while its own in-flight count is below
// the window, and its count never exceeds ours, so a Write cannot block on a
// server that waits for us to read.
struct MapStream::State {
  // A request message is closed once its payloads hold about this much.
  static constexpr size_t kMaxRequestBytes = 1 << 20;

  std::unique_ptr<v1::TaskService::Stub> stub;
  grpc::ClientContext ctx;
  std::unique_ptr<grpc::ClientReaderWriter<v1::MapRequest, v1::MapResults>> rpc;
  MapSource inputs;
  std::function<void()> on_close;
  int window = kDefaultMapWindow;
  int64_t window_bytes = kDefaultMapWindowBytes;
  uint64_t in_flight = 0;
  // Payload bytes of the inputs in flight, and each one's by index: only
  // inputs above kSmallPayload count (the window bounds the others to
  // kMaxMapWindow KiB), so small ones cost no bookkeeping.
  static constexpr int64_t kSmallPayload = 1024;
  int64_t bytes_in_flight = 0;
  absl::flat_hash_map<uint64_t, int64_t> sizes;
  uint64_t next_index = 0;
  // Pulled, and waiting for window_bytes to have room.
  std::optional<MapInput> held;
  uint64_t delivered = 0;
  bool writes_closed = false;
  bool inputs_done = false;
  bool done = false;
  // Set by Cancel() from any thread, read by the iterating thread. Relaxed
  // is enough: it only stops further Writes early; TryCancel is what ends
  // the call, and gRPC synchronises that itself.
  std::atomic<bool> cancelled{false};
  absl::Status status;
  v1::MapRequest req;
  v1::MapResults resp;
  // Next unread result in resp.
  int next_result = 0;
  MapItem item;

  ~State() {
    if (!done && rpc != nullptr) {
      // Abandoned mid-stream: cancel so Finish returns promptly.
      ctx.TryCancel();
      rpc->Finish();
    }
    Close();
  }

  void Close() {
    if (on_close) std::exchange(on_close, nullptr)();
  }

  void CloseWrites() {
    if (writes_closed) return;
    writes_closed = true;
    rpc->WritesDone();
  }

  void FillWindow() {
    while (!writes_closed && in_flight < static_cast<uint64_t>(window)) {
      v1::MapInputs* batch = req.mutable_inputs();
      batch->clear_inputs();
      size_t bytes = 0;
      while (in_flight + batch->inputs_size() < static_cast<uint64_t>(window) &&
             bytes < kMaxRequestBytes) {
        if (cancelled.load(std::memory_order_relaxed)) break;
        if (!held.has_value()) held = inputs.Pull();
        if (!held.has_value()) {
          inputs_done = true;
          break;
        }
        const auto size = static_cast<int64_t>(held->payload.size());
        const bool counted = size > kSmallPayload;
        if (counted && in_flight + batch->inputs_size() > 0 &&
            bytes_in_flight + size > window_bytes) {
          break;  // sent once results made room
        }
        bytes += held->payload.size() + held->kind.size() + 8;
        if (counted) {
          bytes_in_flight += size;
          sizes[next_index] = size;
        }
        ++next_index;
        v1::MapInput* m = batch->add_inputs();
        m->set_kind(std::move(held->kind));
        m->set_payload(std::move(held->payload));
        held.reset();
      }
      if (batch->inputs_size() > 0) {
        if (!rpc->Write(req)) {
          // The call is over; Finish below says why.
          writes_closed = true;
          return;
        }
        in_flight += batch->inputs_size();
      }
      if (inputs_done || cancelled.load(std::memory_order_relaxed)) {
        CloseWrites();
        return;
      }
      if (held.has_value()) return;  // window_bytes is full
    }
  }

  // Ends the call and records its status.
  void End() {
    done = true;
    if (rpc != nullptr) {
      grpc::Status s = rpc->Finish();
      status = FromGrpcStatus(s);
      if (status.ok() && in_flight > 0) {
        status = absl::InternalError(absl::StrCat(
            "Map stream ended with ", in_flight, " results missing"));
      }
      if (cancelled.load(std::memory_order_relaxed) &&
          status.code() != absl::StatusCode::kAborted) {
        status = absl::CancelledError("Map stream cancelled");
      }
    }
    Close();
  }

  const MapItem* Next() {
    if (done) return nullptr;
    if (next_result >= resp.results_size()) {
      FillWindow();
      if (in_flight == 0 && writes_closed) {
        End();
        return nullptr;
      }
      do {
        if (!rpc->Read(&resp)) {
          End();
          return nullptr;
        }
      } while (resp.results_size() == 0);
      next_result = 0;
      in_flight -= std::min<uint64_t>(in_flight, resp.results_size());
      for (const v1::MapResult& r : resp.results()) {
        if (sizes.empty()) break;
        auto it = sizes.find(r.index());
        if (it == sizes.end()) continue;
        bytes_in_flight -= it->second;
        sizes.erase(it);
      }
    }
    v1::MapResult& r = *resp.mutable_results(next_result++);
    ++delivered;
    item.index = r.index();
    item.task_id = std::move(*r.mutable_task_id());
    item.state = r.state();
    item.attempt = r.attempt();
    item.error = std::move(*r.mutable_error());
    item.result.clear();
    if (item.state == v1::SUCCEEDED) {
      item.status = absl::OkStatus();
      item.result = std::move(*r.mutable_result());
    } else {
      auto code = static_cast<absl::StatusCode>(item.error.code());
      if (code == absl::StatusCode::kOk) code = absl::StatusCode::kUnknown;
      if (item.state == v1::CANCELLED) code = absl::StatusCode::kCancelled;
      std::string msg = item.error.message();
      if (msg.empty()) msg = "task ended without a message";
      item.status =
          absl::Status(code, absl::StrCat(StateName(item.state), ": ", msg));
    }
    return &item;
  }
};

namespace {

absl::Status CheckWindow(const MapOptions& options) {
  if (options.window < 0 || options.window > kMaxMapWindow) {
    return absl::InvalidArgumentError(absl::StrCat("Map window must be in [0, ",
                                                   kMaxMapWindow, "], got ",
                                                   options.window));
  }
  if (options.window_bytes < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Map window_bytes must not be negative, got ", options.window_bytes));
  }
  return absl::OkStatus();
}

}  // namespace

MapStream::MapStream(std::unique_ptr<State> state) : state_(std::move(state)) {}
MapStream::MapStream(MapStream&&) noexcept = default;
MapStream& MapStream::operator=(MapStream&&) noexcept = default;

MapStream::~MapStream() = default;

MapStream MapStream::Open(const std::shared_ptr<grpc::Channel>& channel,
                          absl::string_view kind, MapSource inputs,
                          const MapOptions& options, bool ordered,
                          std::function<void()> on_close) {
  auto st = std::make_unique<State>();
  st->inputs = std::move(inputs);
  st->on_close = std::move(on_close);
  if (absl::Status bad = CheckWindow(options); !bad.ok()) {
    st->status = std::move(bad);
    st->End();
    return MapStream(std::move(st));
  }
  st->window = options.window == 0 ? kDefaultMapWindow : options.window;
  st->window_bytes =
      options.window_bytes == 0 ? kDefaultMapWindowBytes : options.window_bytes;
  st->stub = v1::TaskService::NewStub(channel);
  st->rpc = st->stub->MapBatched(&st->ctx);
  v1::MapRequest header_req;
  v1::MapHeader* h = header_req.mutable_header();
  h->set_kind(std::string(kind));
  h->set_queue(options.queue);
  h->set_priority(options.priority);
  h->set_max_attempts(options.max_attempts);
  if (options.timeout > absl::ZeroDuration()) {
    *h->mutable_timeout() =
        google::protobuf::util::TimeUtil::NanosecondsToDuration(
            absl::ToInt64Nanoseconds(options.timeout));
  }
  h->set_ordered(ordered);
  h->set_window(st->window);
  h->set_fail_fast(options.fail_fast);
  h->set_keep_queued_on_cancel(options.keep_queued_on_cancel);
  if (!st->rpc->Write(header_req)) st->writes_closed = true;
  return MapStream(std::move(st));
}

MapStream MapStream::Failed(absl::Status status) {
  auto st = std::make_unique<State>();
  st->status = std::move(status);
  st->done = true;
  return MapStream(std::move(st));
}

const MapItem* MapStream::Next() {
  return state_ == nullptr ? nullptr : state_->Next();
}

absl::Status MapStream::status() const {
  return state_ == nullptr ? absl::OkStatus() : state_->status;
}

bool MapStream::done() const { return state_ == nullptr || state_->done; }

uint64_t MapStream::delivered() const {
  return state_ == nullptr ? 0 : state_->delivered;
}

void MapStream::Cancel() {
  if (state_ == nullptr || state_->rpc == nullptr) return;
  state_->cancelled.store(true, std::memory_order_relaxed);
  state_->ctx.TryCancel();
}

MapStream Client::Map(absl::string_view kind, MapSource inputs,
                      const MapOptions& options) {
  return MapStream::Open(channel(), kind, std::move(inputs), options,
                         /*ordered=*/true);
}

MapStream Client::MapUnordered(absl::string_view kind, MapSource inputs,
                               const MapOptions& options) {
  return MapStream::Open(channel(), kind, std::move(inputs), options,
                         /*ordered=*/false);
}

}  // namespace forq
