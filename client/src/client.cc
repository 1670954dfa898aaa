#include "forq/client.h"

#include <algorithm>
#include <deque>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/util/time_util.h"
#include "grpcpp/grpcpp.h"

#include "client/src/channel_credentials.h"
#include "client/src/wait_mux.h"
#include "common/notification.h"
#include "forq/v1/pool.grpc.pb.h"
#include "forq/v1/task.grpc.pb.h"

namespace forq {
namespace {

using google::protobuf::util::TimeUtil;

// The server caps one Wait at this; longer waits loop.
constexpr absl::Duration kMaxWaitPerCall = absl::Seconds(60);

google::protobuf::Duration ToProto(absl::Duration d) {
  return TimeUtil::NanosecondsToDuration(absl::ToInt64Nanoseconds(d));
}

void SetDeadline(grpc::ClientContext& ctx, absl::Duration d) {
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + d));
}

// A SubmitBatch request of `specs` (one copy of each); `brief` asks for
// short answers of unfinished tasks (SubmitBatchRequest.brief).
void FillBatch(absl::Span<const v1::TaskSpec> specs, bool brief,
               v1::SubmitBatchRequest& req) {
  req.mutable_tasks()->Reserve(static_cast<int>(specs.size()));
  for (const auto& spec : specs) *req.add_tasks() = spec;
  req.set_brief(brief);
}

// What a failed connection attempt's gRPC message says, for people:
// "connection refused" for the common case (nothing listens), else the
// message itself.
std::string ConnectFailure(const std::string& grpc_message) {
  if (absl::StrContains(absl::AsciiStrToLower(grpc_message),
                        "connection refused")) {
    return "connection refused";
  }
  return grpc_message;
}

absl::Status NotConnectedWithin(const std::string& address,
                                absl::Duration timeout) {
  return absl::UnavailableError(absl::StrCat("cannot connect to forqd at ",
                                             address, " within ",
                                             absl::FormatDuration(timeout)));
}

// A call that does not wait for readiness: on a channel in
// TRANSIENT_FAILURE it fails at once with the last connection error.
grpc::Status ProbeChannel(const std::shared_ptr<grpc::Channel>& channel,
                          absl::Time deadline) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(deadline));
  ctx.set_wait_for_ready(false);
  v1::Task task;
  return v1::TaskService::NewStub(channel)->Get(&ctx, v1::GetTaskRequest(),
                                                &task);
}

// Waits until `channel` is ready, at most `timeout`. A failed connection
// attempt (nothing listens, a TLS mismatch) puts the channel in
// TRANSIENT_FAILURE within milliseconds, and that fails at once with the
// reason; a forqd that accepts but is slow to answer keeps the channel
// CONNECTING and is waited for.
absl::Status AwaitReady(const std::shared_ptr<grpc::Channel>& channel,
                        const std::string& address, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  grpc_connectivity_state state = channel->GetState(/*try_to_connect=*/true);
  while (state != GRPC_CHANNEL_READY) {
    if (state == GRPC_CHANNEL_TRANSIENT_FAILURE) {
      const grpc::Status why = ProbeChannel(channel, deadline);
      const bool answered =
          channel->GetState(/*try_to_connect=*/false) == GRPC_CHANNEL_READY;
      if (why.error_code() == grpc::StatusCode::UNAVAILABLE && !answered) {
        return absl::UnavailableError(
            absl::StrCat("cannot reach forqd at ", address, " (",
                         ConnectFailure(why.error_message()), ")"));
      }
      if (answered) return absl::OkStatus();
    }
    if (!channel->WaitForStateChange(state, absl::ToChronoTime(deadline))) {
      return NotConnectedWithin(address, timeout);
    }
    state = channel->GetState(/*try_to_connect=*/true);
  }
  return absl::OkStatus();
}

// Waits until `channel` is ready, through failed attempts, at most
// `timeout` (ClientOptions::wait_for_server).
absl::Status AwaitConnected(const std::shared_ptr<grpc::Channel>& channel,
                            const std::string& address,
                            absl::Duration timeout) {
  if (channel->WaitForConnected(absl::ToChronoTime(absl::Now() + timeout))) {
    return absl::OkStatus();
  }
  return NotConnectedWithin(address, timeout);
}

}  // namespace

