#include "server/rpc/task_service.h"

#include <algorithm>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"

#include "common/mutex.h"
#include "server/auth/request_checks.h"
#include "server/rpc/status_util.h"
#include "server/scheduler/task_proto.h"

namespace forq::server {
namespace {

// Streamed messages that batch tasks or results are closed once they hold
// about this many bytes: small next to the server's max_message_bytes (64
// MiB by default), and big enough to amortise a write.
constexpr size_t kBatchMessageBytes = 4 << 20;

// Time left before the client's deadline (capped to a day).
absl::Duration TimeLeft(grpc::CallbackServerContext* ctx) {
  absl::Time deadline = absl::FromChrono(ctx->deadline());
  return std::min(deadline - absl::Now(), absl::Hours(24));
}

// Counts one call when it finishes (a null method counts nothing).
class Meter {
 public:
  explicit Meter(GrpcMetrics::Method* method)
      : method_(method),
        start_(method != nullptr ? GrpcMetrics::Clock::now()
                                 : GrpcMetrics::Clock::time_point()) {}
  void Done(grpc::StatusCode code) const {
    if (method_ != nullptr) method_->Record(code, start_);
  }
  // Counts, then finishes a unary call.
  void Finish(grpc::ServerUnaryReactor* reactor, grpc::Status status) const {
    Done(status.error_code());
    reactor->Finish(std::move(status));
  }

 private:
  GrpcMetrics::Method* method_;
  GrpcMetrics::Clock::time_point start_;
};

// Shared between a reactor and the callbacks it hands to the scheduler: the
// callbacks may fire after the reactor is gone, so they reach it only through
// this guard, whose pointer OnDone clears under the same mutex.
template <typename R>
struct ReactorGuard {
  Mutex mu;
  R* reactor ABSL_GUARDED_BY(mu) = nullptr;

  // Called from OnDone: later callbacks find no reactor and do nothing.
  void Detach() {
    MutexLock lock(&mu);
    reactor = nullptr;
  }
};

// A scheduler callback that finishes a unary call with a task or an error.
std::function<void(absl::StatusOr<v1::Task>)> FinishWithTask(
    grpc::ServerUnaryReactor* reactor, v1::Task* resp, Meter meter) {
  return [reactor, resp, meter](absl::StatusOr<v1::Task> t) {
    if (!t.ok()) {
      meter.Finish(reactor, ToGrpcStatus(t.status()));
      return;
    }
    *resp = std::move(*t);
    meter.Finish(reactor, grpc::Status::OK);
  };
}

// A unary call that ends by waiting for a task: Wait, and Submit with
// `wait`. Parks in the scheduler (no thread held); `fill` writes the task
// and whether it is terminal into the response.
class TaskWaitReactor final : public grpc::ServerUnaryReactor {
 public:
  using Fill = std::function<void(v1::Task, bool terminal)>;

  // `persist`: the task was submitted with Scheduler::Ack::kDeferred, so an
  // answer that it is unfinished must wait until it is stored.
  TaskWaitReactor(Scheduler& scheduler, Meter meter, Fill fill,
                  bool persist = false)
      : scheduler_(scheduler),
        meter_(meter),
        fill_(std::move(fill)),
        persist_(persist),
        guard_(std::make_shared<ReactorGuard<TaskWaitReactor>>()) {
    MutexLock lock(&guard_->mu);
    guard_->reactor = this;
  }

  // Parks until `id` is terminal or `timeout` has passed.
  void Start(absl::string_view id, absl::Duration timeout) {
    {
      MutexLock lock(&guard_->mu);
      if (finished_) return;
      if (cancelled_) {
        FinishLocked(
            grpc::Status(grpc::StatusCode::CANCELLED, "wait cancelled"));
        return;
      }
    }
    auto complete = [guard = guard_](absl::StatusOr<v1::Task> task,
                                     bool terminal) {
      MutexLock lock(&guard->mu);
      if (guard->reactor != nullptr) {
        guard->reactor->CompleteLocked(std::move(task), terminal);
      }
    };
    uint64_t handle = scheduler_.Wait(
        id, timeout,
        [complete, persist = persist_, &scheduler = scheduler_,
         id = std::string(id)](absl::StatusOr<v1::Task> task, bool terminal) {
          if (!persist || terminal || !task.ok()) {
            complete(std::move(task), terminal);
            return;
          }
          scheduler.Persist(id, [complete, task = *std::move(task)](
                                    absl::Status stored) mutable {
            if (stored.ok()) {
              complete(std::move(task), false);
            } else {
              complete(stored, false);
            }
          });
        });
    MutexLock lock(&guard_->mu);
    handle_ = handle;
  }

  // Ends the call with `status` (when no wait is needed, or on an error).
  void End(grpc::Status status) {
    MutexLock lock(&guard_->mu);
    FinishLocked(std::move(status));
  }

  void OnCancel() override {
    MutexLock lock(&guard_->mu);
    cancelled_ = true;
    if (finished_) return;
    if (handle_ != 0 && scheduler_.CancelWait(handle_)) {
      FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "wait cancelled"));
    }
  }

  // gRPC callback reactors own themselves: deleted when gRPC is done.
  void OnDone() override {
    guard_->Detach();
    delete this;
  }

