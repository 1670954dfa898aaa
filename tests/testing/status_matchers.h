// GoogleTest matchers for absl::Status / absl::StatusOr (absl 20220623 ships
// none): EXPECT_THAT(s, IsOk()); EXPECT_THAT(s, StatusIs(kNotFound)).
#ifndef FORQ_TESTS_TESTING_STATUS_MATCHERS_H_
#define FORQ_TESTS_TESTING_STATUS_MATCHERS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gmock/gmock.h"

namespace forq::testing {

inline const absl::Status& GetStatus(const absl::Status& s) { return s; }
template <typename T>
const absl::Status& GetStatus(const absl::StatusOr<T>& s) {
  return s.status();
}

MATCHER(IsOk, "is OK") {
  const absl::Status& s = GetStatus(arg);
  if (!s.ok()) *result_listener << "status is " << s;
  return s.ok();
}

MATCHER_P(StatusIs, code, "has code " + absl::StatusCodeToString(code)) {
  const absl::Status& s = GetStatus(arg);
  *result_listener << "status is " << s;
  return s.code() == code;
}

MATCHER_P2(StatusIs, code, message_matcher,
           "has code " + absl::StatusCodeToString(code)) {
  const absl::Status& s = GetStatus(arg);
  *result_listener << "status is " << s;
  return s.code() == code &&
         ::testing::Matches(message_matcher)(std::string(s.message()));
}

}  // namespace forq::testing

#define FORQ_ASSERT_OK_AND_ASSIGN(lhs, expr) \
  FORQ_ASSERT_OK_AND_ASSIGN_IMPL_(           \
      FORQ_TESTING_CONCAT_(forq_test_sor_, __LINE__), lhs, expr)
#define FORQ_TESTING_CONCAT_INNER_(x, y) x##y
#define FORQ_TESTING_CONCAT_(x, y) FORQ_TESTING_CONCAT_INNER_(x, y)
// `tmp` and `lhs` name a variable and a declaration, which parentheses
// would break (as in FORQ_ASSIGN_OR_RETURN).
// NOLINTBEGIN(bugprone-macro-parentheses)
#define FORQ_ASSERT_OK_AND_ASSIGN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                    \
  ASSERT_TRUE(tmp.ok()) << tmp.status();                \
  lhs = std::move(tmp).value()
// NOLINTEND(bugprone-macro-parentheses)

#endif  // FORQ_TESTS_TESTING_STATUS_MATCHERS_H_
