// Python: with Pool() as pool:
//             results = [pool.apply_async(f, (n,)) for n in ns]
//             print([r.get(timeout=60) for r in results])
#include <vector>

#include "absl/time/time.h"

#include "examples/example_util.h"
#include "forq/pool.h"

namespace forq::examples {
namespace {

int Run(int argc, char** argv) {
  auto client = ConnectFromArgs(argc, argv);
  forq::Pool pool(*client);
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"10", "4"}, {"100", "25"}, {"1000", "168"}, {"100000", "9592"}};
  std::vector<forq::TaskFuture> results;
  results.reserve(cases.size());
  for (const auto& [n, want] : cases) {
    results.push_back(Must(pool.ApplyAsync("primes", n), "apply_async"));
  }
  for (size_t i = 0; i < cases.size(); ++i) {
    std::string got = Must(results[i].Get(absl::Seconds(60)), "get");
    std::cout << "primes(" << cases[i].first << ") = " << got << "\n";
    Check(got == cases[i].second, "expected " + cases[i].second);
  }
  // An exception in the task is re-raised by get(): here, an error status.
  forq::TaskFuture bad = Must(pool.ApplyAsync("fail", "bad input"), "apply");
  absl::StatusOr<std::string> err = bad.Get(absl::Seconds(60));
  std::cout << "failing task: " << err.status() << "\n";
  Check(!err.ok() &&
            err.status().message().find("bad input") != std::string::npos,
        "get() reports the task's error");
  std::cout << "ok: 4 results and 1 error\n";
  return 0;
}

}  // namespace
}  // namespace forq::examples

int main(int argc, char** argv) { return forq::examples::Run(argc, argv); }