 private:
  void FinishLocked(grpc::Status status)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(guard_->mu) {
    if (finished_) return;
    finished_ = true;
    meter_.Done(status.error_code());
    Finish(std::move(status));
  }

  // Called with guard_->mu held, through the guard (which the analysis
  // cannot tie to guard_).
  void CompleteLocked(absl::StatusOr<v1::Task> task, bool terminal) {
    guard_->mu.AssertHeld();
    if (finished_) return;
    if (!task.ok()) {
      FinishLocked(ToGrpcStatus(task.status()));
      return;
    }
    fill_(std::move(*task), terminal);
    FinishLocked(grpc::Status::OK);
  }

  Scheduler& scheduler_;
  const Meter meter_;
  const Fill fill_;
  const bool persist_;
  std::shared_ptr<ReactorGuard<TaskWaitReactor>> guard_;
  uint64_t handle_ ABSL_GUARDED_BY(guard_->mu) = 0;
  bool finished_ ABSL_GUARDED_BY(guard_->mu) = false;
  bool cancelled_ ABSL_GUARDED_BY(guard_->mu) = false;
};

// WaitStream: many waits on one call. Each id read is parked in the
// scheduler (Scheduler::Wait, no thread held); answers that become ready while
// a write is in flight are coalesced into the next message. Raw bytes, parsed
// here (as for Map): a message that does not parse ends the stream
// INVALID_ARGUMENT instead of passing for the client's half-close.
class WaitStreamReactor final
    : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  // Pending ids per stream; more are answered RESOURCE_EXHAUSTED.
  static constexpr size_t kMaxPending = 1'000'000;
  // A wait that ends non-terminal sooner than this (rather than by timing
  // out) is answered ABORTED: the client sends the id again.
  static constexpr absl::Duration kMinRearmInterval = absl::Seconds(1);

  WaitStreamReactor(Scheduler& scheduler, Meter meter)
      : scheduler_(scheduler),
        meter_(meter),
        guard_(std::make_shared<Guard>()) {
    {
      MutexLock lock(&guard_->mu);
      guard_->reactor = this;
    }
    StartRead(&in_buf_);
  }

  void OnReadDone(bool ok) override {
    std::vector<std::pair<std::string, uint64_t>> arm;
    {
      MutexLock lock(&guard_->mu);
      if (finished_) return;
      if (!ok) {
        reads_done_ = true;
        MaybeFinishLocked();
        return;
      }
      ++messages_read_;
      req_.Clear();
      if (!grpc::SerializationTraits<v1::WaitStreamRequest>::Deserialize(
               &in_buf_, &req_)
               .ok()) {
        FinishLocked(ToGrpcStatus(MalformedStreamMessage(
            "/forq.v1.TaskService/WaitStream",
            v1::WaitStreamRequest::descriptor()->full_name(), messages_read_)));
        return;
      }
      for (const std::string& id : req_.cancel_ids()) {
        auto it = waits_.find(id);
        if (it == waits_.end()) continue;
        // A handle of 0 is still being armed; Arm cancels it when it finds
        // the entry gone.
        if (it->second.handle != 0) scheduler_.CancelWait(it->second.handle);
        waits_.erase(it);
      }
      for (const std::string& id : req_.ids()) {
        if (waits_.count(id) != 0) continue;  // shares the pending wait
        if (waits_.size() >= kMaxPending) {
          AddErrorLocked(id, absl::ResourceExhaustedError(absl::StrCat(
                                 "more than ", kMaxPending,
                                 " pending waits on one WaitStream")));
          continue;
        }
        const uint64_t gen = ++next_gen_;
        waits_.emplace(id, Pending{gen, 0});
        arm.emplace_back(id, gen);
      }
      MaybeWriteLocked();
    }
    // Scheduler::Wait may answer inline, which takes our lock.
    for (auto& [id, gen] : arm) Arm(scheduler_, guard_, std::move(id), gen);
    MutexLock lock(&guard_->mu);
    if (!finished_) StartRead(&in_buf_);
  }

  void OnWriteDone(bool ok) override {
    MutexLock lock(&guard_->mu);
    writing_ = false;
    if (!ok) {
      FinishLocked(grpc::Status(grpc::StatusCode::UNAVAILABLE, "write failed"));
      return;
    }
    MaybeWriteLocked();
    MaybeFinishLocked();
  }

  void OnCancel() override {
    MutexLock lock(&guard_->mu);
    FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "wait cancelled"));
  }

  // gRPC callback reactors own themselves: deleted when gRPC is done.
  void OnDone() override {
    std::vector<uint64_t> handles;
    {
      MutexLock lock(&guard_->mu);
      guard_->reactor = nullptr;
      for (const auto& [id, p] : waits_) {
        if (p.handle != 0) handles.push_back(p.handle);
      }
    }
    for (uint64_t h : handles) scheduler_.CancelWait(h);
    delete this;
  }

 private:
  using Guard = ReactorGuard<WaitStreamReactor>;
  struct Pending {
    // Tells a wait's answer from that of an earlier, cancelled wait of the
    // same id.
    uint64_t gen;
    uint64_t handle;
  };

  // Parks one wait; also re-arms a wait that timed out. Called without the
  // reactor's lock; the reactor may be gone by then.
  static void Arm(Scheduler& scheduler, const std::shared_ptr<Guard>& guard,
                  std::string id, uint64_t gen) {
    const absl::Time armed = absl::Now();
    uint64_t handle =
        scheduler.Wait(id, absl::InfiniteDuration(),
                       [&scheduler, guard, id, gen, armed](
                           absl::StatusOr<v1::Task> t, bool terminal) {
                         bool rearm = false;
                         {
                           MutexLock lock(&guard->mu);
                           if (guard->reactor == nullptr) return;
                           rearm = guard->reactor->AnswerLocked(
                               id, gen, std::move(t), terminal, armed);
                         }
                         if (rearm) Arm(scheduler, guard, id, gen);
                       });
    if (handle == 0) return;  // answered inline
    MutexLock lock(&guard->mu);
    if (WaitStreamReactor* r = guard->reactor; r != nullptr) {
      auto it = r->waits_.find(id);
      if (it != r->waits_.end() && it->second.gen == gen) {
        it->second.handle = handle;
        return;
      }
    }
    // Cancelled (or the stream ended) while this wait was being armed.
    scheduler.CancelWait(handle);
  }

  // Records the end of one wait; true when it timed out and must be re-armed.
  bool AnswerLocked(const std::string& id, uint64_t gen,
                    absl::StatusOr<v1::Task> t, bool terminal,
                    absl::Time armed) {
    auto it = waits_.find(id);
    if (it == waits_.end() || it->second.gen != gen) return false;
    if (t.ok() && !terminal) {
      if (!finished_ && absl::Now() - armed >= kMinRearmInterval) {
        it->second.handle = 0;
        return true;
      }
      waits_.erase(it);
      AddErrorLocked(id,
                     absl::AbortedError(absl::StrCat(
                         "task ", id, " is ", v1::TaskState_Name(t->state()),
                         " but not waitable yet; wait again")));
    } else {
      waits_.erase(it);
      if (t.ok()) {
        ready_.push_back(*std::move(t));
      } else {
        AddErrorLocked(id, t.status());
      }
    }
    MaybeWriteLocked();
    MaybeFinishLocked();
    return false;
  }

  void AddErrorLocked(const std::string& id, const absl::Status& status) {
    v1::WaitStreamError e;
    e.set_id(id);
    e.set_code(static_cast<int>(status.code()));
    e.set_message(std::string(status.message()));
    errors_.push_back(std::move(e));
  }

  void MaybeWriteLocked() {
    if (writing_ || finished_ || (ready_.empty() && errors_.empty())) return;
    out_.Clear();
    size_t bytes = 0, n = 0;
    for (; n < ready_.size() && (n == 0 || bytes < kBatchMessageBytes); ++n) {
      bytes += ready_[n].result().size() + ready_[n].payload().size() + 128;
      *out_.add_tasks() = std::move(ready_[n]);
    }
    ready_.erase(ready_.begin(), ready_.begin() + n);
    for (auto& e : errors_) *out_.add_errors() = std::move(e);
    errors_.clear();
    bool own_buffer = false;
    out_buf_.Clear();
    if (!grpc::SerializationTraits<v1::WaitStreamResponse>::Serialize(
             out_, &out_buf_, &own_buffer)
             .ok()) {
      FinishLocked(grpc::Status(grpc::StatusCode::INTERNAL,
                                "cannot serialize a WaitStream response"));
      return;
    }
    writing_ = true;
    StartWrite(&out_buf_);
  }

  void MaybeFinishLocked() {
    if (reads_done_ && waits_.empty() && !writing_ && ready_.empty() &&
        errors_.empty()) {
      FinishLocked(grpc::Status::OK);
    }
  }

  void FinishLocked(grpc::Status status) {
    if (finished_) return;
    finished_ = true;
    meter_.Done(status.error_code());
    Finish(std::move(status));
  }

  Scheduler& scheduler_;
  const Meter meter_;
  const std::shared_ptr<Guard> guard_;
  // Touched only by OnReadDone (one read at a time); the rest below is
  // guarded by guard_->mu.
  grpc::ByteBuffer in_buf_;
  int64_t messages_read_ = 0;
  v1::WaitStreamRequest req_;
  std::unordered_map<std::string, Pending> waits_;
  uint64_t next_gen_ = 0;
  std::vector<v1::Task> ready_;
  std::vector<v1::WaitStreamError> errors_;
  v1::WaitStreamResponse out_;
  grpc::ByteBuffer out_buf_;
  bool writing_ = false;
  bool reads_done_ = false;
  bool finished_ = false;
};

