// forqd's local Manager socket (--manager_socket) against a real forqd:
// tokens, bad input on the wire, a client that hangs up while parked, the
// socket file's handling, a forqd restart under pooled connections and a
// stop with a parked call. The Manager's semantics over the socket are the
// ported CPython cases (manager_mp_test.cc, LocalSocket).
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "google/protobuf/io/zero_copy_stream_impl.h"
#include "gtest/gtest.h"
#include <grpcpp/grpcpp.h>

#include "api/delimited_io.h"
#include "common/scoped_fd.h"
#include "forq/client.h"
#include "forq/manager.h"
#include "server/http/http_test_client.h"
#include "tests/testing/forqd_process.h"
#include "tests/testing/status_matchers.h"

namespace forq {
namespace {

using ::forq::testing::ForqdProcess;
using ::forq::testing::IsOk;
using ::forq::testing::StatusIs;
using ::testing::HasSubstr;

constexpr char kSubmit[] = "submit-0123456789abcdef";
constexpr char kRead[] = "read-0123456789abcdef";

// A temporary directory for sockets and files, removed at the end.
class TempDir {
 public:
  TempDir() : path_(testing::MakeTempDir("manager-local")) {}
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string File(const std::string& name) const {
    return absl::StrCat(path_, "/", name);
  }

 private:
  std::string path_;
};

absl::StatusOr<std::unique_ptr<ForqdProcess>> StartForqd(
    const std::string& socket, std::vector<std::string> flags = {}) {
  flags.push_back(absl::StrCat("--manager_socket=", socket));
  return ForqdProcess::Start({.workers = 1, .flags = std::move(flags)});
}

std::unique_ptr<Manager> LocalManager(const ForqdProcess& forqd,
                                      const std::string& socket,
                                      const std::string& token = "") {
  ManagerOptions mo;
  mo.pipelined = false;
  mo.local_socket = socket;
  mo.token = token;
  mo.rpc_timeout = absl::Seconds(10);
  return std::make_unique<Manager>(
      grpc::CreateChannel(forqd.grpc_address(),
                          grpc::InsecureChannelCredentials()),
      mo);
}

// A bare connection speaking the protocol of api/forq/v1/manager.proto
// (LocalHello), for what libforq never sends.
class RawConnection {
 public:
  explicit RawConnection(const std::string& path)
      : fd_(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)), in_(fd_.get()) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path.data(), path.size());
    connected_ = connect(fd_.get(), reinterpret_cast<sockaddr*>(&addr),
                         sizeof(addr)) == 0;
    timeval tv{10, 0};  // a broken server fails the test, not hangs it
    setsockopt(fd_.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  }
  // forqd's answer to a hello: its code and message.
  absl::Status HelloStatus(const std::string& authorization = "") {
    v1::LocalHello hello;
    hello.set_authorization(authorization);
    v1::LocalHelloReply reply;
    // A refused connection may be closed before the hello arrives; its
    // reply is there to read all the same.
    if (!connected_) return absl::UnavailableError("not connected");
    (void)WriteDelimited(fd_.get(), hello);
    if (!Read(&reply)) return absl::UnavailableError("no hello reply");
    return absl::Status(static_cast<absl::StatusCode>(reply.code()),
                        reply.message());
  }
  bool Hello() { return HelloStatus().ok(); }
  bool Send(const google::protobuf::MessageLite& m) {
    return WriteDelimited(fd_.get(), m).ok();
  }
  bool SendBytes(const std::string& bytes) {
    return send(fd_.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL) ==
           static_cast<ssize_t>(bytes.size());
  }
  bool Read(google::protobuf::MessageLite* m) {
    absl::StatusOr<bool> got = ReadDelimited(&in_, 1 << 20, m);
    return got.ok() && *got;
  }
  // forqd's answer to a request it refuses whole: one result of id 0,
  // as a Status (Unavailable when the answer is not that).
  absl::Status Refusal() {
    v1::SessionResponse resp;
    if (!Read(&resp) || resp.results_size() != 1 || resp.results(0).id() != 0) {
      return absl::UnavailableError(
          absl::StrCat("not a refusal: ", resp.ShortDebugString()));
    }
    return absl::Status(static_cast<absl::StatusCode>(resp.results(0).code()),
                        resp.results(0).message());
  }
  // True when forqd closed the connection (a read ends the stream).
  bool ClosedByServer() {
    char c = 0;
    return recv(fd_.get(), &c, 1, 0) == 0;
  }
  void Close() { fd_.reset(); }

