// Python: multiprocessing.cpu_count() and Pool() sizing one worker per core.
// forqd forks one worker per core by default; GetPool shows them.
#include <thread>

#include "examples/example_util.h"

namespace forq::examples {
namespace {

int Run(int argc, char** argv) {
  auto client = ConnectFromArgs(argc, argv);
  forq::v1::PoolStatus pool = Must(client->GetPool(), "GetPool");
  std::cout << "cores on this machine: " << std::thread::hardware_concurrency()
            << "\n"
            << "forqd pool size: " << pool.size()
            << " (forqd default = cores; --workers N overrides)\n"
            << "supervisor pid " << pool.supervisor_pid() << ", server pid "
            << pool.server_pid() << "\n";
  Check(pool.size() > 0, "pool has workers");
  Check(pool.workers_size() == pool.size(), "one entry per worker");
  for (const forq::v1::Worker& w : pool.workers()) {
    std::cout << "  slot " << w.slot() << " pid " << w.pid() << " "
              << forq::v1::WorkerState_Name(w.state()) << " tasks done "
              << w.tasks_done() << "\n";
    Check(w.pid() > 0 && w.pid() != pool.server_pid(),
          "worker is its own process");
  }
  std::cout << "ok: " << pool.size() << " forked workers\n";
  return 0;
}

}  // namespace
}  // namespace forq::examples

int main(int argc, char** argv) { return forq::examples::Run(argc, argv); }
