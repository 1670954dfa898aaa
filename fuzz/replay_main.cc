// Runs a fuzz target over files instead of under libFuzzer: each argument is
// a file or a directory of files (not recursive), fed to
// LLVMFuzzerTestOneInput once. The normal build links every fuzz target with
// this driver and ctest replays the committed corpus through it, so a
// corpus file that once crashed stays a regression test in `make test`.
#include <dirent.h>
#include <sys/stat.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

bool RunFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "cannot read %s\n", path.c_str());
    return false;
  }
  std::string data((std::istreambuf_iterator<char>(in)),
                   std::istreambuf_iterator<char>());
  LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(data.data()),
                         data.size());
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  int files = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    struct stat st;
    if (stat(arg.c_str(), &st) != 0) {
      std::fprintf(stderr, "no such file or directory: %s\n", arg.c_str());
      return 2;
    }
    if (!S_ISDIR(st.st_mode)) {
      if (!RunFile(arg)) return 2;
      ++files;
      continue;
    }
    DIR* dir = opendir(arg.c_str());
    if (dir == nullptr) return 2;
    std::vector<std::string> names;
    while (const dirent* e = readdir(dir)) {
      if (e->d_name[0] != '.') names.push_back(e->d_name);
    }
    closedir(dir);
    for (const std::string& name : names) {
      if (!RunFile(arg + "/" + name)) return 2;
      ++files;
    }
  }
  std::printf("ran %d inputs\n", files);
  // An empty corpus proves nothing: fail so a lost corpus is noticed.
  return files > 0 ? 0 : 1;
}
