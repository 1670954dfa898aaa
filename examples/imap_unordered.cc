// Python: for r in pool.imap_unordered(f, inputs): print(r)  # as completed
#include <vector>

#include "examples/example_util.h"
#include "forq/pool.h"

namespace forq::examples {
namespace {

int Run(int argc, char** argv) {
  auto client = ConnectFromArgs(argc, argv);
  forq::Pool pool(*client);
  const std::vector<std::string> ms = {"800", "10", "20", "10", "30"};
  std::vector<uint64_t> order;
  forq::MapStream results = pool.ImapUnordered("sleep", ms);
  for (const forq::MapItem& r : results) {
    std::cout << "item " << r.index << " (sleep " << r.result
              << " ms) finished\n";
    Check(r.ok(), "item succeeded");
    order.push_back(r.index);
  }
  CheckOk(results.status(), "stream");
  Check(order.size() == ms.size(), "every input has a result");
  Check(order.back() == 0, "the 800 ms task finishes last");
  std::cout << "ok: the long task came last\n";
  return 0;
}

}  // namespace
}  // namespace forq::examples

int main(int argc, char** argv) { return forq::examples::Run(argc, argv); }
