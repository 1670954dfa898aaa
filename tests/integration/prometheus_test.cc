// A real Prometheus server (Debian's /usr/bin/prometheus) scrapes a real
// forqd's /metrics; the test reads the task counters back through
// Prometheus's HTTP query API, and promtool lints the exposition.
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"

#include "forq/v1/task.pb.h"
#include "server/http/http_test_client.h"
#include "tests/testing/forqd_process.h"
#include "tests/testing/status_matchers.h"

extern char** environ;

namespace forq {
namespace {

using ::forq::server::testing::HttpCall;
using ::forq::testing::ForqdProcess;
using ::forq::testing::IsOk;
using ::forq::testing::MakeTempDir;
using ::forq::testing::RunCommand;
using ::testing::HasSubstr;

// A port the kernel just handed out and released (Prometheus cannot be told
// to pick its own and report it).
int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  const bool ok = bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
                  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0;
  close(fd);
  return ok ? ntohs(a.sin_port) : 0;
}

// Owns a child process; the destructor kills and reaps it.
class Child {
 public:
  explicit Child(const std::vector<std::string>& argv,
                 const std::string& log_path) {
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log_path.c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    std::vector<char*> args;
    args.reserve(argv.size() + 1);
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    if (posix_spawn(&pid_, args[0], &fa, nullptr, args.data(), environ) != 0) {
      pid_ = -1;
    }
    posix_spawn_file_actions_destroy(&fa);
  }
  ~Child() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  int pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
};

TEST(PrometheusTest, ScrapesTaskCountersFromForqd) {
  forq::testing::ForqdOptions opts;
  opts.workers = 2;
  auto forqd = ForqdProcess::Start(opts);
  ASSERT_THAT(forqd, IsOk());
  ASSERT_NE((*forqd)->http_port(), 0);
  const std::string http = (*forqd)->http_address();

  // Tasks first, so the value Prometheus must converge on is known.
  constexpr int kTasks = 7;
  for (int i = 0; i < kTasks; ++i) {
    auto r =
        HttpCall(http, "POST", "/v1/tasks",
                 absl::StrCat(R"({"kind":"echo","payload_text":"p)", i, "\"}"));
    ASSERT_THAT(r, IsOk());
    ASSERT_EQ(r->status, 200) << r->body;
    forq::v1::SubmitResponse resp;
    ASSERT_TRUE(
        google::protobuf::util::JsonStringToMessage(r->body, &resp).ok());
    auto w = HttpCall(
        http, "GET",
        absl::StrCat("/v1/tasks/", resp.task().id(), ":wait?timeout=30s"));
    ASSERT_THAT(w, IsOk());
    ASSERT_THAT(w->body, HasSubstr("\"done\":true"));
  }

  // promtool lints the exposition.
  auto metrics = HttpCall(http, "GET", "/metrics");
  ASSERT_THAT(metrics, IsOk());
  auto lint =
      RunCommand({"/usr/bin/promtool", "check", "metrics"}, metrics->body);
  ASSERT_THAT(lint, IsOk());
  EXPECT_EQ(lint->exit_code, 0) << lint->out << lint->err;
  EXPECT_EQ(lint->out + lint->err, "");

  const std::string dir = MakeTempDir("forq-prom");
  const int prom_port = FreePort();
  {
    std::ofstream cfg(dir + "/prometheus.yml");
    cfg << "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        << "scrape_configs:\n  - job_name: forqd\n"
        << "    static_configs:\n      - targets: ['" << http << "']\n";
  }
  Child prom({"/usr/bin/prometheus", "--config.file=" + dir + "/prometheus.yml",
              "--storage.tsdb.path=" + dir + "/data",
              absl::StrCat("--web.listen-address=127.0.0.1:", prom_port)},
             dir + "/prometheus.log");
  ASSERT_GT(prom.pid(), 0);

  // Prometheus has no push notification: poll its query API, bounded.
  const std::string prom_addr = absl::StrCat("127.0.0.1:", prom_port);
  const std::string query =
      "/api/v1/query?query=sum(forq_tasks_finished_total)";
  const std::string want = absl::StrCat("\"", kTasks, "\"]");
  std::string last;
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(60);
  bool seen = false;
  while (std::chrono::steady_clock::now() < deadline) {
    auto r = HttpCall(prom_addr, "GET", query, "", {}, std::chrono::seconds(5));
    if (r.ok()) {
      last = r->body;
      if (absl::StrContains(r->body, want)) {
        seen = true;
        break;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  std::ifstream log(dir + "/prometheus.log");
  std::string log_text((std::istreambuf_iterator<char>(log)),
                       std::istreambuf_iterator<char>());
  EXPECT_TRUE(seen) << "last answer: " << last << "\nprometheus log tail: "
                    << log_text.substr(
                           log_text.size() > 3000 ? log_text.size() - 3000 : 0);
  // The scrape target is healthy too.
  auto up = HttpCall(prom_addr, "GET", "/api/v1/query?query=up");
  ASSERT_THAT(up, IsOk());
  EXPECT_THAT(up->body, HasSubstr("\"1\"]"));
}

}  // namespace
}  // namespace forq
