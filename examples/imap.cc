// Python: for r in pool.imap(f, inputs): print(r)   # in input order
// Inputs are pulled lazily: a generator of any length works, with at most
// `window` tasks in flight.
#include <optional>
#include <vector>

#include "examples/example_util.h"
#include "forq/pool.h"

namespace forq::examples {
namespace {

int Run(int argc, char** argv) {
  auto client = ConnectFromArgs(argc, argv);
  forq::PoolOptions options;
  options.map_window = 4;
  forq::Pool pool(*client, options);
  // sleep's result is its payload: descending durations, so completion order
  // is roughly the reverse of input order.
  int next = 0;
  const std::vector<int> ms = {300, 250, 200, 150, 100, 50, 10, 5};
  forq::MapSource gen([&]() -> std::optional<forq::MapInput> {
    if (next == static_cast<int>(ms.size())) return std::nullopt;
    return forq::MapInput(std::to_string(ms[next++]));
  });
  forq::MapStream results = pool.Imap("sleep", std::move(gen));
  uint64_t expect = 0;
  for (const forq::MapItem& r : results) {
    std::cout << "item " << r.index << " -> " << r.result << "\n";
    Check(r.ok(), "item succeeded");
    Check(r.index == expect, "results come in input order");
    Check(r.result == std::to_string(ms[expect]), "result matches input");
    ++expect;
  }
  CheckOk(results.status(), "stream");
  Check(expect == ms.size(), "every input has a result");
  std::cout << "ok: " << expect << " results in input order\n";
  return 0;
}

}  // namespace
}  // namespace forq::examples

int main(int argc, char** argv) { return forq::examples::Run(argc, argv); }
