#include "worker/cpu_quota.h"

#include <stdlib.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "gtest/gtest.h"

namespace forq::worker {
namespace {

// A fake cgroup tree in a fresh temporary directory.
class CpuQuotaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/forq-cgroup-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    paths_.root = dir_ + "/fs";
    paths_.self_cgroup = dir_ + "/self_cgroup";
    std::filesystem::create_directories(paths_.root);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Writes `text` to root/`rel`, creating directories.
  void Write(const std::string& rel, const std::string& text) {
    const std::string path = paths_.root + "/" + rel;
    std::filesystem::create_directories(
        std::filesystem::path(path).parent_path());
    std::ofstream(path) << text;
  }
  void SelfCgroup(const std::string& text) {
    std::ofstream(paths_.self_cgroup) << text;
  }

  std::string dir_;
  CgroupPaths paths_;
};

TEST_F(CpuQuotaTest, NothingReadableMeansNoLimit) {
  EXPECT_EQ(CgroupCpuLimit(paths_), std::nullopt);
}

TEST_F(CpuQuotaTest, V2MaxMeansNoLimit) {
  SelfCgroup("0::/\n");
  Write("cpu.max", "max 100000\n");
  EXPECT_EQ(CgroupCpuLimit(paths_), std::nullopt);
}

TEST_F(CpuQuotaTest, V2QuotaIsRoundedUp) {
  SelfCgroup("0::/\n");
  Write("cpu.max", "200000 100000\n");
  EXPECT_EQ(CgroupCpuLimit(paths_), 2);
  Write("cpu.max", "150000 100000\n");
  EXPECT_EQ(CgroupCpuLimit(paths_), 2);
  Write("cpu.max", "100000 100000\n");
  EXPECT_EQ(CgroupCpuLimit(paths_), 1);
  // Half a CPU still runs one worker.
  Write("cpu.max", "50000 100000\n");
  EXPECT_EQ(CgroupCpuLimit(paths_), 1);
  Write("cpu.max", "6400000 100000\n");
  EXPECT_EQ(CgroupCpuLimit(paths_), 64);
}

TEST_F(CpuQuotaTest, V2WithoutSelfCgroupFileReadsTheMountPoint) {
  Write("cpu.max", "300000 100000\n");
  EXPECT_EQ(CgroupCpuLimit(paths_), 3);
}

TEST_F(CpuQuotaTest, V2TightestAncestorWins) {
  SelfCgroup("0::/kubepods/pod1/ctr\n");
  Write("kubepods/cpu.max", "max 100000\n");
  Write("kubepods/pod1/cpu.max", "200000 100000\n");
  Write("kubepods/pod1/ctr/cpu.max", "max 100000\n");
  EXPECT_EQ(CgroupCpuLimit(paths_), 2);
  Write("kubepods/pod1/ctr/cpu.max", "100000 100000\n");
  EXPECT_EQ(CgroupCpuLimit(paths_), 1);
}

TEST_F(CpuQuotaTest, V2OwnCgroupNotVisibleReadsTheMountPoint) {
  // A container without a cgroup namespace: /proc/self/cgroup names the
  // host path, the mount shows the container's own cgroup.
  SelfCgroup("0::/machine.slice/libpod-abc.scope\n");
  Write("cpu.max", "100000 100000\n");
  EXPECT_EQ(CgroupCpuLimit(paths_), 1);
}

TEST_F(CpuQuotaTest, V2GarbageIsIgnored) {
  SelfCgroup("0::/\n");
  for (const char* bad :
       {"", "100000", "abc 100000", "100000 0", "-5 100000", "1 2 3"}) {
    Write("cpu.max", bad);
    EXPECT_EQ(CgroupCpuLimit(paths_), std::nullopt) << "cpu.max: " << bad;
  }
}

TEST_F(CpuQuotaTest, V1NoQuota) {
  SelfCgroup("4:cpu,cpuacct:/\n0::/\n");
  Write("cpu,cpuacct/cpu.cfs_quota_us", "-1\n");
  Write("cpu,cpuacct/cpu.cfs_period_us", "100000\n");
  EXPECT_EQ(CgroupCpuLimit(paths_), std::nullopt);
}

TEST_F(CpuQuotaTest, V1Quota) {
  SelfCgroup("4:cpu,cpuacct:/\n0::/\n");
  Write("cpu,cpuacct/cpu.cfs_quota_us", "300000\n");
  Write("cpu,cpuacct/cpu.cfs_period_us", "100000\n");
  EXPECT_EQ(CgroupCpuLimit(paths_), 3);
  Write("cpu,cpuacct/cpu.cfs_period_us", "50000\n");
  EXPECT_EQ(CgroupCpuLimit(paths_), 6);
}

TEST_F(CpuQuotaTest, V1NestedAndHostPathNotVisible) {
  SelfCgroup("11:cpuset:/x\n4:cpu,cpuacct:/docker/abc\n0::/\n");
  // Hybrid host: the unified hierarchy carries no cpu.max.
  Write("unified/cgroup.procs", "");
  Write("cpu,cpuacct/cpu.cfs_quota_us", "-1\n");
  Write("cpu,cpuacct/cpu.cfs_period_us", "100000\n");
  Write("cpu,cpuacct/docker/cpu.cfs_quota_us", "400000\n");
  Write("cpu,cpuacct/docker/cpu.cfs_period_us", "100000\n");
  Write("cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "200000\n");
  Write("cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n");
  EXPECT_EQ(CgroupCpuLimit(paths_), 2);
  // Inside the container the mount point is its own cgroup.
  std::filesystem::remove_all(paths_.root + "/cpu,cpuacct/docker");
  Write("cpu,cpuacct/cpu.cfs_quota_us", "100000\n");
  EXPECT_EQ(CgroupCpuLimit(paths_), 1);
}

TEST_F(CpuQuotaTest, V1SeparateCpuMount) {
  SelfCgroup("3:cpu:/\n");
  Write("cpu/cpu.cfs_quota_us", "250000\n");
  Write("cpu/cpu.cfs_period_us", "100000\n");
  EXPECT_EQ(CgroupCpuLimit(paths_), 3);
}

TEST_F(CpuQuotaTest, TighterOfV1AndV2) {
  SelfCgroup("4:cpu,cpuacct:/\n0::/\n");
  Write("cpu.max", "400000 100000\n");
  Write("cpu,cpuacct/cpu.cfs_quota_us", "200000\n");
  Write("cpu,cpuacct/cpu.cfs_period_us", "100000\n");
  EXPECT_EQ(CgroupCpuLimit(paths_), 2);
}

}  // namespace
}  // namespace forq::worker
