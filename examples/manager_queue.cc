// Python: q = Manager().Queue()
//         pool.apply_async(producer, (q,)); pool.apply_async(consumer, (q,))
// A producer task puts items on a Manager queue; consumer tasks, running in
// other worker processes, take them. The built-in kinds mp.queue_put and
// mp.queue_get are the task functions.
#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

#include "examples/example_util.h"
#include "forq/pool.h"

namespace forq::examples {
namespace {

int Run(int argc, char** argv) {
  auto client = ConnectFromArgs(argc, argv);
  forq::Pool pool(*client);
  const std::string queue =
      absl::StrCat("example-queue-", absl::ToUnixMicros(absl::Now()));
  const std::vector<std::string> items = {"apple", "banana", "cherry"};
  std::string put = absl::StrCat("queue=", queue);
  for (const std::string& it : items) absl::StrAppend(&put, " item=", it);
  forq::TaskFuture producer =
      Must(pool.ApplyAsync("mp.queue_put", put), "producer");
  // Consumers block in their worker until an item is there. The producer
  // goes first so that, on a pool of two workers, consumers cannot hold
  // every worker while the producer waits for one.
  std::vector<forq::TaskFuture> consumers;
  for (size_t i = 0; i < items.size(); ++i) {
    consumers.push_back(Must(
        pool.ApplyAsync("mp.queue_get",
                        absl::StrCat("queue=", queue, " timeout_ms=20000")),
        "consumer"));
  }
  std::string n = Must(producer.Get(absl::Seconds(60)), "producer result");
  std::cout << "producer put " << n << " items on " << queue << "\n";
  Check(n == "3", "three items put");
  std::vector<std::string> got;
  for (const forq::TaskFuture& c : consumers) {
    forq::v1::Task t = Must(c.WaitFor(absl::Seconds(60)), "consumer");
    Check(t.state() == forq::v1::SUCCEEDED,
          "consumer succeeded: " + t.error().message());
    std::cout << "consumer in pid " << t.worker_pid() << " got " << t.result()
              << "\n";
    got.push_back(t.result());
  }
  std::sort(got.begin(), got.end());
  Check(got == items, "every item consumed exactly once");
  std::cout << "ok: 3 items passed between tasks through a Manager queue\n";
  return 0;
}

}  // namespace
}  // namespace forq::examples

int main(int argc, char** argv) { return forq::examples::Run(argc, argv); }
