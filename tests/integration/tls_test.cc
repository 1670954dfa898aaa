// TLS and mutual TLS on both front ends of a real forqd, with a throwaway
// CA made by the openssl binary; certificate reload on SIGHUP; plaintext
// clients against a TLS port fail cleanly and leave forqd serving.
#include <signal.h>

#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include "forq/client.h"
#include "tests/testing/await_task.h"
#include "tests/testing/forqd_process.h"

namespace forq {
namespace {

using ::forq::testing::AwaitResult;
using ::forq::testing::ForqdProcess;
using ::forq::testing::RunCommand;
using ::testing::HasSubstr;

void RunOk(const std::vector<std::string>& argv) {
  auto r = RunCommand(argv, "", absl::Seconds(60));
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->exit_code, 0) << absl::StrJoin(argv, " ") << "\n" << r->err;
}

// A CA named `ca` and certificates it signs, all in `dir`.
class TestCa {
 public:
  TestCa(std::string dir, std::string name)
      : dir_(std::move(dir)), name_(std::move(name)) {
    RunOk({"/usr/bin/openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
           "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
           "/CN=" + name_, "-keyout", Path(name_ + ".key"), "-out", ca_file()});
  }
  std::string ca_file() const { return Path(name_ + ".pem"); }
  std::string Path(const std::string& f) const { return dir_ + "/" + f; }

  // Issues `who`.pem / `who`.key for localhost and 127.0.0.1.
  void Issue(const std::string& who) {
    const std::string ext = Path(who + ".ext");
    std::ofstream(ext) << "subjectAltName=DNS:localhost,IP:127.0.0.1\n";
    RunOk({"/usr/bin/openssl", "req", "-newkey", "ec", "-pkeyopt",
           "ec_paramgen_curve:prime256v1", "-nodes", "-subj", "/CN=" + who,
           "-keyout", Path(who + ".key"), "-out", Path(who + ".csr")});
    RunOk({"/usr/bin/openssl", "x509", "-req", "-in", Path(who + ".csr"), "-CA",
           ca_file(), "-CAkey", Path(name_ + ".key"), "-CAcreateserial",
           "-days", "2", "-extfile", ext, "-out", Path(who + ".pem")});
  }

 private:
  std::string dir_;
  std::string name_;
};

absl::StatusOr<std::string> SubmitAndWait(ClientOptions o) {
  o.connect_timeout = absl::Seconds(5);
  auto client = Client::Connect(o);
  if (!client.ok()) return client.status();
  auto fut = (*client)->Submit("echo", "over tls");
  if (!fut.ok()) return fut.status();
  return AwaitResult(*fut, absl::Seconds(30));
}

// curl's exit code and HTTP status for a GET of `url` with `extra` args.
std::pair<int, std::string> Curl(const std::string& url,
                                 std::vector<std::string> extra) {
  std::vector<std::string> argv = {
      "/usr/bin/curl", "-sS", "--max-time",  "20", "-o",
      "/dev/null",     "-w",  "%{http_code}"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  argv.push_back(url);
  auto r = RunCommand(argv, "", absl::Seconds(30));
  EXPECT_TRUE(r.ok());
  return {r->exit_code, r->out};
}

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = forq::testing::MakeTempDir("forq-tls");
    ca_ = std::make_unique<TestCa>(dir_, "ca");
    ca_->Issue("server");
    ca_->Issue("client");
  }

  std::unique_ptr<ForqdProcess> StartForqd(std::vector<std::string> flags) {
    forq::testing::ForqdOptions o;
    o.workers = 1;
    o.flags = {"--durability=none", "--tls_cert=" + ca_->Path("server.pem"),
               "--tls_key=" + ca_->Path("server.key")};
    o.flags.insert(o.flags.end(), flags.begin(), flags.end());
    auto p = ForqdProcess::Start(o);
    EXPECT_TRUE(p.ok()) << p.status();
    return p.ok() ? *std::move(p) : nullptr;
  }

  std::string dir_;
  std::unique_ptr<TestCa> ca_;
};

TEST_F(TlsTest, TlsServesGrpcAndHttpsAndRefusesPlaintext) {
  auto forqd = StartForqd({});
  ASSERT_NE(forqd, nullptr);
  ClientOptions o;
  o.address = forqd->grpc_address();
  o.ca_file = ca_->ca_file();
  auto r = SubmitAndWait(o);
  ASSERT_TRUE(r.ok()) << r.status() << forqd->LogTail();
  EXPECT_EQ(*r, "over tls");

  // Plaintext gRPC against the TLS port: a clean connection error.
  ClientOptions plain;
  plain.address = forqd->grpc_address();
  plain.connect_timeout = absl::Seconds(2);
  auto c = Client::Connect(plain);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kUnavailable);

  const std::string https =
      absl::StrCat("https://localhost:", forqd->http_port(), "/v1/workers");
  auto [rc, code] = Curl(https, {"--cacert", ca_->ca_file()});
  EXPECT_EQ(rc, 0);
  EXPECT_EQ(code, "200");
  // An unknown CA is refused by the client; plain HTTP gets no answer.
  std::tie(rc, code) = Curl(https, {});
  EXPECT_NE(rc, 0);
  std::tie(rc, code) = Curl(
      absl::StrCat("http://127.0.0.1:", forqd->http_port(), "/healthz"), {});
  EXPECT_NE(code, "200");
  // forqd still serves after the failed handshakes.
  std::tie(rc, code) =
      Curl(absl::StrCat("https://localhost:", forqd->http_port(), "/healthz"),
           {"--cacert", ca_->ca_file()});
  EXPECT_EQ(code, "200");
}

