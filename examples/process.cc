// Python: p = Process(target=f, args=(x,)); p.start(); p.join();
// p.exitcode / p.pid. Here one task runs in one of forqd's forked workers;
// the finished task names the worker's pid.
#include <unistd.h>

#include "examples/example_util.h"

namespace forq::examples {
namespace {

int Run(int argc, char** argv) {
  auto client = ConnectFromArgs(argc, argv);
  forq::TaskFuture p = Must(client->Submit("primes", "50000"), "start");
  std::cout << "started task " << p.id() << "\n";
  forq::v1::Task t = Must(p.Wait(), "join");  // p.join()
  std::cout << "task " << t.id() << " ran in worker pid " << t.worker_pid()
            << ", state " << forq::StateName(t.state()) << ", result "
            << t.result() << "\n";
  Check(t.state() == forq::v1::SUCCEEDED, "task succeeded");
  Check(t.result() == "5133", "primes <= 50000 is 5133");
  Check(t.worker_pid() > 0 && t.worker_pid() != getpid(),
        "task ran in another process");
  forq::v1::PoolStatus pool = Must(client->GetPool(), "GetPool");
  Check(t.worker_pid() != pool.server_pid(), "not in forqd's main process");
  std::cout << "ok: exit state SUCCEEDED, pid " << t.worker_pid() << "\n";
  return 0;
}

}  // namespace
}  // namespace forq::examples

int main(int argc, char** argv) { return forq::examples::Run(argc, argv); }
