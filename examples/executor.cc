// Python: with ProcessPoolExecutor() as ex:
//             fut = ex.submit(f, x); print(fut.result())
//             for r in ex.map(g, xs): print(r)
#include "forq/executor.h"

#include <vector>

#include "examples/example_util.h"

namespace forq::examples {
namespace {

int Run(int argc, char** argv) {
  auto client = ConnectFromArgs(argc, argv);
  std::vector<forq::TaskFuture> futures;
  {
    forq::Executor ex(*client);
    forq::TaskFuture fut = Must(ex.Submit("sha256", "abc"), "submit");
    std::string digest = Must(fut.Get(), "result");
    std::cout << "sha256(abc) = " << digest << "\n";
    Check(
        digest ==
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        "sha256 of abc");
    std::vector<std::string> words = {"a", "b", "c"};
    int n = 0;
    for (const forq::MapItem& r : ex.Map("echo", words)) {
      std::cout << "map " << r.index << " -> " << r.result << "\n";
      Check(r.ok() && r.result == words[r.index], "map result");
      ++n;
    }
    Check(n == 3, "three map results");
    for (int i = 0; i < 3; ++i) {
      futures.push_back(Must(ex.Submit("sleep", "100"), "submit sleep"));
    }
    // Leaving the block shuts the executor down and waits, like `with`.
  }
  for (const forq::TaskFuture& f : futures) {
    forq::v1::Task t = Must(client->Get(f.id()), "get");
    Check(t.state() == forq::v1::SUCCEEDED, "shutdown waited for " + f.id());
  }
  std::cout << "ok: submit, map and shutdown(wait=True)\n";
  return 0;
}

}  // namespace
}  // namespace forq::examples

int main(int argc, char** argv) { return forq::examples::Run(argc, argv); }
