#include "client/src/wait_mux.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"

namespace forq::client_internal {
namespace {

constexpr int kMaxIdsPerMessage = 10'000;

}  // namespace

// One WaitStream call. Holds itself open (AddHold) until it broke and no
// write of ours is in flight, so a write is never started after OnDone.
// The flags below are guarded by the mux's mutex.
class WaitMux::Stream final
    : public grpc::ClientBidiReactor<v1::WaitStreamRequest,
                                     v1::WaitStreamResponse> {
 public:
  Stream(WaitMux* mux, uint64_t gen) : mux_(mux), gen_(gen) {}

  void Start(v1::TaskService::Stub* stub) {
    stub->async()->WaitStream(&ctx_, this);
    AddHold();
    StartRead(&resp_);
    StartCall();
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      mux_->OnReadFailed(this);
      return;
    }
    mux_->OnAnswers(this, resp_);
    StartRead(&resp_);
  }
  void OnWriteDone(bool ok) override { mux_->OnWriteDone(this, ok); }
  void OnDone(const grpc::Status& s) override {
    mux_->OnStreamDone(
        this, absl::Status(static_cast<absl::StatusCode>(s.error_code()),
                           s.error_message()));
  }

  grpc::ClientContext ctx_;
  // Written only by the thread that set writing_.
  v1::WaitStreamRequest req_;
  v1::WaitStreamResponse resp_;
  WaitMux* const mux_;
  const uint64_t gen_;
  bool writing_ = false;
  bool broken_ = false;
  bool hold_released_ = false;
  bool done_ = false;
};

WaitRef::~WaitRef() { mux_->Release(id_); }

WaitMux::WaitMux(const std::shared_ptr<grpc::Channel>& channel)
    : stub_(v1::TaskService::NewStub(channel)) {}

WaitMux::~WaitMux() = default;

void WaitMux::Shutdown() {
  std::vector<Stream*> live;
  {
    MutexLock lock(&mu_);
    shut_down_ = true;
    for (auto& s : streams_) {
      if (!s->done_) live.push_back(s.get());
    }
    cv_.SignalAll();
  }
  // Streams are freed only by the destructor, so these stay valid.
  for (Stream* s : live) s->ctx_.TryCancel();
  MutexLock lock(&mu_);
  while (live_streams_ > 0) cv_.Wait(&mu_);
}

std::vector<std::shared_ptr<WaitRef>> WaitMux::Track(
    const std::vector<std::string>& ids) {
  std::vector<std::shared_ptr<WaitRef>> refs;
  refs.reserve(ids.size());
  {
    MutexLock lock(&mu_);
    if (shut_down_) return refs;
    for (const std::string& id : ids) {
      Entry& e = entries_[id];
      ++e.refs;
      QueueLocked(id, e);
      refs.push_back(std::make_shared<WaitRef>(shared_from_this(), id));
    }
  }
  // Sent with the next Await (all queued ids in one message), not now:
  // waits armed while a burst of unary Submits is still going cost the
  // server more than one message per burst.
  return refs;
}

void WaitMux::Release(const std::string& id) {
  bool flush = false;
  {
    MutexLock lock(&mu_);
    auto it = entries_.find(id);
    if (it == entries_.end()) return;
    Entry& e = it->second;
    if (--e.refs > 0 || e.waiters > 0) return;
    // Nobody will read the answer: stop the server's wait if it is pending
    // on the live stream (a queued id is skipped by Flush once erased).
    if (!e.done && !shut_down_ && current_ != nullptr &&
        e.sent_on == current_->gen_) {
      to_cancel_.push_back(id);
      flush = true;
    }
    entries_.erase(it);
  }
  if (flush) Flush();
}

void WaitMux::QueueLocked(const std::string& id, Entry& e) {
  if (e.done || e.sent_on != 0) return;
  e.sent_on = kQueued;
  to_send_.push_back(id);
}

