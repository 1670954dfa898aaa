// Python: pool = Pool(); for x in xs: pool.apply_async(f, (x,))
//         pool.close(); pool.join()   # no more work; wait for all of it
// Then the server-side equivalent for the whole worker pool: Drain (stop
// dispatching, wait for running tasks) and Resume.
#include <vector>

#include "absl/time/time.h"

#include "examples/example_util.h"
#include "forq/pool.h"

namespace forq::examples {
namespace {

int Run(int argc, char** argv) {
  auto client = ConnectFromArgs(argc, argv);
  forq::Pool pool(*client);
  std::vector<forq::TaskFuture> futures;
  for (int ms : {200, 100, 50, 150}) {
    futures.push_back(
        Must(pool.ApplyAsync("sleep", std::to_string(ms)), "apply_async"));
  }
  pool.Close();
  Check(!pool.ApplyAsync("echo", "late").ok(), "closed pool refuses work");
  std::cout << "closed; joining " << futures.size() << " tasks\n";
  CheckOk(pool.Join(), "join");
  for (const forq::TaskFuture& f : futures) {
    forq::v1::Task t = Must(client->Get(f.id()), "get");
    std::cout << "  " << t.id() << " " << forq::StateName(t.state()) << "\n";
    Check(t.state() == forq::v1::SUCCEEDED, "joined task finished");
  }
  forq::v1::DrainResponse d =
      Must(client->Drain(absl::Seconds(30)), "drain the worker pool");
  std::cout << "drain: drained=" << d.drained() << " running=" << d.running()
            << "\n";
  Check(d.drained(), "nothing left running after join");
  forq::v1::PoolStatus p = Must(client->Resume(), "resume");
  Check(!p.draining(), "dispatching again");
  std::cout << "ok: close/join waited for every task; drain + resume\n";
  return 0;
}

}  // namespace
}  // namespace forq::examples

int main(int argc, char** argv) { return forq::examples::Run(argc, argv); }
