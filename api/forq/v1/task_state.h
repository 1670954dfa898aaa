// Facts about forq.v1.TaskState shared by forqd and the client library, so
// the two never disagree on them. Installed with the client headers as
// "forq/v1/task_state.h".
#ifndef FORQ_API_FORQ_V1_TASK_STATE_H_
#define FORQ_API_FORQ_V1_TASK_STATE_H_

#include "forq/v1/task.pb.h"

namespace forq::v1 {

// True for SUCCEEDED, FAILED, DEAD and CANCELLED: the task will not run
// again and its record changes no more (until the result expires).
inline bool IsTerminal(TaskState state) {
  switch (state) {
    case SUCCEEDED:
    case FAILED:
    case DEAD:
    case CANCELLED:
      return true;
    default:
      return false;
  }
}

}  // namespace forq::v1

#endif  // FORQ_API_FORQ_V1_TASK_STATE_H_
