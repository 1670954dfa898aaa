#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "grpcpp/impl/codegen/proto_utils.h"

#include "common/mutex.h"
#include "server/auth/request_checks.h"
#include "server/rpc/status_util.h"
#include "server/rpc/stream_reactors.h"

namespace forq::server {
namespace {

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
    for (auto& [id, gen] : arm) Arm(scheduler_, guard_, id, gen);
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
                  const std::string& id, uint64_t gen) {
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
    if (guard->reactor != nullptr &&
        guard->reactor->SetHandleLocked(id, gen, handle)) {
      return;
    }
    // Cancelled (or the stream ended) while this wait was being armed.
    scheduler.CancelWait(handle);
  }

  // Records the scheduler's handle of an armed wait; false when that wait
  // was cancelled meanwhile. Called with guard_->mu held, through the guard
  // (which the analysis cannot tie to guard_).
  bool SetHandleLocked(const std::string& id, uint64_t gen, uint64_t handle) {
    guard_->mu.AssertHeld();
    auto it = waits_.find(id);
    if (it == waits_.end() || it->second.gen != gen) return false;
    it->second.handle = handle;
    return true;
  }

  // Records the end of one wait; true when it timed out and must be re-armed.
  // Called with guard_->mu held, through the guard.
  bool AnswerLocked(const std::string& id, uint64_t gen,
                    absl::StatusOr<v1::Task> t, bool terminal,
                    absl::Time armed) {
    guard_->mu.AssertHeld();
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

  void AddErrorLocked(const std::string& id, const absl::Status& status)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(guard_->mu) {
    v1::WaitStreamError e;
    e.set_id(id);
    e.set_code(static_cast<int>(status.code()));
    e.set_message(std::string(status.message()));
    errors_.push_back(std::move(e));
  }

  void MaybeWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(guard_->mu) {
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

  void MaybeFinishLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(guard_->mu) {
    if (reads_done_ && waits_.empty() && !writing_ && ready_.empty() &&
        errors_.empty()) {
      FinishLocked(grpc::Status::OK);
    }
  }

  void FinishLocked(grpc::Status status)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(guard_->mu) {
    if (finished_) return;
    finished_ = true;
    meter_.Done(status.error_code());
    Finish(std::move(status));
  }

  Scheduler& scheduler_;
  const Meter meter_;
  const std::shared_ptr<Guard> guard_;
  // Touched only by OnReadDone (one read at a time).
  grpc::ByteBuffer in_buf_;
  int64_t messages_read_ = 0;
  v1::WaitStreamRequest req_;
  std::unordered_map<std::string, Pending> waits_ ABSL_GUARDED_BY(guard_->mu);
  uint64_t next_gen_ ABSL_GUARDED_BY(guard_->mu) = 0;
  std::vector<v1::Task> ready_ ABSL_GUARDED_BY(guard_->mu);
  std::vector<v1::WaitStreamError> errors_ ABSL_GUARDED_BY(guard_->mu);
  v1::WaitStreamResponse out_ ABSL_GUARDED_BY(guard_->mu);
  grpc::ByteBuffer out_buf_ ABSL_GUARDED_BY(guard_->mu);
  bool writing_ ABSL_GUARDED_BY(guard_->mu) = false;
  bool reads_done_ ABSL_GUARDED_BY(guard_->mu) = false;
  bool finished_ ABSL_GUARDED_BY(guard_->mu) = false;
};

}  // namespace

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>*
NewWaitStreamReactor(Scheduler& scheduler, Meter meter) {
  return new WaitStreamReactor(scheduler, meter);
}

}  // namespace forq::server
