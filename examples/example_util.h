// Tiny helpers shared by the examples: connect to the forqd named by argv[1]
// and stop with a non-zero exit on anything unexpected.
#ifndef FORQ_EXAMPLES_EXAMPLE_UTIL_H_
#define FORQ_EXAMPLES_EXAMPLE_UTIL_H_

#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#include "forq/client.h"

namespace forq::examples {

// Prints "FAILED: what" and exits 1 unless `ok`.
inline void Check(bool ok, const std::string& what) {
  if (ok) return;
  std::cerr << "FAILED: " << what << std::endl;
  std::cout.flush();
  // _Exit: no static destructors while the client's threads still run.
  std::_Exit(1);
}

inline void CheckOk(const absl::Status& s, const std::string& what) {
  Check(s.ok(), what + ": " + s.ToString());
}

// Returns the value or exits 1 with the error.
template <typename T>
T Must(absl::StatusOr<T> v, const std::string& what) {
  CheckOk(v.status(), what);
  return std::move(v).value();
}

// Connects to argv[1] (default 127.0.0.1:50051).
inline std::unique_ptr<Client> ConnectFromArgs(int argc, char** argv) {
  ClientOptions options;
  if (argc > 1) options.address = argv[1];
  return Must(Client::Connect(options), "connect to " + options.address);
}

}  // namespace forq::examples

#endif  // FORQ_EXAMPLES_EXAMPLE_UTIL_H_
