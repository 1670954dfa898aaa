// A scoped temporary directory for tests.
#ifndef FORQ_TESTS_TESTING_TEMP_DIR_H_
#define FORQ_TESTS_TESTING_TEMP_DIR_H_

#include <filesystem>
#include <string>

#include "gtest/gtest.h"

#include "tests/testing/forqd_process.h"

namespace forq::testing {

// A fresh directory under $TMPDIR (or /tmp), removed with everything in it
// (even if a test made it read-only) when the object goes away.
class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "forq-test")
      : path_(MakeTempDir(prefix)) {
    EXPECT_FALSE(path_.empty()) << "mkdtemp failed";
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::permissions(path_, std::filesystem::perms::owner_all,
                                 std::filesystem::perm_options::add, ec);
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace forq::testing

#endif  // FORQ_TESTS_TESTING_TEMP_DIR_H_
