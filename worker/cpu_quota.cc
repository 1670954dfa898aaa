#include "worker/cpu_quota.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"

namespace forq::worker {
namespace {

bool IsDirectory(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// Whole file, or std::nullopt when it cannot be read.
std::optional<std::string> ReadFile(const std::string& path) {
  std::ifstream f(path);
  if (!f) return std::nullopt;
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

// ceil(quota / period), at least 1; std::nullopt for "no quota" (v2 "max",
// v1 -1) or anything unparsable.
std::optional<int> LimitOf(absl::string_view quota_s,
                           absl::string_view period_s) {
  int64_t quota = 0;
  int64_t period = 0;
  if (!absl::SimpleAtoi(quota_s, &quota) ||
      !absl::SimpleAtoi(period_s, &period) || quota <= 0 || period <= 0) {
    return std::nullopt;
  }
  return static_cast<int>(std::max<int64_t>(1, (quota + period - 1) / period));
}

// cgroup v2: cpu.max holds "<quota|max> <period>".
std::optional<int> V2Limit(const std::string& dir) {
  std::optional<std::string> text = ReadFile(dir + "/cpu.max");
  if (!text) return std::nullopt;
  std::vector<absl::string_view> fields =
      absl::StrSplit(absl::StripAsciiWhitespace(*text), ' ', absl::SkipEmpty());
  if (fields.size() != 2) return std::nullopt;
  return LimitOf(fields[0], fields[1]);
}

// cgroup v1: cpu.cfs_quota_us (-1 = none) and cpu.cfs_period_us.
std::optional<int> V1Limit(const std::string& dir) {
  std::optional<std::string> quota = ReadFile(dir + "/cpu.cfs_quota_us");
  std::optional<std::string> period = ReadFile(dir + "/cpu.cfs_period_us");
  if (!quota || !period) return std::nullopt;
  return LimitOf(absl::StripAsciiWhitespace(*quota),
                 absl::StripAsciiWhitespace(*period));
}

void TakeMin(std::optional<int>& acc, std::optional<int> v) {
  if (v && (!acc || *v < *acc)) acc = v;
}

// Tightest limit of `mount`+`path` and its ancestors up to `mount`; only the
// mount point itself when `mount`+`path` does not exist.
template <typename ReadLimit>
std::optional<int> TightestUnder(const std::string& mount,
                                 absl::string_view path, ReadLimit read) {
  std::optional<int> best;
  std::string rel(absl::StripSuffix(path, "/"));
  if (!IsDirectory(mount + rel)) rel.clear();
  while (true) {
    TakeMin(best, read(mount + rel));
    if (rel.empty()) break;
    const size_t slash = rel.rfind('/');
    rel.resize(slash == std::string::npos ? 0 : slash);
  }
  return best;
}

}  // namespace

std::optional<int> CgroupCpuLimit(const CgroupPaths& paths) {
  std::string v2_path = "/";
  std::string v1_path = "/";
  if (std::optional<std::string> self = ReadFile(paths.self_cgroup)) {
    for (absl::string_view line :
         absl::StrSplit(*self, '\n', absl::SkipEmpty())) {
      std::vector<absl::string_view> f =
          absl::StrSplit(line, absl::MaxSplits(':', 2));
      if (f.size() != 3) continue;
      if (f[0] == "0" && f[1].empty()) {
        v2_path = std::string(f[2]);
        continue;
      }
      for (absl::string_view c : absl::StrSplit(f[1], ',')) {
        if (c == "cpu") v1_path = std::string(f[2]);
      }
    }
  }
  std::optional<int> limit;
  TakeMin(limit, TightestUnder(paths.root, v2_path, V2Limit));
  for (const char* mount : {"/cpu,cpuacct", "/cpu", "/cpuacct,cpu"}) {
    const std::string dir = paths.root + mount;
    if (!IsDirectory(dir)) continue;
    TakeMin(limit, TightestUnder(dir, v1_path, V1Limit));
    break;
  }
  return limit;
}

}  // namespace forq::worker