void WaitMux::MaybeEraseLocked(const std::string& id) {
  auto it = entries_.find(id);
  if (it != entries_.end() && it->second.refs == 0 && it->second.waiters == 0) {
    entries_.erase(it);
  }
}

void WaitMux::Flush() {
  Stream* s = nullptr;
  bool fresh = false;
  {
    MutexLock lock(&mu_);
    if (shut_down_ || (to_send_.empty() && to_cancel_.empty())) return;
    if (current_ != nullptr && current_->writing_) return;  // OnWriteDone
    if (current_ == nullptr) {
      // The waits of a broken stream died with it: nothing to cancel.
      to_cancel_.clear();
      if (to_send_.empty()) return;
      streams_.push_back(std::make_unique<Stream>(this, next_gen_++));
      current_ = streams_.back().get();
      ++live_streams_;
      fresh = true;
    }
    s = current_;
    s->req_.Clear();
    // Bounded messages: the rest goes out from OnWriteDone.
    size_t n = 0;
    for (; n < to_send_.size() && s->req_.ids_size() < kMaxIdsPerMessage; ++n) {
      auto it = entries_.find(to_send_[n]);
      if (it == entries_.end() || it->second.sent_on != kQueued) continue;
      it->second.sent_on = s->gen_;
      s->req_.add_ids(std::move(to_send_[n]));
    }
    to_send_.erase(to_send_.begin(), to_send_.begin() + n);
    for (std::string& id : to_cancel_) s->req_.add_cancel_ids(std::move(id));
    to_cancel_.clear();
    if (s->req_.ids().empty() && s->req_.cancel_ids().empty() && !fresh) {
      return;
    }
    s->writing_ = true;
  }
  if (fresh) s->Start(stub_.get());
  s->StartWrite(&s->req_);
}

void WaitMux::OnWriteDone(Stream* s, bool ok) {
  bool release = false;
  {
    MutexLock lock(&mu_);
    s->writing_ = false;
    if (!ok) s->broken_ = true;
    if (s->broken_) {
      if (current_ == s) current_ = nullptr;
      release = !std::exchange(s->hold_released_, true);
    }
  }
  if (release) s->RemoveHold();
  Flush();
}

void WaitMux::OnReadFailed(Stream* s) {
  bool release = false;
  {
    MutexLock lock(&mu_);
    s->broken_ = true;
    if (current_ == s) current_ = nullptr;
    if (!s->writing_) release = !std::exchange(s->hold_released_, true);
  }
  if (release) s->RemoveHold();
}

void WaitMux::OnAnswers(Stream* s, v1::WaitStreamResponse& resp) {
  bool resend = false;
  {
    MutexLock lock(&mu_);
    for (v1::Task& t : *resp.mutable_tasks()) {
      auto it = entries_.find(t.id());
      if (it == entries_.end() || it->second.done) continue;
      it->second.done = true;
      it->second.answer = std::move(t);
    }
    for (const v1::WaitStreamError& err : resp.errors()) {
      auto it = entries_.find(err.id());
      if (it == entries_.end() || it->second.done) continue;
      const auto code = static_cast<absl::StatusCode>(err.code());
      if (code == absl::StatusCode::kAborted) {
        // The server asks for the id again (a transient state).
        it->second.sent_on = 0;
        QueueLocked(err.id(), it->second);
        resend = true;
        continue;
      }
      it->second.done = true;
      it->second.answer = absl::Status(code, err.message());
    }
    cv_.SignalAll();
  }
  if (resend) Flush();
}

