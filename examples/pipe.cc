// Python: parent, child = Pipe()
//         Process(target=f, args=(child,)).start(); print(parent.recv())
// forqd has no task kind that talks over a Pipe yet, so here the "child" is
// a thread of this program holding end 1 of a Manager Pipe: it runs a task
// on the pool and sends the result back to the parent on end 0, which
// replies. Both ends could be in different processes or machines.
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

#include "examples/example_util.h"
#include "forq/manager.h"

namespace forq::examples {
namespace {

int Run(int argc, char** argv) {
  auto client = ConnectFromArgs(argc, argv);
  forq::Manager manager(*client);
  const std::string name =
      absl::StrCat("example-pipe-", absl::ToUnixMicros(absl::Now()));
  forq::Pipe pipe = manager.pipe(name);
  absl::Status child_status;
  std::string child_got;
  std::thread child([&] {
    absl::StatusOr<forq::TaskFuture> f = client->Submit("primes", "10000");
    absl::StatusOr<std::string> r =
        f.ok() ? f->Get(absl::Seconds(60)) : f.status();
    child_status = r.ok() ? pipe.Send(1, "primes(10000)=" + *r) : r.status();
    if (!child_status.ok()) return;
    absl::StatusOr<std::string> reply = pipe.Recv(1, absl::Seconds(30));
    if (reply.ok()) child_got = *reply;
    child_status = reply.status();
  });
  absl::StatusOr<std::string> msg = pipe.Recv(0, absl::Seconds(60));
  if (msg.ok()) {
    std::cout << "parent received: " << *msg << "\n";
    CheckOk(pipe.Send(0, "thanks"), "parent send");
  }
  child.join();
  CheckOk(msg.status(), "parent recv");
  CheckOk(child_status, "child");
  Check(*msg == "primes(10000)=1229", "message from the child");
  std::cout << "child received: " << child_got << "\n";
  Check(child_got == "thanks", "reply from the parent");
  std::cout << "ok: a message each way through Manager pipe " << name << "\n";
  return 0;
}

}  // namespace
}  // namespace forq::examples

int main(int argc, char** argv) { return forq::examples::Run(argc, argv); }
