// Process-wide settings a release build of a forq program makes at the
// start of main.
#ifndef FORQ_COMMON_RELEASE_BUILD_H_
#define FORQ_COMMON_RELEASE_BUILD_H_

#include "absl/synchronization/mutex.h"

namespace forq {

// Debian builds libabsl without NDEBUG, so every absl::Mutex (gRPC's
// included) runs abseil's deadlock detector: about a fifth of a unary call's
// instructions. Builds with NDEBUG switch it off (docs/client.md, "Release
// builds"); debug builds keep it.
inline void SkipDeadlockDetectionInReleaseBuilds() {
#ifdef NDEBUG
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
#endif
}

}  // namespace forq

#endif  // FORQ_COMMON_RELEASE_BUILD_H_