 private:
  ScopedFd fd_;
  google::protobuf::io::FileInputStream in_;
  bool connected_ = false;
};

// Waiters parked on object `name`, -1 when it cannot be listed.
int Waiters(Manager& m, const std::string& name) {
  absl::StatusOr<v1::ListObjectsResponse> objs = m.ListObjects(name);
  if (!objs.ok() || objs->objects_size() != 1) return -1;
  return static_cast<int>(objs->objects(0).waiters());
}

// Polls `cond` every 10 ms for up to 10 s.
template <typename Cond>
bool Await(Cond cond) {
  for (int i = 0; i < 1000; ++i) {
    if (cond()) return true;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return false;
}

double LocalConnectionsGauge(const ForqdProcess& forqd) {
  auto r = server::testing::HttpCall(forqd.http_address(), "GET", "/metrics");
  if (!r.ok()) return -1;
  const std::string key = "\nforq_manager_local_connections ";
  const size_t at = r->body.find(key);
  if (at == std::string::npos) return -1;
  return std::stod(r->body.substr(at + key.size()));
}

TEST(ManagerLocalSocketTest, TokensAreCheckedAtTheHello) {
  TempDir dir;
  const std::string tokens = dir.File("tokens");
  std::ofstream(tokens) << kSubmit << " submit\n" << kRead << " read\n";
  chmod(tokens.c_str(), 0600);
  const std::string sock = dir.File("m.sock");
  auto forqd = StartForqd(sock, {"--auth_tokens_file=" + tokens});
  ASSERT_THAT(forqd, IsOk());

  EXPECT_THAT(LocalManager(**forqd, sock)->dict("d").Set("k", "v"),
              StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_THAT(
      LocalManager(**forqd, sock, "unknown-0123456789abcdef")->dict("d").Len(),
      StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_THAT(LocalManager(**forqd, sock, kRead)->dict("d").Len(),
              StatusIs(absl::StatusCode::kPermissionDenied,
                       HasSubstr("local Manager socket")));
  std::unique_ptr<Manager> m = LocalManager(**forqd, sock, kSubmit);
  ASSERT_THAT(m->dict("d").Set("k", "v"), IsOk());
  EXPECT_EQ(*m->dict("d").Get("k"), "v");

  // The submit token is withdrawn (SIGHUP): a connection opened before
  // the reload is refused at its next request, as a gRPC call would be.
  std::ofstream(tokens, std::ios::trunc) << kRead << " read\n";
  ASSERT_EQ(kill((*forqd)->pid(), SIGHUP), 0);
  ASSERT_TRUE(Await([&] {
    return LocalManager(**forqd, sock, kSubmit)
               ->dict("d")
               .Len()
               .status()
               .code() == absl::StatusCode::kUnauthenticated;
  }));
  EXPECT_THAT(m->dict("d").Get("k"),
              StatusIs(absl::StatusCode::kUnauthenticated));
}

TEST(ManagerLocalSocketTest, BadRequestsAreAnsweredAndTheConnectionClosed) {
  TempDir dir;
  const std::string sock = dir.File("m.sock");
  auto forqd = StartForqd(sock);
  ASSERT_THAT(forqd, IsOk());

  // Bytes that are no SessionRequest.
  RawConnection garbage(sock);
  ASSERT_TRUE(garbage.Hello());
  ASSERT_TRUE(garbage.SendBytes(std::string("\x05\xff\xff\xff\xff\xff", 6)));
  EXPECT_THAT(garbage.Refusal(), StatusIs(absl::StatusCode::kInvalidArgument,
                                          HasSubstr("does not parse")));
  EXPECT_TRUE(garbage.ClosedByServer());

  // A size above the message limit (64 MiB): refused before anything is
  // read.
  RawConnection huge(sock);
  ASSERT_TRUE(huge.Hello());
  ASSERT_TRUE(huge.SendBytes(std::string("\x80\x80\x80\x40", 4)));  // 128 MiB
  EXPECT_THAT(huge.Refusal(), StatusIs(absl::StatusCode::kInvalidArgument,
                                       HasSubstr("the limit is 67108864")));
  EXPECT_TRUE(huge.ClosedByServer());

  // An operation that does not exist: its own error; the connection stays.
  RawConnection unknown(sock);
  ASSERT_TRUE(unknown.Hello());
  v1::SessionRequest req;
  v1::SessionOp* op = req.add_ops();
  op->set_id(7);
  *op->mutable_call() =
      Manager::MakeCall(v1::OBJECT_TYPE_DICT, "frobnicate", "d");
  op = req.add_ops();
  op->set_id(8);
  op->set_cancel(true);
  ASSERT_TRUE(unknown.Send(req));
  v1::SessionResponse resp;
  ASSERT_TRUE(unknown.Read(&resp));
  ASSERT_EQ(resp.results_size(), 2);
  EXPECT_EQ(resp.results(0).id(), 7u);
  EXPECT_EQ(resp.results(0).code(),
            static_cast<int>(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(resp.results(1).id(), 8u);
  EXPECT_THAT(resp.results(1).message(), HasSubstr("nothing to cancel"));
  v1::SessionRequest len;
  op = len.add_ops();
  op->set_id(9);
  *op->mutable_call() = Manager::MakeCall(v1::OBJECT_TYPE_DICT, "len", "d");
  ASSERT_TRUE(unknown.Send(len));
  ASSERT_TRUE(unknown.Read(&resp));
  ASSERT_EQ(resp.results_size(), 1);
  EXPECT_EQ(resp.results(0).code(), 0) << resp.results(0).message();

  // More operations in one request than one stream may have in flight.
  RawConnection many(sock);
  ASSERT_TRUE(many.Hello());
  v1::SessionRequest flood;
  for (int i = 0; i <= 100000; ++i) flood.add_ops()->set_cancel(true);
  ASSERT_TRUE(many.Send(flood));
  EXPECT_THAT(many.Refusal(), StatusIs(absl::StatusCode::kResourceExhausted,
                                       HasSubstr("the limit is 100000")));
  EXPECT_TRUE(many.ClosedByServer());

  // A hello that is not one.
  RawConnection no_hello(sock);
  ASSERT_TRUE(no_hello.SendBytes("\x03zzz"));
  EXPECT_TRUE(no_hello.ClosedByServer());

  // None of it hurt the others.
  std::unique_ptr<Manager> m = LocalManager(**forqd, sock);
  ASSERT_THAT(m->dict("d").Set("k", "v"), IsOk());
  EXPECT_EQ(*m->dict("d").Get("k"), "v");
}

// A client gone while its get is parked: the get is cancelled, so the next
// item stays in the queue instead of going to nobody.
TEST(ManagerLocalSocketTest, AHangUpCancelsTheParkedOperation) {
  TempDir dir;
  const std::string sock = dir.File("m.sock");
  auto forqd = StartForqd(sock);
  ASSERT_THAT(forqd, IsOk());
  std::unique_ptr<Manager> m = LocalManager(**forqd, sock);
  Queue q = m->queue("q");
  ASSERT_THAT(q.Size(), IsOk());  // created

  RawConnection parked(sock);
  ASSERT_TRUE(parked.Hello());
  v1::SessionRequest get;
  v1::SessionOp* op = get.add_ops();
  op->set_id(1);
  *op->mutable_call() = Manager::MakeCall(v1::OBJECT_TYPE_QUEUE, "get", "q");
  ASSERT_TRUE(parked.Send(get));
  ASSERT_TRUE(Await([&] { return Waiters(*m, "q") == 1; }));
  EXPECT_EQ(LocalConnectionsGauge(**forqd), 2);
  parked.Close();
  ASSERT_TRUE(Await([&] { return Waiters(*m, "q") == 0; }));

  ASSERT_THAT(q.Put("x"), IsOk());
  EXPECT_EQ(q.Size()->size(), 1);
  EXPECT_EQ(*q.Get(), "x");
  EXPECT_TRUE(Await([&] { return LocalConnectionsGauge(**forqd) == 1; }));
}

// Past the connection cap a new connection is told so at its hello; once
// one closes there is room again.
TEST(ManagerLocalSocketTest, ConnectionsAreCapped) {
  TempDir dir;
  const std::string sock = dir.File("m.sock");
  auto forqd = StartForqd(sock);
  ASSERT_THAT(forqd, IsOk());
  std::vector<std::unique_ptr<RawConnection>> open;
  for (int i = 0; i < 256; ++i) {
    open.push_back(std::make_unique<RawConnection>(sock));
    ASSERT_TRUE(open.back()->Hello()) << i;
  }
  RawConnection refused(sock);
  EXPECT_THAT(refused.HelloStatus(),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       HasSubstr("at most 256 connections")));
  EXPECT_EQ(LocalConnectionsGauge(**forqd), 256);
  open.back()->Close();
  open.pop_back();
  ASSERT_TRUE(Await([&] { return LocalConnectionsGauge(**forqd) == 255; }));
  RawConnection again(sock);
  EXPECT_TRUE(again.Hello());
}

TEST(ManagerLocalSocketTest, SocketFile) {
  TempDir dir;
  // Left by a forqd that was killed: bound, nobody listening.
  const std::string stale = dir.File("stale.sock");
  {
    ScopedFd fd(socket(AF_UNIX, SOCK_STREAM, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, stale.data(), stale.size());
    ASSERT_EQ(bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)),
              0);
  }
  auto forqd = StartForqd(stale);
  ASSERT_THAT(forqd, IsOk());
  struct stat st {};
  ASSERT_EQ(stat(stale.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_THAT(LocalManager(**forqd, stale)->dict("d").Len(), IsOk());

  // A second forqd on the same path is refused while the first serves.
  auto second = StartForqd(stale);
  EXPECT_THAT(second.status(), StatusIs(absl::StatusCode::kInternal,
                                        HasSubstr("another process listens")));

  // Not a socket: left alone.
  const std::string file = dir.File("not-a-socket");
  std::ofstream(file) << "data";
  auto refused = StartForqd(file);
  EXPECT_THAT(refused.status(), StatusIs(absl::StatusCode::kInternal,
                                         HasSubstr("is not a socket")));
  std::ifstream in(file);
  std::string content;
  in >> content;
  EXPECT_EQ(content, "data");

  // Mode flag.
  const std::string group = dir.File("group.sock");
  auto shared = StartForqd(group, {"--manager_socket_mode=0660"});
  ASSERT_THAT(shared, IsOk());
  ASSERT_EQ(stat(group.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0660u);
  EXPECT_THAT(StartForqd(dir.File("x.sock"), {"--manager_socket_mode=rw"}),
              StatusIs(absl::StatusCode::kInternal,
                       HasSubstr("--manager_socket_mode")));

  // The file goes away with forqd.
  ASSERT_THAT((*forqd)->Stop(), IsOk());
  EXPECT_FALSE(std::filesystem::exists(stale));
}

TEST(ManagerLocalSocketTest, NoForqdThereIsAClearError) {
  ManagerOptions mo;
  mo.pipelined = false;
  mo.local_socket = "/nonexistent-dir/manager.sock";
  Manager m(
      grpc::CreateChannel("127.0.0.1:1", grpc::InsecureChannelCredentials()),
      mo);
  EXPECT_THAT(m.dict("d").Len(),
              StatusIs(absl::StatusCode::kUnavailable,
                       HasSubstr("--manager_socket=/nonexistent-dir/")));
}

// Pooled connections of a forqd that restarted: the next call goes on a
// new connection, and the objects (persisted) are still there.
TEST(ManagerLocalSocketTest, CallsGoOnAfterARestart) {
  TempDir dir;
  const std::string sock = dir.File("m.sock");
  auto forqd = StartForqd(sock);
  ASSERT_THAT(forqd, IsOk());
  std::unique_ptr<Manager> m = LocalManager(**forqd, sock);
  ASSERT_THAT(m->dict("d").Set("k", "v"), IsOk());
  ASSERT_THAT((*forqd)->Stop(), IsOk());
  ASSERT_THAT((*forqd)->Restart(), IsOk());
  absl::StatusOr<std::string> got = m->dict("d").Get("k");
  ASSERT_THAT(got, IsOk());
  EXPECT_EQ(*got, "v");
}

// SIGTERM with a call parked on the socket: forqd answers it and stops.
TEST(ManagerLocalSocketTest, StopAnswersParkedCalls) {
  TempDir dir;
  const std::string sock = dir.File("m.sock");
  auto forqd = StartForqd(sock);
  ASSERT_THAT(forqd, IsOk());
  std::unique_ptr<Manager> m = LocalManager(**forqd, sock);
  std::unique_ptr<Manager> other = LocalManager(**forqd, sock);
  ASSERT_THAT(m->queue("q").Size(), IsOk());
  absl::StatusOr<std::string> got;
  std::thread waiter([&] { got = other->queue("q").Get(); });
  ASSERT_TRUE(Await([&] { return Waiters(*m, "q") == 1; }));
  absl::StatusOr<int> status = (*forqd)->Stop(absl::Seconds(20));
  ASSERT_THAT(status, IsOk());
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << *status;
  waiter.join();
  EXPECT_FALSE(got.ok());
}

}  // namespace
}  // namespace forq
