// File: kernels/cuda/gemm.cc
//
// Gemm (kernels/cuda/gemm.h) over cuBLASLt.
//
// Row-major to column-major: cuBLASLt is column-major, so the row-major product
// y[m, n] = x[m, k] · w[n, k]ᵀ is computed as its transpose, yᵀ = w · xᵀ in column-major
// terms: A = w seen as a column-major k x n matrix (leading dimension ldw) used transposed,
// B = x seen as column-major k x m (leading dimension k), C = D = y as column-major n x m
// (leading dimension n). The epilogue bias is a vector over the rows of D, i.e. over y's n
// output features, broadcast over the m tokens: exactly Linear's bias.
#include "kernels/cuda/gemm.h"

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <map>
#include <memory>
#include <tuple>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_buffer.h"
#include "kernels/cuda/elementwise.h"

namespace kvscope::kernels::cuda {
namespace {

// Plans kept before the cache is dropped and rebuilt (shapes vary with the batch).
constexpr size_t kMaxCachedPlans = 1024;

// The largest power of two (<= 256) dividing the address; 256 for null.
uint32_t Alignment(const void* p) {
  const auto addr = reinterpret_cast<uintptr_t>(p);
  if (addr == 0) return 256;
  const uintptr_t low = addr & (~addr + 1);
  return static_cast<uint32_t>(low < 256 ? low : 256);
}

bool ToCudaType(DType dtype, cudaDataType_t* type) {
  switch (dtype) {
    case DType::kF32:
      *type = CUDA_R_32F;
      return true;
    case DType::kF16:
      *type = CUDA_R_16F;
      return true;
    case DType::kBF16:
      *type = CUDA_R_16BF;
      return true;
  }
  return false;
}

// The descriptors and algorithm of one shape; owns the cuBLASLt objects.
struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr;  // w
  cublasLtMatrixLayout_t b = nullptr;  // x
  cublasLtMatrixLayout_t c = nullptr;  // y (C and D)
  cublasLtMatmulAlgo_t algo{};

  Plan() = default;
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;
  ~Plan() {
    if (c != nullptr) cublasLtMatrixLayoutDestroy(c);
    if (b != nullptr) cublasLtMatrixLayoutDestroy(b);
    if (a != nullptr) cublasLtMatrixLayoutDestroy(a);
    if (desc != nullptr) cublasLtMatmulDescDestroy(desc);
  }
};

// dtype, m, n, k, ldw, has bias, alignments of x, w, y, bias.
using PlanKey =
    std::tuple<int, int64_t, int64_t, int64_t, int64_t, bool, uint32_t, uint32_t, uint32_t,
               uint32_t>;

struct PreferenceGuard {
  cublasLtMatmulPreference_t pref = nullptr;
  ~PreferenceGuard() {
    if (pref != nullptr) cublasLtMatmulPreferenceDestroy(pref);
  }
};

}  // namespace

struct Gemm::Impl {
  cublasLtHandle_t handle = nullptr;
  DeviceBuffer workspace;
  std::map<PlanKey, std::unique_ptr<Plan>> plans;

  ~Impl() {
    plans.clear();
    if (handle != nullptr) cublasLtDestroy(handle);
  }

  absl::StatusOr<Plan*> GetPlan(const PlanKey& key, cudaDataType_t type) {
    auto it = plans.find(key);
    if (it != plans.end()) return it->second.get();
    const auto [dtype_int, m, n, k, ldw, has_bias, align_x, align_w, align_y, align_bias] = key;
    (void)dtype_int;
    auto plan = std::make_unique<Plan>();
    KVSCOPE_CUDA_RETURN_IF_ERROR(
        cublasLtMatmulDescCreate(&plan->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t trans_a = CUBLAS_OP_T;
    const cublasOperation_t trans_b = CUBLAS_OP_N;
    KVSCOPE_CUDA_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(
        plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, &trans_a, sizeof(trans_a)));
    KVSCOPE_CUDA_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(
        plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, &trans_b, sizeof(trans_b)));
    if (has_bias) {
      const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
      KVSCOPE_CUDA_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(
          plan->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)));
      const int32_t bias_type = type;  // the bias is stored like y
      KVSCOPE_CUDA_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(
          plan->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof(bias_type)));
    }
    KVSCOPE_CUDA_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(
        &plan->a, type, static_cast<uint64_t>(k), static_cast<uint64_t>(n), ldw));
    KVSCOPE_CUDA_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(
        &plan->b, type, static_cast<uint64_t>(k), static_cast<uint64_t>(m), k));
    KVSCOPE_CUDA_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(
        &plan->c, type, static_cast<uint64_t>(n), static_cast<uint64_t>(m), n));

    PreferenceGuard guard;
    KVSCOPE_CUDA_RETURN_IF_ERROR(cublasLtMatmulPreferenceCreate(&guard.pref));
    const uint64_t max_workspace = workspace.bytes();
    KVSCOPE_CUDA_RETURN_IF_ERROR(cublasLtMatmulPreferenceSetAttribute(
        guard.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &max_workspace,
        sizeof(max_workspace)));
    // Views into larger buffers may be less than 256-byte aligned; tell the heuristic.
    const std::pair<cublasLtMatmulPreferenceAttributes_t, uint32_t> alignments[] = {
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, align_w},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, align_x},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, align_y},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, align_y},
    };
    for (const auto& [attribute, bytes] : alignments) {
      KVSCOPE_CUDA_RETURN_IF_ERROR(
          cublasLtMatmulPreferenceSetAttribute(guard.pref, attribute, &bytes, sizeof(bytes)));
    }
    (void)align_bias;  // part of the key: the epilogue's bias loads depend on it
    cublasLtMatmulHeuristicResult_t result{};
    int returned = 0;
    KVSCOPE_CUDA_RETURN_IF_ERROR(cublasLtMatmulAlgoGetHeuristic(
        handle, plan->desc, plan->a, plan->b, plan->c, plan->c, guard.pref, 1, &result,
        &returned));
    if (returned == 0) {
      return absl::InternalError(absl::StrCat("Gemm: cuBLASLt has no algorithm for m ", m,
                                              ", n ", n, ", k ", k, ", ldw ", ldw,
                                              has_bias ? " with bias" : ""));
    }
    plan->algo = result.algo;
    if (plans.size() >= kMaxCachedPlans) plans.clear();
    Plan* raw = plan.get();
    plans.emplace(key, std::move(plan));
    return raw;
  }
};