// Watch: streams task events; a task watch ends after its terminal state.
class WatchReactor final : public grpc::ServerWriteReactor<v1::TaskEvent> {
 public:
  // Events carry whole tasks (payload and result included), so the count
  // alone would let one unread watcher hold gigabytes.
  static constexpr size_t kMaxBacklogBytes = 4 << 20;

  WatchReactor(Scheduler& scheduler, const v1::WatchRequest* req, Meter meter)
      : scheduler_(scheduler),
        max_backlog_(scheduler.options().max_watch_backlog),
        meter_(meter),
        guard_(std::make_shared<ReactorGuard<WatchReactor>>()),
        task_id_(req->task_id()) {
    if (req->task_id().empty() == req->queue().empty()) {
      meter_.Done(grpc::StatusCode::INVALID_ARGUMENT);
      Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "set exactly one of task_id or queue (\"*\" = all)"));
      return;
    }
    if (absl::Status bad = CheckRequestFields(*req); !bad.ok()) {
      meter_.Done(grpc::StatusCode::INVALID_ARGUMENT);
      Finish(ToGrpcStatus(bad));
      return;
    }
    {
      MutexLock lock(&guard_->mu);
      guard_->reactor = this;
    }
    handle_ = scheduler_.Subscribe(req->task_id(), req->queue(),
                                   [guard = guard_](const v1::TaskEvent& e) {
                                     MutexLock lock(&guard->mu);
                                     if (guard->reactor != nullptr)
                                       guard->reactor->PushLocked(e);
                                   });
    if (!task_id_.empty()) {
      // Start with the task's current state (and end at once if terminal).
      absl::StatusOr<v1::Task> t = scheduler_.Get(task_id_);
      MutexLock lock(&guard_->mu);
      if (!t.ok()) {
        FinishLocked(ToGrpcStatus(t.status()));
        return;
      }
      v1::TaskEvent first;
      first.set_type(v1::TaskEvent::STATE);
      *first.mutable_task() = std::move(*t);
      *first.mutable_time() = ToProto(absl::Now());
      backlog_bytes_ += first.ByteSizeLong();
      backlog_.push_front(std::move(first));
      MaybeWriteLocked();
    }
  }

  void OnWriteDone(bool ok) override {
    MutexLock lock(&guard_->mu);
    writing_ = false;
    if (!ok) {
      FinishLocked(grpc::Status(grpc::StatusCode::UNAVAILABLE, "write failed"));
      return;
    }
    if (last_written_terminal_) {
      FinishLocked(grpc::Status::OK);
      return;
    }
    MaybeWriteLocked();
  }

  void OnCancel() override {
    MutexLock lock(&guard_->mu);
    FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "watch cancelled"));
  }

  // gRPC callback reactors own themselves: deleted when gRPC is done.
  void OnDone() override {
    guard_->Detach();
    if (handle_ != 0) scheduler_.Unsubscribe(handle_);
    delete this;
  }

 private:
  void PushLocked(const v1::TaskEvent& e) {
    if (finished_) return;
    const size_t bytes = e.ByteSizeLong();
    if (backlog_.size() >= max_backlog_ ||
        backlog_bytes_ + bytes > kMaxBacklogBytes) {
      FinishLocked(grpc::Status(
          grpc::StatusCode::RESOURCE_EXHAUSTED,
          absl::StrCat("watcher too slow: event backlog full (",
                       backlog_.size(), " events, ", backlog_bytes_,
                       " bytes; limits ", max_backlog_, " events, ",
                       kMaxBacklogBytes, " bytes)")));
      return;
    }
    backlog_bytes_ += bytes;
    backlog_.push_back(e);
    MaybeWriteLocked();
  }

  void MaybeWriteLocked() {
    if (writing_ || finished_ || backlog_.empty()) return;
    current_ = std::move(backlog_.front());
    backlog_.pop_front();
    backlog_bytes_ -= std::min(backlog_bytes_, current_.ByteSizeLong());
    last_written_terminal_ = !task_id_.empty() &&
                             current_.type() == v1::TaskEvent::STATE &&
                             IsTerminal(current_.task().state());
    writing_ = true;
    StartWrite(&current_);
  }

  void FinishLocked(grpc::Status status) {
    if (finished_) return;
    finished_ = true;
    meter_.Done(status.error_code());
    Finish(std::move(status));
  }

  Scheduler& scheduler_;
  // SchedulerOptions::max_watch_backlog: events buffered before the
  // watcher is dropped as too slow.
  const size_t max_backlog_;
  const Meter meter_;
  std::shared_ptr<ReactorGuard<WatchReactor>> guard_;
  const std::string task_id_;
  uint64_t handle_ = 0;
  std::deque<v1::TaskEvent> backlog_;
  size_t backlog_bytes_ = 0;
  v1::TaskEvent current_;
  bool writing_ = false;
  bool finished_ = false;
  bool last_written_terminal_ = false;
};