absl::string_view StateName(v1::TaskState state) {
  switch (state) {
    case v1::QUEUED:
      return "QUEUED";
    case v1::RUNNING:
      return "RUNNING";
    case v1::SUCCEEDED:
      return "SUCCEEDED";
    case v1::FAILED:
      return "FAILED";
    case v1::DEAD:
      return "DEAD";
    case v1::CANCELLED:
      return "CANCELLED";
    default:
      return "UNSPECIFIED";
  }
}

absl::StatusOr<v1::TaskState> ParseState(absl::string_view name) {
  v1::TaskState state;
  if (!v1::TaskState_Parse(absl::AsciiStrToUpper(name), &state) ||
      state == v1::TASK_STATE_UNSPECIFIED) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown task state '", name,
        "' (want queued, running, succeeded, failed, dead or cancelled)"));
  }
  return state;
}

absl::StatusOr<std::string> TaskResult(const v1::Task& task) {
  if (task.state() == v1::SUCCEEDED) return task.result();
  if (!IsTerminal(task.state())) {
    return absl::FailedPreconditionError(
        absl::StrCat("task ", task.id(), " is ", StateName(task.state())));
  }
  auto code = static_cast<absl::StatusCode>(task.error().code());
  if (code == absl::StatusCode::kOk) code = absl::StatusCode::kUnknown;
  if (task.state() == v1::CANCELLED) code = absl::StatusCode::kCancelled;
  std::string msg = task.error().message();
  if (msg.empty()) msg = absl::StrCat("task ", StateName(task.state()));
  return absl::Status(code, absl::StrCat(StateName(task.state()), ": ", msg));
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      status.error_message());
}

// ---- TaskFuture ----

absl::StatusOr<v1::Task> TaskFuture::Wait() const {
  // forqd answers a Submit with a terminal task only once that state is
  // stored (an idempotency key of a finished task, or an attempt that ended
  // within the insert's commit): nothing to wait for.
  if (IsTerminal(task_.state())) return task_;
  return client_->AwaitTask(id(), absl::InfiniteFuture());
}

absl::StatusOr<v1::Task> TaskFuture::WaitFor(absl::Duration timeout) const {
  if (IsTerminal(task_.state())) return task_;
  absl::StatusOr<v1::Task> t = client_->AwaitTask(id(), absl::Now() + timeout);
  if (!t.ok() && t.status().code() == absl::StatusCode::kDeadlineExceeded) {
    return absl::DeadlineExceededError(absl::StrCat(
        "task ", id(), " not finished after ", absl::FormatDuration(timeout)));
  }
  return t;
}

absl::StatusOr<std::string> TaskFuture::Get() const {
  absl::StatusOr<v1::Task> t = Wait();
  if (!t.ok()) return t.status();
  return TaskResult(*t);
}

absl::StatusOr<std::string> TaskFuture::Get(absl::Duration timeout) const {
  absl::StatusOr<v1::Task> t = WaitFor(timeout);
  if (!t.ok()) return t.status();
  return TaskResult(*t);
}

absl::StatusOr<bool> TaskFuture::Ready() const {
  if (IsTerminal(task_.state())) return true;
  if (ref_ != nullptr && client_->waits_->Arrived(id())) return true;
  absl::StatusOr<v1::Task> t = client_->Get(id());
  if (!t.ok()) return t.status();
  return IsTerminal(t->state());
}

absl::StatusOr<v1::Task> TaskFuture::Cancel() const {
  return client_->Cancel(id());
}

// ---- Client ----

struct Client::Stubs {
  std::unique_ptr<v1::TaskService::Stub> tasks;
  std::unique_ptr<v1::PoolService::Stub> pool;
};

Client::Client(ClientOptions options, std::shared_ptr<grpc::Channel> channel)
    : options_(std::move(options)),
      channel_(std::move(channel)),
      stubs_(std::make_unique<Stubs>()) {
  stubs_->tasks = v1::TaskService::NewStub(channel_);
  stubs_->pool = v1::PoolService::NewStub(channel_);
  if (options_.wait_stream) {
    waits_ = std::make_shared<client_internal::WaitMux>(channel_);
  }
}

Client::~Client() {
  if (waits_ != nullptr) waits_->Shutdown();
}

