#include "worker/process_util.h"

#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "gtest/gtest.h"

namespace forq::worker {
namespace {

// The order a supervisor killed while it spawns a worker can produce: the
// worker arms its death signal only after its parent died. It must exit at
// once, not live on as an orphan of the reaper.
TEST(ProcessUtilTest, ChildWhoseParentDiedBeforeItArmedTheSignalExits) {
  int gate[2];
  ASSERT_EQ(pipe(gate), 0);
  const pid_t reaper = fork();
  ASSERT_GE(reaper, 0);
  if (reaper == 0) {
    // The orphan comes back to this process, which reports how it ended.
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    const pid_t parent = fork();
    if (parent < 0) _exit(90);
    if (parent == 0) {
      const pid_t self = getpid();
      const pid_t child = fork();
      if (child == 0) {
        close(gate[1]);
        char byte;
        // End of file once the reaper saw `parent` exit.
        while (read(gate[0], &byte, 1) < 0) {
        }
        DieWithParent(self);
        _exit(0);  // lived on
      }
      _exit(child < 0 ? 91 : 0);
    }
    close(gate[0]);
    int status = 0;
    if (waitpid(parent, &status, 0) != parent || status != 0) _exit(92);
    close(gate[1]);
    if (waitpid(-1, &status, 0) < 0) _exit(93);
    _exit(WIFEXITED(status) ? WEXITSTATUS(status) : 94);
  }
  close(gate[0]);
  close(gate[1]);
  int status = 0;
  ASSERT_EQ(waitpid(reaper, &status, 0), reaper);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 1) << "0: the orphan lived on";
}

}  // namespace
}  // namespace forq::worker
