// Early-return helpers for absl::Status / absl::StatusOr (absl 20220623 has
// none of its own).
#ifndef FORQ_COMMON_STATUS_MACROS_H_
#define FORQ_COMMON_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define FORQ_STATUS_CONCAT_INNER_(x, y) x##y
#define FORQ_STATUS_CONCAT_(x, y) FORQ_STATUS_CONCAT_INNER_(x, y)

// Returns the status from the enclosing function if `expr` is not OK. The
// local is not const so the return moves it (performance-no-automatic-move).
#define FORQ_RETURN_IF_ERROR(expr)               \
  do {                                           \
    ::absl::Status forq_status_ = (expr);        \
    if (!forq_status_.ok()) return forq_status_; \
  } while (0)

// `FORQ_ASSIGN_OR_RETURN(T v, StatusOrExpr());` declares/assigns `v` from the
// value, or returns the error status from the enclosing function.
#define FORQ_ASSIGN_OR_RETURN(lhs, expr)                                     \
  FORQ_ASSIGN_OR_RETURN_IMPL_(FORQ_STATUS_CONCAT_(forq_sor_, __LINE__), lhs, \
                              expr)
// `tmp` and `lhs` name a variable and a declaration, which parentheses
// would break.
// NOLINTBEGIN(bugprone-macro-parentheses)
#define FORQ_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                \
  if (!tmp.ok()) return std::move(tmp).status();    \
  lhs = std::move(tmp).value()
// NOLINTEND(bugprone-macro-parentheses)

#endif  // FORQ_COMMON_STATUS_MACROS_H_
