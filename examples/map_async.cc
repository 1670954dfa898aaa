// Python: with Pool() as pool:
//             r = pool.map_async(f, range(1000), chunksize=100)
//             print(sum(r.get(timeout=60)))
// Client::SubmitMany sends each chunk (SubmitBatchAsync) without waiting
// for forqd's acknowledgement of the previous one; one future per input.
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"

#include "examples/example_util.h"

namespace forq::examples {
namespace {

int Run(int argc, char** argv) {
  auto client = ConnectFromArgs(argc, argv);
  constexpr int kInputs = 1000;
  std::vector<v1::TaskSpec> specs(kInputs);
  for (int i = 0; i < kInputs; ++i) {
    specs[i].set_kind("echo");
    specs[i].set_payload(absl::StrCat(i));
  }
  // Chunks of 100, four chunks in flight.
  Client::ManyOptions chunks;
  chunks.batch = 100;
  chunks.in_flight = 4;
  std::vector<TaskFuture> futures =
      Must(client->SubmitMany(specs, chunks), "submit");
  Check(futures.size() == kInputs, "one future per input");
  // map_async keeps the input order: so do the futures.
  int64_t sum = 0;
  for (int i = 0; i < kInputs; ++i) {
    std::string got = Must(futures[i].Get(absl::Seconds(60)), "get");
    Check(got == absl::StrCat(i), "result " + absl::StrCat(i) + " in order");
    sum += i;
  }
  std::cout << "ok: " << kInputs << " results in " << kInputs / chunks.batch
            << " chunks, sum " << sum << "\n";
  return 0;
}

}  // namespace
}  // namespace forq::examples

int main(int argc, char** argv) { return forq::examples::Run(argc, argv); }
