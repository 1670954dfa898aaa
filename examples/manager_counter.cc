// Python: with Manager() as m:
//             counter = m.list([0]); lock = m.Lock()
//             pool.map(increment, [(counter, lock)] * 4)  # each adds 25
// Four tasks in different worker processes do read-modify-write on one
// shared list item, each step under a shared Lock (built-in kind
// mp.counter), so no update is lost.
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

#include "examples/example_util.h"
#include "forq/manager.h"
#include "forq/pool.h"

namespace forq::examples {
namespace {

int Run(int argc, char** argv) {
  auto client = ConnectFromArgs(argc, argv);
  forq::Manager manager(*client);
  const std::string suffix = absl::StrCat(absl::ToUnixMicros(absl::Now()));
  const std::string list_name = "example-counter-" + suffix;
  const std::string lock_name = "example-lock-" + suffix;
  forq::List counter = manager.list(list_name);
  Must(counter.Append("0"), "list append 0");
  forq::Pool pool(*client);
  constexpr int kTasks = 4, kSteps = 25;
  std::vector<forq::TaskFuture> tasks;
  tasks.reserve(kTasks);
  for (int i = 0; i < kTasks; ++i) {
    tasks.push_back(Must(
        pool.ApplyAsync("mp.counter",
                        absl::StrCat("list=", list_name, " lock=", lock_name,
                                     " delta=1 n=", kSteps)),
        "apply_async mp.counter"));
  }
  for (const forq::TaskFuture& t : tasks) {
    forq::v1::Task done = Must(t.WaitFor(absl::Seconds(120)), "wait");
    Check(done.state() == forq::v1::SUCCEEDED,
          "counter task succeeded: " + done.error().message());
    std::cout << "task in pid " << done.worker_pid() << " last wrote "
              << done.result() << "\n";
  }
  std::string total = Must(counter.Get(0), "list[0]");
  std::cout << list_name << "[0] = " << total << " (want " << kTasks * kSteps
            << ")\n";
  Check(total == std::to_string(kTasks * kSteps), "no update lost");
  std::cout << "ok: " << kTasks << " tasks x " << kSteps
            << " locked increments = " << total << "\n";
  return 0;
}

}  // namespace
}  // namespace forq::examples

int main(int argc, char** argv) { return forq::examples::Run(argc, argv); }