// Map: imap / imap_unordered. Reads inputs while fewer than `window` are in
// flight, submits the inputs of each message in one Scheduler::Submit, and
// writes results in input order or as they complete. Memory is bounded by
// the window on both sides. `Resp` is MapResult (Map: one result per
// message) or MapResults (MapBatched: every result ready at once).
template <typename Resp>
//
// The stream carries raw bytes (the service marks Map and MapBatched raw) and
// the reactor parses each message itself: gRPC's typed reader reports a
// message that does not parse exactly like the client's half-close, which
// would end the stream OK and silently drop the inputs still to come.
class MapReactor final
    : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  static constexpr bool kBatched = std::is_same_v<Resp, v1::MapResults>;
  static constexpr int kDefaultWindow = 256;
  static constexpr int kMaxWindow = 10'000;

  MapReactor(Scheduler& scheduler, Meter meter,
             SubmitRateLimiter* limiter = nullptr, std::string client = "")
      : scheduler_(scheduler),
        meter_(meter),
        limiter_(limiter),
        client_(std::move(client)),
        guard_(std::make_shared<ReactorGuard<MapReactor>>()) {
    MutexLock lock(&guard_->mu);
    guard_->reactor = this;
    MaybeReadLocked();
  }

  void OnReadDone(bool ok) override {
    MutexLock lock(&guard_->mu);
    reading_ = false;
    if (finished_) return;
    if (!ok) {
      reads_done_ = true;
      MaybeFinishLocked();
      return;
    }
    ++messages_read_;
    req_.Clear();
    if (grpc::Status parsed =
            grpc::SerializationTraits<v1::MapRequest>::Deserialize(&in_buf_,
                                                                   &req_);
        !parsed.ok()) {
      FinishLocked(grpc::Status(
          grpc::StatusCode::INVALID_ARGUMENT,
          absl::StrCat("Map message ", messages_read_,
                       " is not a forq.v1.MapRequest (", parsed.error_message(),
                       "); the stream is ended")));
      return;
    }
    if (absl::Status bad = CheckRequestFields(req_); !bad.ok()) {
      FinishLocked(ToGrpcStatus(bad));
      return;
    }
    if (req_.has_header()) {
      if (have_header_) {
        FinishLocked(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                  "Map header sent twice"));
        return;
      }
      have_header_ = true;
      header_ = req_.header();
      if (header_.window() < 0 || header_.window() > kMaxWindow) {
        FinishLocked(grpc::Status(
            grpc::StatusCode::INVALID_ARGUMENT,
            absl::StrCat("window must be in [0, ", kMaxWindow, "]")));
        return;
      }
      window_ = header_.window() == 0 ? kDefaultWindow : header_.window();
      MaybeReadLocked();
      return;
    }
    if (!have_header_) {
      FinishLocked(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                "the first Map message must be a header"));
      return;
    }
    if (limiter_ != nullptr) {
      const int64_t n = req_.has_input() ? 1 : req_.inputs().inputs_size();
      if (absl::Status s = limiter_->Admit(client_, n); n > 0 && !s.ok()) {
        FinishLocked(RateLimitedGrpcStatus(s));
        return;
      }
    }
    if (req_.has_input()) {
      SubmitLocked({&req_.input()});
    } else if (req_.has_inputs() && req_.inputs().inputs_size() > 0) {
      SubmitLocked(std::vector<const v1::MapInput*>(
          req_.inputs().inputs().pointer_begin(),
          req_.inputs().inputs().pointer_end()));
    }
    MaybeReadLocked();
  }

  void OnWriteDone(bool ok) override {
    MutexLock lock(&guard_->mu);
    writing_ = false;
    if (!ok) {
      FinishLocked(grpc::Status(grpc::StatusCode::UNAVAILABLE, "write failed"));
      return;
    }
    in_flight_ -= written_;
    written_ = 0;
    if (fail_now_) {
      FinishLocked(fail_status_);
      return;
    }
    MaybeWriteLocked();
    MaybeReadLocked();
    MaybeFinishLocked();
  }

  void OnCancel() override {
    MutexLock lock(&guard_->mu);
    FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "map cancelled"));
  }

  // gRPC callback reactors own themselves: deleted when gRPC is done.
  void OnDone() override {
    guard_->Detach();
    delete this;
  }

 private:
  using Guard = std::shared_ptr<ReactorGuard<MapReactor>>;

  // Submits the inputs of one message as one batch (all or none; if the
  // batch is refused for a bad spec, each input is submitted on its own so
  // only the bad ones fail).
  void SubmitLocked(const std::vector<const v1::MapInput*>& inputs) {
    std::vector<v1::TaskSpec> specs;
    specs.reserve(inputs.size());
    const uint64_t first = next_index_;
    for (const v1::MapInput* input : inputs) {
      v1::TaskSpec& spec = specs.emplace_back();
      spec.set_kind(input->kind().empty() ? header_.kind() : input->kind());
      spec.set_payload(input->payload());
      spec.set_payload_text(input->payload_text());
      spec.set_queue(header_.queue());
      spec.set_priority(header_.priority());
      spec.set_max_attempts(header_.max_attempts());
      *spec.mutable_timeout() = header_.timeout();
    }
    next_index_ += inputs.size();
    in_flight_ += static_cast<int>(inputs.size());
    Scheduler& scheduler = scheduler_;
    Guard guard = guard_;
    // The scheduler may answer inline, so it must not be called under our
    // lock: hand the submission to a deferred list run after unlocking.
    pending_submits_.push_back(
        [&scheduler, guard, first, specs = std::move(specs)]() mutable {
          SubmitBatch(scheduler, guard, first, std::move(specs));
        });
  }

  static void SubmitBatch(Scheduler& scheduler, const Guard& guard,
                          uint64_t first, std::vector<v1::TaskSpec> specs) {
    const size_t n = specs.size();
    // Kept for a retry one by one (only if the batch is refused).
    std::vector<v1::TaskSpec> copy;
    if (n > 1) copy = specs;
    scheduler.Submit(
        std::move(specs),
        [&scheduler, guard, first, n, copy = std::move(copy)](
            absl::StatusOr<std::vector<InsertResult>> r) mutable {
          if (!r.ok()) {
            if (n > 1 &&
                r.status().code() == absl::StatusCode::kInvalidArgument) {
              for (size_t i = 0; i < n; ++i) {
                SubmitBatch(scheduler, guard, first + i, {std::move(copy[i])});
              }
              return;
            }
            for (size_t i = 0; i < n; ++i) {
              Deliver(guard, first + i, r.status(), v1::Task());
            }
            return;
          }
          for (size_t i = 0; i < r->size(); ++i) {
            WaitTerminal(scheduler, guard, first + i, (*r)[i].task.id());
          }
        },
        // A Map acknowledges an input only with its result: the store
        // writes each task once, finished.
        Scheduler::Ack::kDeferred);
  }

  static void WaitTerminal(Scheduler& scheduler, Guard guard, uint64_t index,
                           std::string id) {
    // The longest wait the scheduler holds (max_wait); a wait that ends
    // non-terminal is parked again below.
    scheduler.Wait(id, scheduler.options().max_wait,
                   [&scheduler, guard, index, id](absl::StatusOr<v1::Task> t,
                                                  bool terminal) {
                     if (!t.ok()) {
                       Deliver(guard, index, t.status(), v1::Task());
                     } else if (terminal) {
                       Deliver(guard, index, absl::OkStatus(), *t);
                     } else {
                       {
                         MutexLock lock(&guard->mu);
                         if (guard->reactor == nullptr) return;
                       }
                       WaitTerminal(scheduler, guard, index, id);
                     }
                   });
  }

  static void Deliver(const Guard& guard, uint64_t index,
                      const absl::Status& status, const v1::Task& task) {
    MutexLock lock(&guard->mu);
    if (guard->reactor == nullptr) return;
    guard->reactor->DeliverLocked(index, status, task);
  }

  void DeliverLocked(uint64_t index, const absl::Status& status,
                     const v1::Task& task) {
    v1::MapResult r;
    r.set_index(index);
    if (!status.ok()) {
      r.set_state(v1::FAILED);
      r.mutable_error()->set_code(static_cast<int>(status.code()));
      r.mutable_error()->set_message(std::string(status.message()));
    } else {
      r.set_task_id(task.id());
      r.set_state(task.state());
      r.set_result(task.result());
      *r.mutable_error() = task.error();
      r.set_attempt(task.attempt());
    }
    if (header_.ordered()) {
      ordered_.emplace(index, std::move(r));
    } else {
      unordered_.push_back(std::move(r));
    }
    MaybeWriteLocked();
  }

  // The next result to write, if any is ready.
  bool TakeNextLocked(v1::MapResult* out) {
    if (header_.ordered()) {
      auto it = ordered_.find(next_to_send_);
      if (it == ordered_.end()) return false;
      *out = std::move(it->second);
      ordered_.erase(it);
      ++next_to_send_;
    } else {
      if (unordered_.empty()) return false;
      *out = std::move(unordered_.front());
      unordered_.pop_front();
    }
    if (header_.fail_fast() && out->state() != v1::SUCCEEDED) {
      fail_now_ = true;
      fail_status_ = grpc::Status(grpc::StatusCode::ABORTED,
                                  absl::StrCat("item ", out->index(), " ended ",
                                               v1::TaskState_Name(out->state()),
                                               ": ", out->error().message()));
    }
    return true;
  }

  void MaybeWriteLocked() {
    if (writing_ || finished_ || fail_now_) return;
    if constexpr (kBatched) {
      out_.Clear();
      size_t bytes = 0;
      while (!fail_now_ && bytes < kBatchMessageBytes) {
        v1::MapResult* r = out_.add_results();
        if (!TakeNextLocked(r)) {
          out_.mutable_results()->RemoveLast();
          break;
        }
        bytes += r->result().size() + r->error().message().size() + 32;
      }
      written_ = out_.results_size();
    } else {
      if (!TakeNextLocked(&out_)) return;
      written_ = 1;
    }
    if (written_ == 0) return;
    bool own_buffer = false;
    out_buf_.Clear();
    if (!grpc::SerializationTraits<Resp>::Serialize(out_, &out_buf_,
                                                    &own_buffer)
             .ok()) {
      FinishLocked(grpc::Status(grpc::StatusCode::INTERNAL,
                                "cannot serialize a Map result"));
      return;
    }
    writing_ = true;
    this->StartWrite(&out_buf_);
  }

  void MaybeReadLocked() {
    RunPendingSubmitsLocked();
    if (reading_ || reads_done_ || finished_ || fail_now_) return;
    if (have_header_ && in_flight_ >= window_) return;
    reading_ = true;
    this->StartRead(&in_buf_);
  }

  // Submissions run with the lock released; the lock is re-taken after.
  void RunPendingSubmitsLocked() ABSL_NO_THREAD_SAFETY_ANALYSIS {
    if (pending_submits_.empty()) return;
    auto submits = std::move(pending_submits_);
    pending_submits_.clear();
    guard_->mu.Unlock();
    for (auto& s : submits) s();
    guard_->mu.Lock();
  }

  void MaybeFinishLocked() {
    if (reads_done_ && in_flight_ == 0 && !writing_) {
      FinishLocked(grpc::Status::OK);
    }
  }

  void FinishLocked(grpc::Status status) {
    if (finished_) return;
    finished_ = true;
    meter_.Done(status.error_code());
    this->Finish(std::move(status));
  }

  Scheduler& scheduler_;
  const Meter meter_;
  SubmitRateLimiter* const limiter_;
  const std::string client_;
  Guard guard_;
  grpc::ByteBuffer in_buf_;
  grpc::ByteBuffer out_buf_;
  int64_t messages_read_ = 0;
  v1::MapRequest req_;
  v1::MapHeader header_;
  Resp out_;
  // Results in out_ (counted off in_flight_ once written).
  int written_ = 0;
  bool have_header_ = false;
  int window_ = kDefaultWindow;
  uint64_t next_index_ = 0;
  uint64_t next_to_send_ = 0;
  int in_flight_ = 0;
  bool reading_ = false;
  bool writing_ = false;
  bool reads_done_ = false;
  bool finished_ = false;
  bool fail_now_ = false;
  grpc::Status fail_status_;
  std::map<uint64_t, v1::MapResult> ordered_;
  std::deque<v1::MapResult> unordered_;
  std::vector<std::function<void()>> pending_submits_;
};

}  // namespace

