// The CPU limit a cgroup puts on this process (container --cpus, Kubernetes
// resources.limits.cpu, systemd CPUQuota=), from cgroup v2 cpu.max or cgroup
// v1 cpu.cfs_quota_us / cpu.cfs_period_us.
#ifndef FORQ_WORKER_CPU_QUOTA_H_
#define FORQ_WORKER_CPU_QUOTA_H_

#include <optional>
#include <string>

namespace forq::worker {

// Where the cgroup files are read from. Tests point both at a temporary
// directory holding fake files.
struct CgroupPaths {
  // Mount point of the cgroup filesystems: cgroup v2 is mounted here (or
  // at `root`/unified on hybrid hosts, which carries no CPU controller);
  // cgroup v1 controllers at `root`/cpu,cpuacct or `root`/cpu.
  std::string root = "/sys/fs/cgroup";
  // The process's membership list, "ID:CONTROLLERS:PATH" lines.
  std::string self_cgroup = "/proc/self/cgroup";
};

// CPUs the process may use under its cgroup quota, rounded up
// (quota 150000 / period 100000 -> 2), at least 1. The tightest quota of
// the process's cgroup and its ancestors counts, for v2 and v1 alike; when
// the process's own cgroup directory is not visible (a container without a
// cgroup namespace sees its own cgroup at the mount point), the mount point
// itself is read. std::nullopt when no quota is set or nothing is readable.
// Thread-safe (reads files only).
std::optional<int> CgroupCpuLimit(const CgroupPaths& paths = CgroupPaths());

}  // namespace forq::worker

#endif  // FORQ_WORKER_CPU_QUOTA_H_