Gemm::Gemm(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Gemm::Gemm(Gemm&& other) noexcept = default;
Gemm& Gemm::operator=(Gemm&& other) noexcept = default;
Gemm::~Gemm() = default;

absl::StatusOr<Gemm> Gemm::Create(size_t workspace_bytes) {
  auto impl = std::make_unique<Impl>();
  KVSCOPE_CUDA_RETURN_IF_ERROR(cublasLtCreate(&impl->handle));
  if (workspace_bytes > 0) {
    absl::StatusOr<DeviceBuffer> workspace = DeviceBuffer::Allocate(workspace_bytes);
    if (!workspace.ok()) return workspace.status();
    impl->workspace = std::move(*workspace);
  }
  return Gemm(std::move(impl));
}

absl::Status Gemm::Linear(const void* x, int64_t m, int64_t k, const void* w, int64_t n,
                          int64_t ldw, const void* bias, void* y, bool accumulate, DType dtype,
                          cudaStream_t stream) {
  cudaDataType_t type;
  if (!ToCudaType(dtype, &type)) {
    return absl::InvalidArgumentError(
        absl::StrCat("Gemm: unsupported element type ", static_cast<int>(dtype)));
  }
  if (m < 0 || k < 0 || n < 0 || ldw < (k > 1 ? k : 1)) {
    return absl::InvalidArgumentError(absl::StrCat("Gemm: bad shape (m ", m, ", k ", k, ", n ",
                                                   n, ", ldw ", ldw, "; ldw >= max(k, 1))"));
  }
  if (impl_ == nullptr) return absl::FailedPreconditionError("Gemm: moved-from object");
  if (m == 0 || n == 0) return absl::OkStatus();
  if (y == nullptr || (k > 0 && (x == nullptr || w == nullptr))) {
    return absl::InvalidArgumentError("Gemm: null x, w or y");
  }
  if (k == 0) {
    // The empty sum: cuBLASLt does not take k == 0; make it explicit as the CPU does.
    if (!accumulate) {
      KVSCOPE_CUDA_RETURN_IF_ERROR(
          cudaMemsetAsync(y, 0, static_cast<size_t>(m * n) * DTypeSize(dtype), stream));
    }
    if (bias != nullptr) return AddBias(y, bias, m, n, dtype, stream);
    return absl::OkStatus();
  }

  const PlanKey key{static_cast<int>(dtype), m,           n,           k,
                    ldw,                     bias != nullptr, Alignment(x), Alignment(w),
                    Alignment(y),            Alignment(bias)};
  absl::StatusOr<Plan*> plan = impl_->GetPlan(key, type);
  if (!plan.ok()) return plan.status();
  if (bias != nullptr) {
    KVSCOPE_CUDA_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(
        (*plan)->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
  }
  const float alpha = 1.0f;
  const float beta = accumulate ? 1.0f : 0.0f;  // beta == 0: y is not read (may be garbage)
  KVSCOPE_CUDA_RETURN_IF_ERROR(cublasLtMatmul(
      impl_->handle, (*plan)->desc, &alpha, w, (*plan)->a, x, (*plan)->b, &beta, y,
      (*plan)->c, y, (*plan)->c, &(*plan)->algo, impl_->workspace.data(),
      impl_->workspace.bytes(), stream));
  return absl::OkStatus();
}

}  // namespace kvscope::kernels::cuda