TaskServiceImpl::TaskServiceImpl(Scheduler& scheduler, GrpcMetrics* metrics)
    : scheduler_(scheduler),
      metrics_(metrics),
      submit_(M("Submit")),
      submit_batch_(M("SubmitBatch")),
      get_(M("Get")),
      wait_(M("Wait")),
      cancel_(M("Cancel")),
      list_(M("List")),
      retry_(M("Retry")),
      watch_(M("Watch")),
      map_(M("Map")),
      map_batched_(M("MapBatched")),
      wait_stream_(M("WaitStream")) {}

GrpcMetrics::Method* TaskServiceImpl::M(const char* method) const {
  return metrics_ == nullptr
             ? nullptr
             : metrics_->Get(v1::TaskService::service_full_name(), method);
}

grpc::ServerUnaryReactor* TaskServiceImpl::Submit(
    grpc::CallbackServerContext* ctx, const v1::SubmitRequest* req,
    v1::SubmitResponse* resp) {
  Meter meter(submit_);
  absl::Status bad = CheckRequestFields(*req);
  if (bad.ok() && (req->wait().seconds() < 0 || req->wait().nanos() < 0)) {
    bad = absl::InvalidArgumentError("wait must not be negative");
  }
  if (!bad.ok()) {
    auto* reactor = ctx->DefaultReactor();
    meter.Finish(reactor, ToGrpcStatus(bad));
    return reactor;
  }
  if (limiter_ != nullptr) {
    if (absl::Status s = limiter_->Admit(limiter_->ClientKey(*ctx), 1);
        !s.ok()) {
      auto* reactor = ctx->DefaultReactor();
      meter.Finish(reactor, RateLimitedGrpcStatus(s));
      return reactor;
    }
  }
  if (!req->has_wait()) {
    auto* reactor = ctx->DefaultReactor();
    scheduler_.Submit(
        {req->task()},
        [reactor, resp, meter](absl::StatusOr<std::vector<InsertResult>> r) {
          if (!r.ok()) {
            meter.Finish(reactor, ToGrpcStatus(r.status()));
            return;
          }
          *resp->mutable_task() = std::move((*r)[0].task);
          resp->set_existing((*r)[0].existing);
          meter.Finish(reactor, grpc::Status::OK);
        });
    return reactor;
  }
  // Submit and wait in one call: the reply carries the terminal task, or
  // the task as it stands when `wait` (or the deadline) runs out.
  // The reply is the task's acknowledgement: a task that finishes within
  // the wait is written once, finished (Ack::kDeferred); one that does not
  // is stored before the reply says so.
  auto* reactor = new TaskWaitReactor(
      scheduler_, meter,
      [resp](v1::Task task, bool terminal) {
        *resp->mutable_task() = std::move(task);
        resp->set_done(terminal);
      },
      /*persist=*/true);
  const absl::Duration timeout =
      std::min(TimeLeft(ctx), FromProto(req->wait()));
  scheduler_.Submit(
      {req->task()},
      [reactor, resp, timeout](absl::StatusOr<std::vector<InsertResult>> r) {
        if (!r.ok()) {
          reactor->End(ToGrpcStatus(r.status()));
          return;
        }
        resp->set_existing((*r)[0].existing);
        reactor->Start((*r)[0].task.id(), timeout);
      },
      Scheduler::Ack::kDeferred);
  return reactor;
}