void WaitMux::OnStreamDone(Stream* s, const absl::Status& status) {
  MutexLock lock(&mu_);
  s->done_ = true;
  if (current_ == s) current_ = nullptr;
  ++breaks_;
  if (shut_down_) {
    last_break_ = absl::CancelledError("client shut down");
  } else if (status.ok()) {
    last_break_ = absl::UnavailableError("wait stream to forqd ended");
  } else {
    last_break_ = absl::Status(
        status.code(),
        absl::StrCat("wait stream to forqd broke: ", status.message()));
  }
  // Waits on this stream are gone; a later Await sends the id again.
  for (auto& [id, e] : entries_) {
    if (!e.done && e.sent_on == s->gen_) e.sent_on = 0;
  }
  --live_streams_;
  cv_.SignalAll();
}

absl::Status WaitMux::WaitDoneLocked(const std::vector<std::string>& ids,
                                     absl::Time deadline) {
  const uint64_t breaks = breaks_;
  for (const std::string& id : ids) {
    Entry& e = entries_.at(id);  // kept alive by our waiter count
    while (!e.done) {
      if (shut_down_) return absl::CancelledError("client shut down");
      if (breaks_ != breaks && e.sent_on == 0) return last_break_;
      if (deadline == absl::InfiniteFuture()) {
        cv_.Wait(&mu_);
        continue;
      }
      const absl::Duration left = deadline - absl::Now();
      if (left <= absl::ZeroDuration()) {
        return absl::DeadlineExceededError(
            absl::StrCat("task ", id, " is not finished yet"));
      }
      cv_.WaitWithTimeout(&mu_, left);
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<v1::Task>> WaitMux::AwaitAll(
    const std::vector<std::string>& ids, absl::Time deadline) {
  {
    MutexLock lock(&mu_);
    if (shut_down_) return absl::CancelledError("client shut down");
    for (const std::string& id : ids) {
      Entry& e = entries_[id];
      ++e.waiters;
      QueueLocked(id, e);
    }
  }
  Flush();
  MutexLock lock(&mu_);
  absl::Status status = WaitDoneLocked(ids, deadline);
  std::vector<v1::Task> tasks;
  if (status.ok()) tasks.reserve(ids.size());
  for (const std::string& id : ids) {
    auto it = entries_.find(id);
    Entry& e = it->second;
    if (status.ok()) {
      if (!e.answer.ok()) {
        status = e.answer.status();
      } else if (e.refs == 0 && e.waiters == 1) {
        tasks.push_back(*std::move(e.answer));  // last reader
      } else {
        tasks.push_back(*e.answer);
      }
    }
    --e.waiters;
    MaybeEraseLocked(id);
  }
  if (!status.ok()) return status;
  return tasks;
}

absl::StatusOr<v1::Task> WaitMux::Await(const std::string& id,
                                        absl::Time deadline) {
  absl::StatusOr<std::vector<v1::Task>> r = AwaitAll({id}, deadline);
  if (!r.ok()) return r.status();
  return std::move(r->front());
}

bool WaitMux::TakeLoneWait(const std::string& id) {
  MutexLock lock(&mu_);
  if (shut_down_ || !streams_.empty() || lone_waits_ > 0) return false;
  // Another id queued: a stream serves both. (An Await in progress has
  // opened a stream, or finds its ids answered.)
  if (to_send_.size() > 1 || (to_send_.size() == 1 && to_send_[0] != id)) {
    return false;
  }
  to_send_.clear();
  auto it = entries_.find(id);
  if (it != entries_.end() && it->second.sent_on == kQueued) {
    it->second.sent_on = 0;  // queued again by a later Await
  }
  ++lone_waits_;
  return true;
}

void WaitMux::EndLoneWait(const std::string& id, const v1::Task* task) {
  MutexLock lock(&mu_);
  --lone_waits_;
  auto it = entries_.find(id);
  if (task == nullptr || it == entries_.end() || it->second.done) return;
  it->second.done = true;
  it->second.answer = *task;
  cv_.SignalAll();
}

bool WaitMux::Arrived(const std::string& id) {
  MutexLock lock(&mu_);
  auto it = entries_.find(id);
  return it != entries_.end() && it->second.done && it->second.answer.ok();
}

}  // namespace forq::client_internal