TEST_F(TlsTest, MutualTlsNeedsAClientCertificateOnBothPorts) {
  auto forqd = StartForqd({"--tls_client_ca=" + ca_->ca_file()});
  ASSERT_NE(forqd, nullptr);
  ClientOptions o;
  o.address = forqd->grpc_address();
  o.ca_file = ca_->ca_file();
  auto r = SubmitAndWait(o);
  EXPECT_FALSE(r.ok()) << "no client certificate, yet accepted";

  o.cert_file = ca_->Path("client.pem");
  o.key_file = ca_->Path("client.key");
  r = SubmitAndWait(o);
  ASSERT_TRUE(r.ok()) << r.status() << forqd->LogTail();

  // A certificate from another CA is refused too.
  TestCa other(dir_, "other");
  other.Issue("stranger");
  o.cert_file = other.Path("stranger.pem");
  o.key_file = other.Path("stranger.key");
  r = SubmitAndWait(o);
  EXPECT_FALSE(r.ok());

  const std::string https =
      absl::StrCat("https://localhost:", forqd->http_port(), "/v1/workers");
  auto [rc, code] = Curl(https, {"--cacert", ca_->ca_file()});
  EXPECT_NE(code, "200");
  std::tie(rc, code) =
      Curl(https, {"--cacert", ca_->ca_file(), "--cert",
                   ca_->Path("client.pem"), "--key", ca_->Path("client.key")});
  EXPECT_EQ(code, "200");

  // The CLI takes the same options from FORQ_* variables.
  auto cli =
      RunCommand({"/usr/bin/env", "FORQ_CA=" + ca_->ca_file(),
                  "FORQ_CERT=" + ca_->Path("client.pem"),
                  "FORQ_KEY=" + ca_->Path("client.key"),
                  forq::testing::ForqBinary(), "--addr", forqd->grpc_address(),
                  "submit", "--wait", "echo", "cli over mtls"});
  ASSERT_TRUE(cli.ok());
  EXPECT_EQ(cli->exit_code, 0) << cli->err;
  EXPECT_THAT(cli->out, HasSubstr("cli over mtls"));
}

TEST_F(TlsTest, SighupReloadsTheCertificate) {
  auto forqd = StartForqd({});
  ASSERT_NE(forqd, nullptr);
  ClientOptions o;
  o.address = forqd->grpc_address();
  o.ca_file = ca_->ca_file();
  ASSERT_TRUE(SubmitAndWait(o).ok());

  // Replace the server's certificate with one from a new CA.
  TestCa next(dir_, "next");
  next.Issue("server2");
  RunOk({"/bin/cp", next.Path("server2.pem"), ca_->Path("server.pem")});
  RunOk({"/bin/cp", next.Path("server2.key"), ca_->Path("server.key")});
  ASSERT_EQ(kill(forqd->pid(), SIGHUP), 0);

  ClientOptions o2 = o;
  o2.ca_file = next.ca_file();
  absl::StatusOr<std::string> r;
  // The reload is asynchronous to this process: await it (bounded).
  for (int i = 0; i < 100; ++i) {
    r = SubmitAndWait(o2);
    if (r.ok()) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_TRUE(r.ok()) << r.status() << forqd->LogTail();
  EXPECT_FALSE(SubmitAndWait(o).ok()) << "old CA still accepted";
  auto [rc, code] =
      Curl(absl::StrCat("https://localhost:", forqd->http_port(), "/healthz"),
           {"--cacert", next.ca_file()});
  EXPECT_EQ(code, "200");
  EXPECT_THAT(forqd->LogTail(200), HasSubstr("reloaded the TLS certificate"));
}

TEST(TlsStartupTest, KeyNotMatchingTheCertificateStopsStartup) {
  const std::string dir = forq::testing::MakeTempDir("forq-tls-bad");
  TestCa ca(dir, "ca");
  ca.Issue("a");
  ca.Issue("b");
  auto r = RunCommand(
      {forq::testing::ForqdBinary(), "--workers=1", "--grpc_addr=127.0.0.1:0",
       "--http_addr=127.0.0.1:0", "--tls_cert=" + ca.Path("a.pem"),
       "--tls_key=" + ca.Path("b.key"), "--data_dir=" + dir + "/data"},
      "", absl::Seconds(30));
  ASSERT_TRUE(r.ok());
  EXPECT_NE(r->exit_code, 0);
  EXPECT_THAT(r->err + r->out, HasSubstr("is not the key of the certificate"));
}

}  // namespace
}  // namespace forq
