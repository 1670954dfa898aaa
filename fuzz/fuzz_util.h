// Helpers shared by the fuzz targets.
#ifndef FORQ_FUZZ_FUZZ_UTIL_H_
#define FORQ_FUZZ_FUZZ_UTIL_H_

#include <cstdio>
#include <cstdlib>
#include <utility>

#include "absl/strings/string_view.h"

// An invariant of the code under test; a violation is a crash the fuzzer
// reports (abort), in every build mode.
#define FUZZ_CHECK(cond)                                               \
  do {                                                                 \
    if (!(cond)) {                                                     \
      std::fprintf(stderr, "%s:%d: FUZZ_CHECK failed: %s\n", __FILE__, \
                   __LINE__, #cond);                                   \
      std::abort();                                                    \
    }                                                                  \
  } while (0)

namespace forq::fuzz {

// Splits the next piece off `in` at the first `sep` (the rest if none).
inline absl::string_view TakeUntil(absl::string_view* in, char sep) {
  const size_t pos = in->find(sep);
  absl::string_view piece = in->substr(0, pos);
  in->remove_prefix(pos == absl::string_view::npos ? in->size() : pos + 1);
  return piece;
}

}  // namespace forq::fuzz

#endif  // FORQ_FUZZ_FUZZ_UTIL_H_
