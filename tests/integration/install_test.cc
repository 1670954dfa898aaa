// `cmake --install` produces a package another project can use: install into
// a temporary prefix, build examples/install_consumer with find_package(forq)
// and run it against a real forqd.
#include <filesystem>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include "tests/testing/forqd_process.h"
#include "tests/testing/status_matchers.h"

namespace forq {
namespace {

using ::forq::testing::CommandResult;
using ::forq::testing::ForqdOptions;
using ::forq::testing::ForqdProcess;
using ::forq::testing::IsOk;
using ::forq::testing::MakeTempDir;
using ::forq::testing::RunCommand;
using ::testing::HasSubstr;

CommandResult RunCmd(const std::vector<std::string>& argv) {
  absl::StatusOr<CommandResult> r =
      RunCommand(argv, "", /*timeout=*/absl::Seconds(240));
  EXPECT_THAT(r, IsOk());
  return r.ok() ? *r : CommandResult();
}

TEST(InstallTest, ConsumerBuiltFromInstalledPackageSubmitsATask) {
  const std::string tmp = MakeTempDir("forq-install");
  ASSERT_FALSE(tmp.empty());
  const std::string prefix = tmp + "/prefix";
  const std::string build = tmp + "/build";

  CommandResult install =
      RunCmd({FORQ_CMAKE_COMMAND, "--install", FORQ_BUILD_DIR, "--prefix",
              prefix, "--component", "forq_dev"});
  ASSERT_EQ(install.exit_code, 0) << install.out << install.err;
  for (const char* f :
       {"include/forq/client.h", "include/forq/map.h", "include/forq/pool.h",
        "include/forq/executor.h", "include/forq/manager.h",
        "include/forq/v1/task.pb.h", "lib/cmake/forq/forqConfig.cmake",
        "lib/cmake/forq/forqTargets.cmake"}) {
    EXPECT_TRUE(std::filesystem::exists(prefix + "/" + f)) << f;
  }
  // Included by forq/manager.h.
  EXPECT_TRUE(std::filesystem::exists(prefix + "/include/common/mutex.h"));

  CommandResult configure =
      RunCmd({FORQ_CMAKE_COMMAND, "-S", FORQ_CONSUMER_DIR, "-B", build, "-G",
              FORQ_CMAKE_GENERATOR, "-DCMAKE_BUILD_TYPE=Release",
              "-DCMAKE_PREFIX_PATH=" + prefix});
  ASSERT_EQ(configure.exit_code, 0) << configure.out << configure.err;
  CommandResult compile = RunCmd({FORQ_CMAKE_COMMAND, "--build", build});
  ASSERT_EQ(compile.exit_code, 0) << compile.out << compile.err;

  ForqdOptions o;
  o.workers = 1;
  auto forqd = ForqdProcess::Start(o);
  ASSERT_TRUE(forqd.ok()) << forqd.status();
  CommandResult run = RunCmd({build + "/consumer", (*forqd)->grpc_address()});
  EXPECT_EQ(run.exit_code, 0) << run.out << run.err;
  EXPECT_THAT(run.out, HasSubstr("result: hello from an installed forq"));

  std::error_code ec;
  std::filesystem::remove_all(tmp, ec);
}

}  // namespace
}  // namespace forq
