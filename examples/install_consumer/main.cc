// Built against an installed forq: submits one echo task to argv[1] and
// prints its result. Exits 1 on any unexpected result.
#include <iostream>

#include "forq/client.h"

int main(int argc, char** argv) {
  forq::ClientOptions options;
  if (argc > 1) options.address = argv[1];
  absl::StatusOr<std::unique_ptr<forq::Client>> client =
      forq::Client::Connect(options);
  if (!client.ok()) {
    std::cerr << "connect: " << client.status() << "\n";
    return 1;
  }
  absl::StatusOr<forq::TaskFuture> f =
      (*client)->Submit("echo", "hello from an installed forq");
  if (!f.ok()) {
    std::cerr << "submit: " << f.status() << "\n";
    return 1;
  }
  absl::StatusOr<std::string> r = f->Get(absl::Seconds(60));
  if (!r.ok()) {
    std::cerr << "get: " << r.status() << "\n";
    return 1;
  }
  std::cout << "result: " << *r << "\n";
  return *r == "hello from an installed forq" ? 0 : 1;
}