std::vector<TaskFuture> Client::MakeFutures(std::vector<v1::Task> tasks,
                                            const std::vector<bool>& existing) {
  // A task answered terminal (forqd stored that state before answering)
  // needs no wait on the stream.
  std::vector<std::shared_ptr<client_internal::WaitRef>> refs;
  if (waits_ != nullptr) {
    std::vector<std::string> ids;
    ids.reserve(tasks.size());
    for (const v1::Task& t : tasks) {
      if (!IsTerminal(t.state())) ids.push_back(t.id());
    }
    refs = waits_->Track(ids);
  }
  std::vector<TaskFuture> futures;
  futures.reserve(tasks.size());
  size_t next_ref = 0;
  for (size_t i = 0; i < tasks.size(); ++i) {
    std::shared_ptr<client_internal::WaitRef> ref;
    if (!IsTerminal(tasks[i].state()) && next_ref < refs.size()) {
      ref = refs[next_ref++];
    }
    futures.push_back(TaskFuture(this, std::move(tasks[i]),
                                 i < existing.size() && existing[i],
                                 std::move(ref)));
  }
  return futures;
}

absl::StatusOr<v1::Task> Client::AwaitTask(const std::string& id,
                                           absl::Time deadline) {
  if (waits_ == nullptr) return AwaitWithRpcs(id, deadline);
  if (!waits_->TakeLoneWait(id)) return waits_->Await(id, deadline);
  absl::StatusOr<v1::Task> t = AwaitWithRpcs(id, deadline);
  waits_->EndLoneWait(id, t.ok() ? &*t : nullptr);
  return t;
}

absl::StatusOr<v1::Task> Client::AwaitWithRpcs(const std::string& id,
                                               absl::Time deadline) {
  while (true) {
    absl::StatusOr<v1::WaitTaskResponse> r =
        Wait(id, std::min(deadline - absl::Now(), kMaxWaitPerCall));
    if (!r.ok()) {
      return absl::Status(
          r.status().code(),
          absl::StrCat("waiting for task ", id, ": ", r.status().message()));
    }
    if (r->done()) return r->task();
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("task ", id, " still ", StateName(r->task().state())));
    }
  }
}

absl::StatusOr<std::vector<v1::Task>> Client::WaitAll(
    const std::vector<std::string>& ids, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  if (waits_ != nullptr) return waits_->AwaitAll(ids, deadline);
  std::vector<v1::Task> tasks;
  tasks.reserve(ids.size());
  for (const std::string& id : ids) {
    absl::StatusOr<v1::Task> t = AwaitTask(id, deadline);
    if (!t.ok()) return t.status();
    tasks.push_back(*std::move(t));
  }
  return tasks;
}

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(ClientOptions options) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  // Subchannels of its own: with gRPC's process-wide pool, a Client made
  // right after forqd restarted could reuse a connection that another,
  // still living Client (or its futures) holds to the old process, and see
  // its first call fail with "Socket closed".
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  if (!options.tls_server_name.empty()) {
    args.SetSslTargetNameOverride(options.tls_server_name);
  }
  auto creds = client_internal::MakeChannelCredentials(options);
  if (!creds.ok()) return creds.status();
  auto channel = grpc::CreateCustomChannel(options.address, *creds, args);
  if (options.connect_timeout > absl::ZeroDuration()) {
    absl::Status ready =
        options.wait_for_server
            ? AwaitConnected(channel, options.address, options.connect_timeout)
            : AwaitReady(channel, options.address, options.connect_timeout);
    if (!ready.ok()) return ready;
  }
  return std::unique_ptr<Client>(new Client(std::move(options), channel));
}

v1::TaskSpec MakeTaskSpec(absl::string_view kind, absl::string_view payload,
                          const SubmitOptions& o) {
  v1::TaskSpec spec;
  spec.set_kind(std::string(kind));
  spec.set_payload(std::string(payload));
  spec.set_queue(o.queue);
  spec.set_priority(o.priority);
  spec.set_max_attempts(o.max_attempts);
  if (o.timeout > absl::ZeroDuration()) {
    *spec.mutable_timeout() = ToProto(o.timeout);
  }
  if (o.delay > absl::ZeroDuration()) *spec.mutable_delay() = ToProto(o.delay);
  spec.set_idempotency_key(o.idempotency_key);
  for (const auto& [k, v] : o.labels) (*spec.mutable_labels())[k] = v;
  return spec;
}

absl::StatusOr<TaskFuture> Client::Submit(absl::string_view kind,
                                          absl::string_view payload,
                                          const SubmitOptions& o) {
  return Submit(MakeTaskSpec(kind, payload, o));
}

