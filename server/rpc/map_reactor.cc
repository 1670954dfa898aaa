#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/impl/codegen/proto_utils.h"

#include "common/mutex.h"
#include "server/auth/request_checks.h"
#include "server/rpc/status_util.h"
#include "server/rpc/stream_reactors.h"

namespace forq::server {
namespace {

// The error of a Map input cancelled because its stream ended first.
constexpr absl::string_view kAbandonedInput =
    "cancelled before it ran: its Map stream ended (client cancelled or gone)";

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
      SubmitLocked({req_.mutable_input()});
    } else if (req_.has_inputs() && req_.inputs().inputs_size() > 0) {
      auto* inputs = req_.mutable_inputs()->mutable_inputs();
      SubmitLocked(std::vector<v1::MapInput*>(inputs->pointer_begin(),
                                              inputs->pointer_end()));
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
  // An input still outstanding then ended without its result delivered
  // (the client cancelled or went away, or the stream failed): those not
  // started are cancelled, as Pool.terminate() would, unless the header
  // asked to keep them.
  void OnDone() override {
    guard_->Detach();
    std::vector<std::string> ids;
    {
      MutexLock lock(&guard_->mu);
      if (!header_.keep_queued_on_cancel()) {
        ids.reserve(outstanding_.size());
        for (auto& [index, id] : outstanding_) ids.push_back(std::move(id));
      }
    }
    Scheduler& scheduler = scheduler_;
    delete this;
    if (!ids.empty()) scheduler.CancelQueued(ids, kAbandonedInput);
  }

 private:
  using Guard = std::shared_ptr<ReactorGuard<MapReactor>>;

  // Takes the results of this stream's tasks from the scheduler.
  class Sink final : public Scheduler::ResultSink {
   public:
    explicit Sink(Guard guard) : guard_(std::move(guard)) {}
    void OnResults(std::vector<Result> results) override {
      MutexLock lock(&guard_->mu);
      if (guard_->reactor == nullptr) return;
      for (Result& r : results) {
        guard_->reactor->DeliverLocked(r.first, std::move(r.second));
      }
    }

   private:
    const Guard guard_;
  };

  // Submits the inputs of one message together (moving their payloads out
  // of it); a bad input fails alone.
  void SubmitLocked(const std::vector<v1::MapInput*>& inputs)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(guard_->mu) {
    std::vector<v1::TaskSpec> specs;
    specs.reserve(inputs.size());
    const uint64_t first = next_index_;
    for (v1::MapInput* input : inputs) {
      v1::TaskSpec& spec = specs.emplace_back();
      if (input->kind().empty()) {
        spec.set_kind(header_.kind());
      } else {
        spec.set_kind(std::move(*input->mutable_kind()));
      }
      spec.set_payload(std::move(*input->mutable_payload()));
      spec.set_payload_text(std::move(*input->mutable_payload_text()));
      spec.set_queue(header_.queue());
      spec.set_priority(header_.priority());
      spec.set_max_attempts(header_.max_attempts());
      *spec.mutable_timeout() = header_.timeout();
    }
    next_index_ += inputs.size();
    in_flight_ += static_cast<int>(inputs.size());
    if (sink_ == nullptr) sink_ = std::make_shared<Sink>(guard_);
    Scheduler& scheduler = scheduler_;
    Guard guard = guard_;
    // The scheduler may answer inline, so it must not be called under our
    // lock: hand the submission to a deferred list run after unlocking.
    const bool keep = header_.keep_queued_on_cancel();
    pending_submits_.push_back([&scheduler, guard, sink = sink_, first, keep,
                                specs = std::move(specs)]() mutable {
      scheduler.SubmitForResults(
          std::move(specs), std::move(sink), first,
          [&scheduler, guard, first,
           keep](std::vector<absl::StatusOr<std::string>> ids) {
            Accepted(scheduler, guard, first, std::move(ids), keep);
          });
    });
  }

  // Records the inputs' tasks until their results are delivered; a refused
  // input gets its error as its result. When the stream is already over,
  // the tasks are cancelled if not started (unless `keep`).
  static void Accepted(Scheduler& scheduler, const Guard& guard, uint64_t first,
                       std::vector<absl::StatusOr<std::string>> ids,
                       bool keep) {
    {
      MutexLock lock(&guard->mu);
      if (guard->reactor != nullptr) {
        for (size_t i = 0; i < ids.size(); ++i) {
          if (ids[i].ok()) {
            guard->reactor->TrackLocked(first + i, std::move(*ids[i]));
          } else {
            guard->reactor->DeliverLocked(first + i, ids[i].status());
          }
        }
        return;
      }
    }
    if (keep) return;
    std::vector<std::string> cancel;
    for (absl::StatusOr<std::string>& id : ids) {
      if (id.ok()) cancel.push_back(std::move(*id));
    }
    if (!cancel.empty()) scheduler.CancelQueued(cancel, kAbandonedInput);
  }

  // A result can come before its task is tracked (Accepted runs after the
  // scheduler queued the tasks): then it is not tracked at all.
  void TrackLocked(uint64_t index, std::string id) {
    guard_->mu.AssertHeld();
    if (delivered_early_.erase(index) > 0) return;
    outstanding_.emplace(index, std::move(id));
  }

  // Called with guard_->mu held, through the guard (which the analysis
  // cannot tie to guard_).
  void DeliverLocked(uint64_t index, absl::StatusOr<v1::Task> task) {
    guard_->mu.AssertHeld();
    if (outstanding_.erase(index) == 0 && task.ok()) {
      delivered_early_.insert(index);
    }
    v1::MapResult r;
    r.set_index(index);
    if (!task.ok()) {
      r.set_state(v1::FAILED);
      r.mutable_error()->set_code(static_cast<int>(task.status().code()));
      r.mutable_error()->set_message(std::string(task.status().message()));
    } else {
      v1::Task& t = *task;
      r.set_task_id(std::move(*t.mutable_id()));
      r.set_state(t.state());
      r.set_result(std::move(*t.mutable_result()));
      if (t.has_error()) *r.mutable_error() = std::move(*t.mutable_error());
      r.set_attempt(t.attempt());
    }
    if (header_.ordered()) {
      ordered_.emplace(index, std::move(r));
    } else {
      unordered_.push_back(std::move(r));
    }
    MaybeWriteLocked();
  }

  // The next result to write, if any is ready.
  bool TakeNextLocked(v1::MapResult* out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(guard_->mu) {
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

  void MaybeWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(guard_->mu) {
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

  void MaybeReadLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(guard_->mu) {
    RunPendingSubmitsLocked();
    if (reading_ || reads_done_ || finished_ || fail_now_) return;
    if (have_header_ && in_flight_ >= window_) return;
    reading_ = true;
    this->StartRead(&in_buf_);
  }

  // Submissions run with the lock released; the lock is re-taken after.
  void RunPendingSubmitsLocked()
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(guard_->mu) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    if (pending_submits_.empty()) return;
    auto submits = std::move(pending_submits_);
    pending_submits_.clear();
    guard_->mu.Unlock();
    for (auto& s : submits) s();
    guard_->mu.Lock();
  }

  void MaybeFinishLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(guard_->mu) {
    if (reads_done_ && in_flight_ == 0 && !writing_) {
      FinishLocked(grpc::Status::OK);
    }
  }

  void FinishLocked(grpc::Status status)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(guard_->mu) {
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
  grpc::ByteBuffer in_buf_ ABSL_GUARDED_BY(guard_->mu);
  grpc::ByteBuffer out_buf_ ABSL_GUARDED_BY(guard_->mu);
  int64_t messages_read_ ABSL_GUARDED_BY(guard_->mu) = 0;
  v1::MapRequest req_ ABSL_GUARDED_BY(guard_->mu);
  v1::MapHeader header_ ABSL_GUARDED_BY(guard_->mu);
  Resp out_ ABSL_GUARDED_BY(guard_->mu);
  // Results in out_ (counted off in_flight_ once written).
  int written_ ABSL_GUARDED_BY(guard_->mu) = 0;
  bool have_header_ ABSL_GUARDED_BY(guard_->mu) = false;
  int window_ ABSL_GUARDED_BY(guard_->mu) = kDefaultWindow;
  uint64_t next_index_ ABSL_GUARDED_BY(guard_->mu) = 0;
  // Task ids of the inputs submitted whose result is not delivered yet.
  std::unordered_map<uint64_t, std::string> outstanding_
      ABSL_GUARDED_BY(guard_->mu);
  // Delivered before Accepted tracked them (see TrackLocked).
  std::unordered_set<uint64_t> delivered_early_ ABSL_GUARDED_BY(guard_->mu);
  std::shared_ptr<Sink> sink_ ABSL_GUARDED_BY(guard_->mu);
  uint64_t next_to_send_ ABSL_GUARDED_BY(guard_->mu) = 0;
  int in_flight_ ABSL_GUARDED_BY(guard_->mu) = 0;
  bool reading_ ABSL_GUARDED_BY(guard_->mu) = false;
  bool writing_ ABSL_GUARDED_BY(guard_->mu) = false;
  bool reads_done_ ABSL_GUARDED_BY(guard_->mu) = false;
  bool finished_ ABSL_GUARDED_BY(guard_->mu) = false;
  bool fail_now_ ABSL_GUARDED_BY(guard_->mu) = false;
  grpc::Status fail_status_ ABSL_GUARDED_BY(guard_->mu);
  std::map<uint64_t, v1::MapResult> ordered_ ABSL_GUARDED_BY(guard_->mu);
  std::deque<v1::MapResult> unordered_ ABSL_GUARDED_BY(guard_->mu);
  std::vector<std::function<void()>> pending_submits_
      ABSL_GUARDED_BY(guard_->mu);
};

}  // namespace

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* NewMapReactor(
    Scheduler& scheduler, Meter meter, SubmitRateLimiter* limiter,
    std::string client) {
  return new MapReactor<v1::MapResult>(scheduler, meter, limiter,
                                       std::move(client));
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>*
NewMapBatchedReactor(Scheduler& scheduler, Meter meter,
                     SubmitRateLimiter* limiter, std::string client) {
  return new MapReactor<v1::MapResults>(scheduler, meter, limiter,
                                        std::move(client));
}

}  // namespace forq::server
