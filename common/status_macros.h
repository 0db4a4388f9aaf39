// File: common/status_macros.h
//
// Propagation macros for absl::Status / absl::StatusOr. Debian 12 ships Abseil 20220623,
// which predates absl/status/status_macros.h (LTS 20260526), so kvscope defines its own.
//
//   KVSCOPE_RETURN_IF_ERROR(DoThing());
//   KVSCOPE_ASSIGN_OR_RETURN(Weights w, LoadWeights(dir));
#ifndef KVSCOPE_COMMON_STATUS_MACROS_H_
#define KVSCOPE_COMMON_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define KVSCOPE_STATUS_CONCAT_INNER_(a, b) a##b
#define KVSCOPE_STATUS_CONCAT_(a, b) KVSCOPE_STATUS_CONCAT_INNER_(a, b)

// Evaluates `expr` (an absl::Status); returns it from the current function if not OK.
#define KVSCOPE_RETURN_IF_ERROR(expr)                      \
  do {                                                     \
    ::absl::Status kvscope_status_ = (expr);               \
    if (!kvscope_status_.ok()) return kvscope_status_;     \
  } while (0)

// Evaluates `rexpr` (an absl::StatusOr<T>); on error returns its status, otherwise
// move-assigns the value to `lhs` (which may be a declaration).
#define KVSCOPE_ASSIGN_OR_RETURN(lhs, rexpr) \
  KVSCOPE_ASSIGN_OR_RETURN_IMPL_(KVSCOPE_STATUS_CONCAT_(kvscope_statusor_, __LINE__), lhs, rexpr)

#define KVSCOPE_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                                   \
  if (!statusor.ok()) return std::move(statusor).status();   \
  lhs = std::move(statusor).value()

#endif  // KVSCOPE_COMMON_STATUS_MACROS_H_