absl::StatusOr<v1::SubmitResponse> Client::SubmitAndWait(
    const v1::TaskSpec& spec, absl::Duration wait) {
  wait = std::clamp(wait, absl::ZeroDuration(), kMaxWaitPerCall);
  grpc::ClientContext ctx;
  SetDeadline(ctx, wait + options_.rpc_timeout);
  v1::SubmitRequest req;
  *req.mutable_task() = spec;
  *req.mutable_wait() = ToProto(wait);
  v1::SubmitResponse resp;
  grpc::Status s = stubs_->tasks->Submit(&ctx, req, &resp);
  if (!s.ok()) return FromGrpcStatus(s);
  return resp;
}

absl::StatusOr<v1::Task> Client::Run(const v1::TaskSpec& spec) {
  absl::StatusOr<v1::SubmitResponse> resp =
      SubmitAndWait(spec, kMaxWaitPerCall);
  if (!resp.ok()) return resp.status();
  if (resp->done()) return std::move(*resp->mutable_task());
  // Still running after a whole wait: go on as a future would.
  return AwaitTask(resp->task().id(), absl::InfiniteFuture());
}

absl::StatusOr<std::string> Client::Apply(absl::string_view kind,
                                          absl::string_view payload,
                                          const SubmitOptions& o) {
  absl::StatusOr<v1::Task> t = Run(MakeTaskSpec(kind, payload, o));
  if (!t.ok()) return t.status();
  return TaskResult(*t);
}

absl::StatusOr<TaskFuture> Client::Submit(const v1::TaskSpec& spec) {
  grpc::ClientContext ctx;
  SetDeadline(ctx, options_.rpc_timeout);
  v1::SubmitRequest req;
  *req.mutable_task() = spec;
  v1::SubmitResponse resp;
  grpc::Status s = stubs_->tasks->Submit(&ctx, req, &resp);
  if (!s.ok()) return FromGrpcStatus(s);
  std::vector<v1::Task> tasks(1);
  tasks[0] = std::move(*resp.mutable_task());
  return std::move(MakeFutures(std::move(tasks), {resp.existing()})[0]);
}

absl::StatusOr<std::vector<TaskFuture>> Client::SubmitBatch(
    const std::vector<v1::TaskSpec>& specs) {
  return SubmitSlice(specs, /*brief=*/false);
}

absl::StatusOr<std::vector<TaskFuture>> Client::SubmitSlice(
    absl::Span<const v1::TaskSpec> specs, bool brief) {
  grpc::ClientContext ctx;
  SetDeadline(ctx, options_.rpc_timeout);
  v1::SubmitBatchRequest req;
  FillBatch(specs, brief, req);
  v1::SubmitBatchResponse resp;
  grpc::Status s = stubs_->tasks->SubmitBatch(&ctx, req, &resp);
  if (!s.ok()) return FromGrpcStatus(s);
  return FuturesOf(resp);
}

std::vector<TaskFuture> Client::FuturesOf(v1::SubmitBatchResponse& resp) {
  std::vector<v1::Task> tasks(
      std::make_move_iterator(resp.mutable_tasks()->begin()),
      std::make_move_iterator(resp.mutable_tasks()->end()));
  std::vector<bool> existing(resp.existing().begin(), resp.existing().end());
  return MakeFutures(std::move(tasks), existing);
}

namespace client_internal {
// One SubmitBatch call on gRPC's callback API; shared by the PendingBatch
// and the call's completion, whichever ends last frees it.
struct PendingBatchState {
  grpc::ClientContext ctx;
  v1::SubmitBatchRequest req;
  v1::SubmitBatchResponse resp;
  grpc::Status status;  // Written before `done` is notified.
  Notification done;
};
}  // namespace client_internal

PendingBatch Client::SubmitBatchAsync(const std::vector<v1::TaskSpec>& specs) {
  return SubmitSliceAsync(specs);
}

PendingBatch Client::SubmitSliceAsync(absl::Span<const v1::TaskSpec> specs) {
  auto state = std::make_shared<client_internal::PendingBatchState>();
  SetDeadline(state->ctx, options_.rpc_timeout);
  FillBatch(specs, /*brief=*/true, state->req);  // a future needs id, state
  // The callback lets go of the state before it notifies: the PendingBatch
  // waits for that notification before it lets go of its own reference,
  // so the state (its ClientContext holds a channel reference) is never
  // freed on a gRPC callback thread. Freed there, a context holding the
  // last reference of a Client's channel tore the channel down on that
  // thread (gRPC aborted: "ref_counted.h assertion failed: prior > 0").
  stubs_->tasks->async()->SubmitBatch(
      &state->ctx, &state->req, &state->resp, [state](grpc::Status s) mutable {
        client_internal::PendingBatchState* const raw = state.get();
        raw->status = std::move(s);
        state.reset();
        raw->done.Notify();
      });
  return PendingBatch(this, std::move(state));
}