grpc::ServerUnaryReactor* TaskServiceImpl::SubmitBatch(
    grpc::CallbackServerContext* ctx, const v1::SubmitBatchRequest* req,
    v1::SubmitBatchResponse* resp) {
  auto* reactor = ctx->DefaultReactor();
  Meter meter(submit_batch_);
  if (absl::Status bad = CheckRequestFields(*req); !bad.ok()) {
    meter.Finish(reactor, ToGrpcStatus(bad));
    return reactor;
  }
  if (limiter_ != nullptr) {
    if (absl::Status s =
            limiter_->Admit(limiter_->ClientKey(*ctx), req->tasks_size());
        !s.ok()) {
      meter.Finish(reactor, RateLimitedGrpcStatus(s));
      return reactor;
    }
  }
  std::vector<v1::TaskSpec> specs(req->tasks().begin(), req->tasks().end());
  scheduler_.Submit(
      std::move(specs),
      [reactor, resp, meter](absl::StatusOr<std::vector<InsertResult>> r) {
        if (!r.ok()) {
          meter.Finish(reactor, ToGrpcStatus(r.status()));
          return;
        }
        for (InsertResult& ir : *r) {
          *resp->add_tasks() = std::move(ir.task);
          resp->add_existing(ir.existing);
        }
        meter.Finish(reactor, grpc::Status::OK);
      });
  return reactor;
}

