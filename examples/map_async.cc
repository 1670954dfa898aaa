// Python: with Pool() as pool:
//             r = pool.map_async(f, range(1000), chunksize=100)
//             print(sum(r.get(timeout=60)))
// Client::SubmitBatchAsync sends each chunk without waiting for forqd's
// acknowledgement of the previous one; the futures come back per chunk.
#include <cstdint>
#include <deque>
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
  constexpr int kChunk = 100;
  constexpr size_t kChunksInFlight = 4;
  std::deque<PendingBatch> pending;
  std::vector<TaskFuture> futures;
  auto collect = [&] {
    for (TaskFuture& f : Must(pending.front().Wait(), "submit chunk")) {
      futures.push_back(std::move(f));
    }
    pending.pop_front();
  };
  std::vector<v1::TaskSpec> chunk;
  for (int i = 0; i < kInputs; ++i) {
    v1::TaskSpec spec;
    spec.set_kind("echo");
    spec.set_payload(absl::StrCat(i));
    chunk.push_back(std::move(spec));
    if (chunk.size() == kChunk) {
      pending.push_back(client->SubmitBatchAsync(chunk));
      chunk.clear();
      if (pending.size() == kChunksInFlight) collect();
    }
  }
  while (!pending.empty()) collect();
  Check(futures.size() == kInputs, "one future per input");
  // map_async keeps the input order: so do the futures.
  int64_t sum = 0;
  for (int i = 0; i < kInputs; ++i) {
    std::string got = Must(futures[i].Get(absl::Seconds(60)), "get");
    Check(got == absl::StrCat(i), "result " + absl::StrCat(i) + " in order");
    sum += i;
  }
  std::cout << "ok: " << kInputs << " results in " << kInputs / kChunk
            << " chunks, sum " << sum << "\n";
  return 0;
}

}  // namespace
}  // namespace forq::examples

int main(int argc, char** argv) { return forq::examples::Run(argc, argv); }