absl::StatusOr<std::vector<TaskFuture>> Client::SubmitMany(
    const std::vector<v1::TaskSpec>& specs, const ManyOptions& options) {
  if (options.batch == 0 || options.in_flight == 0) {
    return absl::InvalidArgumentError(
        "SubmitMany: batch and in_flight must be at least 1");
  }
  std::vector<TaskFuture> futures;
  futures.reserve(specs.size());
  std::deque<PendingBatch> pending;
  auto collect = [&]() -> absl::Status {
    absl::StatusOr<std::vector<TaskFuture>> answered = pending.front().Wait();
    pending.pop_front();
    if (!answered.ok()) return answered.status();
    for (TaskFuture& f : *answered) futures.push_back(std::move(f));
    return absl::OkStatus();
  };
  const absl::Span<const v1::TaskSpec> all(specs);
  if (options.in_flight == 1) return SubmitOneAtATime(all, options.batch);
  for (size_t at = 0; at < all.size(); at += options.batch) {
    pending.push_back(SubmitSliceAsync(all.subspan(at, options.batch)));
    if (pending.size() >= options.in_flight) {
      if (absl::Status s = collect(); !s.ok()) return s;
    }
  }
  while (!pending.empty()) {
    if (absl::Status s = collect(); !s.ok()) return s;
  }
  return futures;
}

namespace client_internal {
// One SubmitBatch on a completion queue the submitting thread polls itself.
struct QueuedBatch {
  grpc::ClientContext ctx;
  v1::SubmitBatchRequest req;
  v1::SubmitBatchResponse resp;
  grpc::Status status;
  std::unique_ptr<grpc::ClientAsyncResponseReader<v1::SubmitBatchResponse>> rpc;
};
}  // namespace client_internal

// One batch in flight at a time, each sent once the one before it is
// acknowledged; the thread builds the next request while one travels, and
// makes the futures of an answer while the next one travels. It polls its
// own completion queue, as a blocking call does, so no other thread is
// woken for an answer.
absl::StatusOr<std::vector<TaskFuture>> Client::SubmitOneAtATime(
    absl::Span<const v1::TaskSpec> all, size_t batch) {
  using client_internal::QueuedBatch;
  std::vector<TaskFuture> futures;
  futures.reserve(all.size());
  if (all.empty()) return futures;
  grpc::CompletionQueue cq;
  auto prepare = [&](size_t at) {
    auto b = std::make_unique<QueuedBatch>();
    SetDeadline(b->ctx, options_.rpc_timeout);
    FillBatch(all.subspan(at, batch), /*brief=*/true, b->req);
    return b;
  };
  auto send = [&](QueuedBatch& b) {
    b.rpc = stubs_->tasks->AsyncSubmitBatch(&b.ctx, b.req, &cq);
    b.rpc->Finish(&b.resp, &b.status, &b);
  };
  std::unique_ptr<QueuedBatch> current = prepare(0);
  send(*current);
  absl::Status failed;
  for (size_t at = 0; at < all.size(); at += batch) {
    const bool more = at + batch < all.size();
    std::unique_ptr<QueuedBatch> next = more ? prepare(at + batch) : nullptr;
    void* tag = nullptr;
    bool ok = false;
    if (!cq.Next(&tag, &ok) || tag != current.get()) {
      failed = absl::InternalError("SubmitMany: lost a batch's answer");
      break;
    }
    if (!current->status.ok()) {
      failed = FromGrpcStatus(current->status);
      break;
    }
    if (more) send(*next);
    for (TaskFuture& f : FuturesOf(current->resp)) {
      futures.push_back(std::move(f));
    }
    current = std::move(next);
  }
  cq.Shutdown();
  void* tag = nullptr;
  bool ok = false;
  while (cq.Next(&tag, &ok)) {
  }
  if (!failed.ok()) return failed;
  return futures;
}

PendingBatch::PendingBatch(
    Client* client, std::shared_ptr<client_internal::PendingBatchState> state)
    : client_(client), state_(std::move(state)) {}

PendingBatch::~PendingBatch() { AwaitAnswer(); }

PendingBatch& PendingBatch::operator=(PendingBatch&& other) noexcept {
  if (this != &other) {
    AwaitAnswer();
    client_ = other.client_;
    state_ = std::move(other.state_);
  }
  return *this;
}

