// Queue and pipe operations and their waiters.
#include <algorithm>
#include <limits>

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

#include "server/manager/object_manager.h"
#include "server/manager/object_util.h"

namespace forq::server {

using namespace manager_internal;  // NOLINT(google-build-using-namespace):
                                   // internal helpers

absl::StatusOr<ObjectManager::Reply> ObjectManager::QueueOpLocked(
    const std::string& name, Object& o, Request& req, Parking& p, Batch& b) {
  if (req.maxsize != 0 && req.maxsize != o.maxsize) {
    return absl::FailedPreconditionError(absl::StrCat(
        "queue '", name, "' has maxsize ", o.maxsize, ", not ", req.maxsize));
  }
  const size_t cap =
      o.maxsize > 0 ? static_cast<size_t>(o.maxsize) : options_.max_entries;
  Reply r;
  switch (req.op) {
    case ManagerOp::kPut:
      if (o.items.size() >= cap) {
        if (o.maxsize == 0) {
          return absl::ResourceExhaustedError(absl::StrCat(
              "queue '", name, "' holds the maximum of ", cap, " items"));
        }
        p.park = true;
        p.kind = WaitKind::kQueuePut;
        return r;
      }
      o.items.push_back(req.value);
      o.seq_bytes += req.value.size();
      ++o.unfinished;
      MarkPosLocked(b, name, o.head + static_cast<int64_t>(o.items.size()) - 1);
      TouchLocked(name, o, "put", "", req.value, b);
      PumpLocked(name, o, b);
      break;
    case ManagerOp::kGet:
      if (o.items.empty()) {
        p.park = true;
        p.kind = WaitKind::kQueueGet;
        return r;
      }
      r.value = std::move(o.items.front());
      o.items.pop_front();
      o.seq_bytes -= r.value.size();
      MarkPosLocked(b, name, o.head++);
      TouchLocked(name, o, "get", "", r.value, b);
      PumpLocked(name, o, b);
      break;
    case ManagerOp::kSize:
      break;
    case ManagerOp::kTaskDone:
      if (o.unfinished <= 0) {
        return absl::FailedPreconditionError(absl::StrCat(
            "task_done() called too many times on queue '", name, "'"));
      }
      --o.unfinished;
      MarkHeaderLocked(b);  // the unfinished count lives in the header
      TouchLocked(name, o, "task_done", "", "", b);
      PumpLocked(name, o, b);
      break;
    case ManagerOp::kJoin:
      if (o.unfinished > 0) {
        p.park = true;
        p.kind = WaitKind::kQueueJoin;
        return r;
      }
      break;
    default:
      return Unsupported(o.type, req.op);
  }
  QueueStats(o.items, o.maxsize, o.unfinished, r);
  return r;
}

absl::StatusOr<ObjectManager::Reply> ObjectManager::PipeOpLocked(
    const std::string& name, Object& o, Request& req, Parking& p, Batch& b) {
  if (req.end != 0 && req.end != 1) {
    return absl::InvalidArgumentError("pipe end must be 0 or 1");
  }
  const int end = static_cast<int>(req.end);
  Reply r;
  switch (req.op) {
    case ManagerOp::kSend: {
      if (o.one_way && end != 1) {
        return absl::FailedPreconditionError(
            absl::StrCat("one-way pipe '", name, "' sends on end 1 only"));
      }
      std::deque<std::string>& inbox = o.inbox[1 - end];
      if (inbox.size() >= options_.max_entries) {
        return absl::ResourceExhaustedError(
            absl::StrCat("pipe '", name, "' is full"));
      }
      inbox.push_back(req.value);
      o.seq_bytes += req.value.size();
      TouchLocked(name, o, "send", absl::StrCat(end), req.value, b);
      PumpLocked(name, o, b);
      break;
    }
    case ManagerOp::kRecv:
      if (o.one_way && end != 0) {
        return absl::FailedPreconditionError(
            absl::StrCat("one-way pipe '", name, "' receives on end 0 only"));
      }
      if (o.inbox[end].empty()) {
        p.park = true;
        p.kind = WaitKind::kPipeRecv;
        return r;
      }
      r.value = std::move(o.inbox[end].front());
      o.inbox[end].pop_front();
      o.seq_bytes -= r.value.size();
      TouchLocked(name, o, "recv", absl::StrCat(end), r.value, b);
      break;
    case ManagerOp::kPoll:
      r.flag = !o.inbox[end].empty();
      break;
    default:
      return Unsupported(o.type, req.op);
  }
  return r;
}

void ObjectManager::PumpQueueLocked(const std::string& name, Object& o,
                                    Batch& b) {
  const size_t cap =
      o.maxsize > 0 ? static_cast<size_t>(o.maxsize) : options_.max_entries;
  bool progress = true;
  while (progress) {
    progress = false;
    while (!o.items.empty()) {
      Waiter* w = FirstWaiterLocked(
          o, [](const Waiter& x) { return x.kind == WaitKind::kQueueGet; });
      if (w == nullptr) break;
      Reply r;
      r.value = std::move(o.items.front());
      o.items.pop_front();
      o.seq_bytes -= r.value.size();
      MarkPosLocked(b, name, o.head++);
      TouchLocked(name, o, "get", "", r.value, b);
      QueueStats(o.items, o.maxsize, o.unfinished, r);
      CompleteWaiterLocked(w, b, std::move(r));
      progress = true;
    }
    while (o.items.size() < cap) {
      Waiter* w = FirstWaiterLocked(
          o, [](const Waiter& x) { return x.kind == WaitKind::kQueuePut; });
      if (w == nullptr) break;
      o.items.push_back(w->req.value);
      o.seq_bytes += w->req.value.size();
      ++o.unfinished;
      MarkPosLocked(b, name, o.head + static_cast<int64_t>(o.items.size()) - 1);
      TouchLocked(name, o, "put", "", w->req.value, b);
      Reply r;
      QueueStats(o.items, o.maxsize, o.unfinished, r);
      CompleteWaiterLocked(w, b, std::move(r));
      progress = true;
    }
  }
  if (o.unfinished == 0) {
    while (Waiter* w = FirstWaiterLocked(o, [](const Waiter& x) {
             return x.kind == WaitKind::kQueueJoin;
           })) {
      Reply r;
      QueueStats(o.items, o.maxsize, o.unfinished, r);
      CompleteWaiterLocked(w, b, std::move(r));
    }
  }
}

void ObjectManager::PumpPipeLocked(const std::string& name, Object& o,
                                   Batch& b) {
  for (int end = 0; end < 2; ++end) {
    while (!o.inbox[end].empty()) {
      Waiter* w = FirstWaiterLocked(o, [end](const Waiter& x) {
        return x.kind == WaitKind::kPipeRecv && x.req.end == end;
      });
      if (w == nullptr) break;
      Reply r;
      r.value = std::move(o.inbox[end].front());
      o.inbox[end].pop_front();
      o.seq_bytes -= r.value.size();
      TouchLocked(name, o, "recv", absl::StrCat(end), r.value, b);
      CompleteWaiterLocked(w, b, std::move(r));
    }
  }
}

}  // namespace forq::server
