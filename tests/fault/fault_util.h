// Helpers shared by the fault-injection tests: loop counts and seeds from the
// environment (so `make test` runs short loops and `make test-fault` long
// ones, and a failing seed can be replayed), percentiles, and /proc scans.
#ifndef FORQ_TESTS_FAULT_FAULT_UTIL_H_
#define FORQ_TESTS_FAULT_FAULT_UTIL_H_

#include <dirent.h>
#include <stdlib.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/time/time.h"

namespace forq::testing {

// FORQ_FAULT_LOOPS, or `fallback` when unset or not a positive number.
inline int FaultLoops(int fallback) {
  const char* v = getenv("FORQ_FAULT_LOOPS");
  int n = 0;
  if (v != nullptr && absl::SimpleAtoi(v, &n) && n > 0) return n;
  return fallback;
}

// FORQ_FAULT_SEED when set (to replay a failure), else a fresh random seed.
inline uint64_t FaultSeed() {
  const char* v = getenv("FORQ_FAULT_SEED");
  uint64_t seed = 0;
  if (v != nullptr && absl::SimpleAtoi(v, &seed)) return seed;
  std::random_device rd;
  return (static_cast<uint64_t>(rd()) << 32) | rd();
}

// Nearest-rank percentile (p in [0, 100]) of `v`; zero for an empty vector.
inline absl::Duration Percentile(std::vector<absl::Duration> v, double p) {
  if (v.empty()) return absl::ZeroDuration();
  std::sort(v.begin(), v.end());
  const double rank = std::ceil(p / 100.0 * static_cast<double>(v.size()));
  const size_t i = rank < 1 ? 0 : static_cast<size_t>(rank) - 1;
  return v[std::min(i, v.size() - 1)];
}

struct ProcStat {
  int pid = 0;
  char state = '?';
  int ppid = 0;
};

// Parses /proc/<pid>/stat; false if the process is gone. The command name
// may hold spaces and parentheses, so fields are read after the last ')'.
inline bool ReadProcStat(int pid, ProcStat* out) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(in, line)) return false;
  const size_t close = line.rfind(')');
  if (close == std::string::npos) return false;
  std::istringstream rest(line.substr(close + 1));
  out->pid = pid;
  return static_cast<bool>(rest >> out->state >> out->ppid);
}

// The processes whose parent is `ppid`.
inline std::vector<ProcStat> ChildrenOf(int ppid) {
  std::vector<ProcStat> children;
  DIR* dir = opendir("/proc");
  if (dir == nullptr) return children;
  while (dirent* d = readdir(dir)) {
    int pid = 0;
    if (!absl::SimpleAtoi(d->d_name, &pid)) continue;
    ProcStat st;
    if (ReadProcStat(pid, &st) && st.ppid == ppid) children.push_back(st);
  }
  closedir(dir);
  return children;
}

// Pids of zombie (state Z) processes whose parent is `ppid`.
inline std::vector<int> ZombieChildren(int ppid) {
  std::vector<int> zombies;
  for (const ProcStat& c : ChildrenOf(ppid)) {
    if (c.state == 'Z') zombies.push_back(c.pid);
  }
  return zombies;
}

// `pid` and every process below it.
inline std::vector<int> ProcessTree(int pid) {
  std::vector<int> tree = {pid};
  for (size_t i = 0; i < tree.size(); ++i) {
    for (const ProcStat& c : ChildrenOf(tree[i])) tree.push_back(c.pid);
  }
  return tree;
}

// Number of open fds of `pid`, or -1 if it cannot be read.
inline int OpenFdCount(int pid) {
  DIR* dir = opendir(("/proc/" + std::to_string(pid) + "/fd").c_str());
  if (dir == nullptr) return -1;
  int n = 0;
  while (dirent* d = readdir(dir)) {
    if (d->d_name[0] != '.') ++n;
  }
  closedir(dir);
  return n;
}

}  // namespace forq::testing

#endif  // FORQ_TESTS_FAULT_FAULT_UTIL_H_