grpc::ServerUnaryReactor* TaskServiceImpl::Get(grpc::CallbackServerContext* ctx,
                                               const v1::GetTaskRequest* req,
                                               v1::Task* resp) {
  auto* reactor = ctx->DefaultReactor();
  Meter meter(get_);
  if (absl::Status bad = CheckRequestFields(*req); !bad.ok()) {
    meter.Finish(reactor, ToGrpcStatus(bad));
    return reactor;
  }
  absl::StatusOr<v1::Task> t = scheduler_.Get(req->id());
  if (!t.ok()) {
    meter.Finish(reactor, ToGrpcStatus(t.status()));
  } else {
    *resp = std::move(*t);
    meter.Finish(reactor, grpc::Status::OK);
  }
  return reactor;
}

grpc::ServerUnaryReactor* TaskServiceImpl::Wait(
    grpc::CallbackServerContext* ctx, const v1::WaitTaskRequest* req,
    v1::WaitTaskResponse* resp) {
  if (absl::Status bad = CheckRequestFields(*req); !bad.ok()) {
    auto* reactor = ctx->DefaultReactor();
    Meter(wait_).Finish(reactor, ToGrpcStatus(bad));
    return reactor;
  }
  auto* reactor = new TaskWaitReactor(scheduler_, Meter(wait_),
                                      [resp](v1::Task task, bool terminal) {
                                        *resp->mutable_task() = std::move(task);
                                        resp->set_done(terminal);
                                      });
  absl::Duration timeout = TimeLeft(ctx);
  if (req->has_timeout()) {
    timeout = std::min(timeout, FromProto(req->timeout()));
  }
  reactor->Start(req->id(), timeout);
  return reactor;
}

