// Helpers for absl::Status / absl::StatusOr propagation. Abseil 20220623 exports none.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define MESA_STATUS_CONCAT_INNER_(a, b) a##b
#define MESA_STATUS_CONCAT_(a, b) MESA_STATUS_CONCAT_INNER_(a, b)

// Returns from the enclosing function when `expr` yields a non-OK absl::Status.
#define MESA_RETURN_IF_ERROR(expr)                 \
  do {                                             \
    ::absl::Status mesa_status_ = (expr);          \
    if (!mesa_status_.ok()) return mesa_status_;   \
  } while (0)

// `lhs` = value of the StatusOr `rexpr`, or return its error from the enclosing function.
#define MESA_ASSIGN_OR_RETURN(lhs, rexpr) \
  MESA_ASSIGN_OR_RETURN_IMPL_(MESA_STATUS_CONCAT_(mesa_statusor_, __LINE__), lhs, rexpr)
#define MESA_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                                \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = std::move(statusor).value()
