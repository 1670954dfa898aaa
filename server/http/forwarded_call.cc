#include "server/http/forwarded_call.h"

#include <utility>

namespace forq::server {

std::shared_ptr<ForwardedCall> ForwardedCall::Start(
    grpc::GenericStub* stub, CallTracker* tracker, const std::string& method,
    std::vector<grpc::ByteBuffer> requests, Handlers handlers,
    const std::string& authorization) {
  // The tracker owns the call until OnDone; the constructor is private so
  // make_shared cannot reach it.
  std::shared_ptr<ForwardedCall> call(
      new ForwardedCall(tracker, std::move(requests), std::move(handlers)));
  if (!tracker->Add(call)) return nullptr;
  if (!authorization.empty()) {
    call->context_.AddMetadata("authorization", authorization);
  }
  stub->PrepareBidiStreamingCall(&call->context_, method, grpc::StubOptions(),
                                 call.get());
  // The hold keeps OnDone from running between a delivered message and the
  // consumer's next ReadNext(); it is dropped when a read fails or on Cancel.
  call->AddHold();
  call->StartRead(&call->response_);
  call->WriteNext();
  call->StartCall();
  return call;
}

ForwardedCall::ForwardedCall(CallTracker* tracker,
                             std::vector<grpc::ByteBuffer> requests,
                             Handlers handlers)
    : tracker_(tracker),
      requests_(std::move(requests)),
      handlers_(std::move(handlers)) {}

void ForwardedCall::WriteNext() {
  if (next_write_ >= requests_.size()) return;
  const size_t i = next_write_++;
  if (i + 1 == requests_.size()) {
    StartWriteLast(&requests_[i], grpc::WriteOptions());
  } else {
    StartWrite(&requests_[i]);
  }
}

void ForwardedCall::ReadNext() {
  if (hold_released_.load(std::memory_order_acquire)) return;
  StartRead(&response_);
}

void ForwardedCall::Cancel() {
  context_.TryCancel();
  ReleaseHold();
}

void ForwardedCall::ReleaseHold() {
  // acq_rel: exactly one caller wins and removes the hold.
  if (!hold_released_.exchange(true, std::memory_order_acq_rel)) {
    RemoveHold();
  }
}

void ForwardedCall::OnReadInitialMetadataDone(bool ok) {
  if (ok && handlers_.on_headers) handlers_.on_headers();
}

void ForwardedCall::OnReadDone(bool ok) {
  if (!ok) {
    ReleaseHold();
    return;
  }
  grpc::ByteBuffer msg;
  msg.Swap(&response_);
  handlers_.on_message(msg);
}

void ForwardedCall::OnWriteDone(bool ok) {
  // A failed write means the call is ending; the failed read and OnDone
  // report why.
  if (ok) WriteNext();
}

void ForwardedCall::OnDone(const grpc::Status& status) {
  // on_done runs, and the handlers (and whatever they own) are gone, before
  // the call leaves the tracker: CancelAllAndWait() returning must mean no
  // handler of any call can still run, so the consumer may tear down what the
  // handlers post to (the gateway's io_context). The tracker's reference
  // keeps the call alive until Remove; `self` then keeps it to the end here,
  // as gRPC allows the reactor to be destroyed once OnDone runs.
  {
    Handlers handlers = std::move(handlers_);
    handlers_ = Handlers();
    handlers.on_done(status);
  }
  std::shared_ptr<ForwardedCall> self = tracker_->Remove(this);
}

bool CallTracker::Add(std::shared_ptr<ForwardedCall> call) {
  MutexLock lock(&mu_);
  if (stopping_) return false;
  ForwardedCall* key = call.get();
  calls_.emplace(key, std::move(call));
  return true;
}

std::shared_ptr<ForwardedCall> CallTracker::Remove(ForwardedCall* call) {
  std::shared_ptr<ForwardedCall> out;
  MutexLock lock(&mu_);
  auto it = calls_.find(call);
  if (it != calls_.end()) {
    out = std::move(it->second);
    calls_.erase(it);
  }
  if (calls_.empty()) cv_.SignalAll();
  return out;
}

void CallTracker::CancelAllAndWait() {
  std::vector<std::shared_ptr<ForwardedCall>> live;
  {
    MutexLock lock(&mu_);
    stopping_ = true;
    for (auto& [key, call] : calls_) live.push_back(call);
  }
  // Cancel outside the lock: never call into gRPC holding mu_.
  for (auto& call : live) call->TryCancel();
  live.clear();
  MutexLock lock(&mu_);
  while (!calls_.empty()) cv_.Wait(&mu_);
}

size_t CallTracker::live() {
  MutexLock lock(&mu_);
  return calls_.size();
}

}  // namespace forq::server