void PendingBatch::AwaitAnswer() {
  if (state_ != nullptr) state_->done.WaitForNotification();
}

absl::StatusOr<std::vector<TaskFuture>> PendingBatch::Wait() {
  if (state_ == nullptr) {
    return absl::FailedPreconditionError("PendingBatch::Wait called twice");
  }
  std::shared_ptr<client_internal::PendingBatchState> state = std::move(state_);
  state->done.WaitForNotification();
  if (!state->status.ok()) return FromGrpcStatus(state->status);
  return client_->FuturesOf(state->resp);
}

absl::StatusOr<v1::Task> Client::Get(absl::string_view id) {
  grpc::ClientContext ctx;
  SetDeadline(ctx, options_.rpc_timeout);
  v1::GetTaskRequest req;
  req.set_id(std::string(id));
  v1::Task task;
  grpc::Status s = stubs_->tasks->Get(&ctx, req, &task);
  if (!s.ok()) return FromGrpcStatus(s);
  return task;
}

absl::StatusOr<v1::WaitTaskResponse> Client::Wait(absl::string_view id,
                                                  absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    absl::Duration left =
        std::max(deadline - absl::Now(), absl::ZeroDuration());
    absl::Duration slice = std::min(left, kMaxWaitPerCall);
    grpc::ClientContext ctx;
    SetDeadline(ctx, slice + options_.rpc_timeout);
    v1::WaitTaskRequest req;
    req.set_id(std::string(id));
    // A zero timeout asks the server for its current view without waiting.
    *req.mutable_timeout() = ToProto(std::max(slice, absl::Nanoseconds(1)));
    v1::WaitTaskResponse resp;
    grpc::Status s = stubs_->tasks->Wait(&ctx, req, &resp);
    if (!s.ok()) return FromGrpcStatus(s);
    if (resp.done() || absl::Now() >= deadline) return resp;
  }
}

absl::StatusOr<v1::Task> Client::Cancel(absl::string_view id) {
  grpc::ClientContext ctx;
  SetDeadline(ctx, options_.rpc_timeout);
  v1::CancelTaskRequest req;
  req.set_id(std::string(id));
  v1::Task task;
  grpc::Status s = stubs_->tasks->Cancel(&ctx, req, &task);
  if (!s.ok()) return FromGrpcStatus(s);
  return task;
}

absl::StatusOr<v1::Task> Client::Retry(absl::string_view id) {
  grpc::ClientContext ctx;
  SetDeadline(ctx, options_.rpc_timeout);
  v1::RetryTaskRequest req;
  req.set_id(std::string(id));
  v1::Task task;
  grpc::Status s = stubs_->tasks->Retry(&ctx, req, &task);
  if (!s.ok()) return FromGrpcStatus(s);
  return task;
}

absl::StatusOr<v1::ListTasksResponse> Client::List(
    const v1::ListTasksRequest& request) {
  grpc::ClientContext ctx;
  SetDeadline(ctx, options_.rpc_timeout);
  v1::ListTasksResponse resp;
  grpc::Status s = stubs_->tasks->List(&ctx, request, &resp);
  if (!s.ok()) return FromGrpcStatus(s);
  return resp;
}

absl::StatusOr<v1::PoolStatus> Client::GetPool() {
  grpc::ClientContext ctx;
  SetDeadline(ctx, options_.rpc_timeout);
  v1::PoolStatus resp;
  grpc::Status s = stubs_->pool->GetPool(&ctx, v1::GetPoolRequest(), &resp);
  if (!s.ok()) return FromGrpcStatus(s);
  return resp;
}

absl::StatusOr<v1::DrainResponse> Client::Drain(absl::Duration timeout) {
  grpc::ClientContext ctx;
  SetDeadline(ctx, timeout + options_.rpc_timeout);
  v1::DrainRequest req;
  *req.mutable_timeout() = ToProto(timeout);
  v1::DrainResponse resp;
  grpc::Status s = stubs_->pool->Drain(&ctx, req, &resp);
  if (!s.ok()) return FromGrpcStatus(s);
  return resp;
}

absl::StatusOr<v1::PoolStatus> Client::Resume() {
  grpc::ClientContext ctx;
  SetDeadline(ctx, options_.rpc_timeout);
  v1::PoolStatus resp;
  grpc::Status s = stubs_->pool->Resume(&ctx, v1::ResumeRequest(), &resp);
  if (!s.ok()) return FromGrpcStatus(s);
  return resp;
}

}  // namespace forq
