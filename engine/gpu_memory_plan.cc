// File: engine/gpu_memory_plan.cc
#include "engine/gpu_memory_plan.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/units.h"

namespace kvscope::engine {

std::string GpuMemoryPlan::Describe() const {
  return absl::StrCat("limit ", FormatBytes(limit_bytes), ": KV pool ", FormatBytes(kv_bytes),
                      ", headroom ", FormatBytes(headroom_bytes));
}

absl::StatusOr<GpuMemoryPlan> PlanGpuMemory(const GpuMemoryInputs& in) {
  if (!(in.gpu_memory_utilization > 0.0 && in.gpu_memory_utilization <= 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "gpu_memory_utilization must be in (0, 1], got ", in.gpu_memory_utilization));
  }
  if (in.total_bytes <= 0 || in.free_bytes < 0 || in.free_bytes > in.total_bytes ||
      in.weight_bytes < 0 || in.workspace_bytes < 0 || in.requested_kv_bytes < 0 ||
      in.min_kv_bytes < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "inconsistent device memory figures: total ", in.total_bytes, ", free ", in.free_bytes,
        ", weights ", in.weight_bytes, ", workspace ", in.workspace_bytes, ", kv request ",
        in.requested_kv_bytes));
  }
  GpuMemoryPlan plan;
  plan.limit_bytes = static_cast<int64_t>(
      std::floor(static_cast<double>(in.total_bytes) * in.gpu_memory_utilization));
  if (plan.limit_bytes > in.free_bytes) {
    return absl::FailedPreconditionError(absl::StrCat(
        "gpu_memory_utilization ", in.gpu_memory_utilization, " asks for ",
        FormatBytes(plan.limit_bytes), " of the device's ", FormatBytes(in.total_bytes),
        " but only ", FormatBytes(in.free_bytes),
        " are free (another process holds the rest): lower gpu_memory_utilization to at most ",
        std::floor(static_cast<double>(in.free_bytes) / in.total_bytes * 100.0) / 100.0,
        " or free the GPU"));
  }
  const int64_t available = plan.limit_bytes - in.weight_bytes - in.workspace_bytes;
  const std::string terms =
      absl::StrCat("limit ", FormatBytes(plan.limit_bytes), " (", in.gpu_memory_utilization,
                   " x ", FormatBytes(in.total_bytes), ") - weights ",
                   FormatBytes(in.weight_bytes), " - workspace ",
                   FormatBytes(in.workspace_bytes), " = ",
                   available < 0 ? std::string("-") + FormatBytes(-available)
                                 : FormatBytes(available));
  if (available < in.min_kv_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "no device memory left for the KV cache: ", terms, ", need at least ",
        FormatBytes(in.min_kv_bytes),
        " (one block); use a larger tensor-parallel size, a smaller model or batch, or a "
        "higher gpu_memory_utilization"));
  }
  if (in.requested_kv_bytes > 0) {
    if (in.requested_kv_bytes > available) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "kv_bytes ", FormatBytes(in.requested_kv_bytes), " does not fit: ", terms,
          "; lower memory.kv_bytes to at most that, or raise gpu_memory_utilization"));
    }
    if (in.requested_kv_bytes < in.min_kv_bytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "kv_bytes ", FormatBytes(in.requested_kv_bytes), " is less than one KV block (",
          FormatBytes(in.min_kv_bytes), ")"));
    }
    plan.kv_bytes = in.requested_kv_bytes;
  } else {
    plan.kv_bytes = available;
  }
  plan.headroom_bytes = available - plan.kv_bytes;
  return plan;
}

}  // namespace kvscope::engine
