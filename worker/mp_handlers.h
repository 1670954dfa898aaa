// Built-in task kinds that reproduce Python multiprocessing examples through
// the Manager (a shared Queue between producer and consumer tasks, a shared
// list counter guarded by a Lock).
#ifndef FORQ_WORKER_MP_HANDLERS_H_
#define FORQ_WORKER_MP_HANDLERS_H_

#include <map>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

#include "worker/handler.h"

namespace forq::worker {

// Registers (payloads are space-separated key=value words; values cannot
// contain spaces):
//   mp.queue_put  "queue=Q item=A [item=B ...] [timeout_ms=T]"
//                 puts each item on Manager queue Q (blocking while full);
//                 result = number of items put.
//   mp.queue_get  "queue=Q [timeout_ms=T]"
//                 takes one item (blocking while empty); result = the item.
//   mp.counter    "list=L lock=K delta=D n=N [index=I] [nolock=1]"
//                 N times: acquire Lock K, read L[I], write L[I] + D,
//                 release K (L[I] must exist, e.g. `forq manager list L
//                 append 0`). nolock=1 skips the lock to show the lost
//                 updates of an unguarded read-modify-write. The lock is
//                 owned by a session of this task, closed when it returns.
//                 Result = the last value written.
absl::Status RegisterMpHandlers(HandlerRegistry& registry);

// Parses "k=v k2=v2" into a map; InvalidArgument on a word without '=', a
// repeated key (except those in `repeatable`, whose values are joined with
// '\n'), or a key not in `allowed`.
absl::StatusOr<std::multimap<std::string, std::string>> ParseMpPayload(
    absl::string_view payload,
    std::initializer_list<absl::string_view> allowed);

}  // namespace forq::worker

#endif  // FORQ_WORKER_MP_HANDLERS_H_