grpc::ServerUnaryReactor* TaskServiceImpl::Cancel(
    grpc::CallbackServerContext* ctx, const v1::CancelTaskRequest* req,
    v1::Task* resp) {
  auto* reactor = ctx->DefaultReactor();
  if (absl::Status bad = CheckRequestFields(*req); !bad.ok()) {
    Meter(cancel_).Finish(reactor, ToGrpcStatus(bad));
    return reactor;
  }
  scheduler_.Cancel(req->id(), FinishWithTask(reactor, resp, Meter(cancel_)));
  return reactor;
}

grpc::ServerUnaryReactor* TaskServiceImpl::List(
    grpc::CallbackServerContext* ctx, const v1::ListTasksRequest* req,
    v1::ListTasksResponse* resp) {
  auto* reactor = ctx->DefaultReactor();
  Meter meter(list_);
  if (absl::Status bad = CheckRequestFields(*req); !bad.ok()) {
    meter.Finish(reactor, ToGrpcStatus(bad));
    return reactor;
  }
  if (req->page_size() < 0) {
    meter.Finish(reactor, grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                       "page_size must not be negative"));
    return reactor;
  }
  ListQuery q;
  q.queue = req->queue();
  q.state = req->state();
  q.kind = req->kind();
  // The store maps 0 to its default page and caps the size (ListQuery).
  q.page_size = req->page_size();
  q.page_token = req->page_token();
  absl::StatusOr<ListPage> page = scheduler_.List(std::move(q));
  if (!page.ok()) {
    meter.Finish(reactor, ToGrpcStatus(page.status()));
    return reactor;
  }
  for (v1::Task& t : page->tasks) *resp->add_tasks() = std::move(t);
  resp->set_next_page_token(page->next_page_token);
  meter.Finish(reactor, grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* TaskServiceImpl::Retry(
    grpc::CallbackServerContext* ctx, const v1::RetryTaskRequest* req,
    v1::Task* resp) {
  auto* reactor = ctx->DefaultReactor();
  if (absl::Status bad = CheckRequestFields(*req); !bad.ok()) {
    Meter(retry_).Finish(reactor, ToGrpcStatus(bad));
    return reactor;
  }
  scheduler_.Retry(req->id(), FinishWithTask(reactor, resp, Meter(retry_)));
  return reactor;
}

grpc::ServerWriteReactor<v1::TaskEvent>* TaskServiceImpl::Watch(
    grpc::CallbackServerContext* ctx, const v1::WatchRequest* req) {
  return new WatchReactor(scheduler_, req, Meter(watch_));
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>*
TaskServiceImpl::WaitStream(grpc::CallbackServerContext* ctx) {
  return new WaitStreamReactor(scheduler_, Meter(wait_stream_));
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>*
TaskServiceImpl::Map(grpc::CallbackServerContext* ctx) {
  return new MapReactor<v1::MapResult>(
      scheduler_, Meter(map_), limiter_,
      limiter_ != nullptr ? limiter_->ClientKey(*ctx) : "");
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>*
TaskServiceImpl::MapBatched(grpc::CallbackServerContext* ctx) {
  return new MapReactor<v1::MapResults>(
      scheduler_, Meter(map_batched_), limiter_,
      limiter_ != nullptr ? limiter_->ClientKey(*ctx) : "");
}

}  // namespace forq::server
