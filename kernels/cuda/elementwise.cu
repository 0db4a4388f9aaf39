// File: kernels/cuda/elementwise.cu
//
// Kernels and launchers for kernels/cuda/elementwise.h. Every kernel is a grid-stride loop:
// 2-D ops put columns on grid.x (coalesced) and rows on grid.y, so no per-element division.
// One instantiation per storage type (Embedding: per element size, as it only moves bits).
#include "kernels/cuda/elementwise.h"

#include <climits>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/dispatch.h"

namespace kvscope::kernels::cuda {
namespace {

constexpr int kThreads = 256;
constexpr unsigned kMaxGridY = 65535;

// grid.x: blocks of kThreads over cols (capped; the loop strides); grid.y: rows (capped).
dim3 RowColGrid(int64_t rows, int64_t cols) {
  const unsigned x = GridFor(cols, kThreads, 4096);
  const unsigned y = static_cast<unsigned>(rows < kMaxGridY ? rows : kMaxGridY);
  return dim3(x, y < 1 ? 1 : y);
}

// Error word of Embedding: (INT32_MAX - position) in the high half, the id's bits in the low
// half. Zero means no error; atomicMax keeps the lowest position.
__device__ __host__ inline uint64_t EmbeddingErrorKey(int64_t position, int32_t id) {
  return (static_cast<uint64_t>(INT32_MAX - position) << 32) | static_cast<uint32_t>(id);
}

// E: an unsigned integer of the element size (the copy moves bits only).
template <typename E>
__global__ void EmbeddingKernel(const E* __restrict__ table, int64_t vocab, int64_t hidden,
                                const int32_t* __restrict__ ids, int64_t n, E* __restrict__ out,
                                unsigned long long* error_word) {
  for (int64_t r = blockIdx.y; r < n; r += gridDim.y) {
    const int32_t id = ids[r];
    const bool valid = id >= 0 && id < vocab;
    if (!valid && error_word != nullptr && blockIdx.x == 0 && threadIdx.x == 0) {
      atomicMax(error_word, static_cast<unsigned long long>(EmbeddingErrorKey(r, id)));
    }
    const E* src = table + (valid ? static_cast<int64_t>(id) * hidden : 0);
    E* dst = out + r * hidden;
    for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < hidden;
         c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      dst[c] = valid ? src[c] : E{0};
    }
  }
}

template <typename T>
__global__ void SiluMulKernel(const T* gate, int64_t gate_stride, const T* up,
                              int64_t up_stride, int64_t rows, int64_t cols, T* out,
                              int64_t out_stride) {
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < cols;
         c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const float g = Load(gate[r * gate_stride + c]);
      const float u = Load(up[r * up_stride + c]);
      // expf (not __expf): full float accuracy; the op is memory bound.
      out[r * out_stride + c] = Store<T>(g / (1.0f + expf(-g)) * u);
    }
  }
}

template <typename T>
__global__ void ReluKernel(T* x, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (Load(x[i]) < 0.0f) x[i] = Store<T>(0.0f);  // NaN compares false: stays NaN
  }
}

template <typename T>
__global__ void AddInPlaceKernel(T* y, const T* x, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    y[i] = Store<T>(Load(y[i]) + Load(x[i]));
  }
}

// x[r, c] (+)= a[r, c] + bias[c]: with a == nullptr this is AddBias (x += bias), otherwise
// AddBiasResidual (x += a + bias; bias may be null).
template <typename T>
__global__ void AddRowsKernel(T* x, const T* __restrict__ a, const T* __restrict__ bias,
                              int64_t rows, int64_t cols) {
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < cols;
         c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      float add = a != nullptr ? Load(a[r * cols + c]) : 0.0f;
      if (bias != nullptr) add += Load(bias[c]);
      x[r * cols + c] = Store<T>(Load(x[r * cols + c]) + add);
    }
  }
}

absl::Status CheckRows(const char* op, int64_t rows, int64_t cols) {
  if (rows < 0 || cols < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": negative shape (rows ", rows, ", cols ", cols, ")"));
  }
  return absl::OkStatus();
}

absl::Status CheckNotNull(const char* op, const char* name, const void* p) {
  if (p == nullptr) return absl::InvalidArgumentError(absl::StrCat(op, ": ", name, " is null"));
  return absl::OkStatus();
}

absl::Status AddRows(const char* op, void* x, const void* a, const void* bias, int64_t rows,
                     int64_t cols, DType dtype, cudaStream_t stream) {
  if (absl::Status st = CheckRows(op, rows, cols); !st.ok()) return st;
  if (rows == 0 || cols == 0) return DispatchDType(dtype, [](auto) { return absl::OkStatus(); });
  if (absl::Status st = CheckNotNull(op, "x", x); !st.ok()) return st;
  return DispatchDType(dtype, [&](auto tag) -> absl::Status {
    using T = typename decltype(tag)::type;
    AddRowsKernel<T><<<RowColGrid(rows, cols), kThreads, 0, stream>>>(
        static_cast<T*>(x), static_cast<const T*>(a), static_cast<const T*>(bias), rows, cols);
    KVSCOPE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    return absl::OkStatus();
  });
}

}  // namespace

absl::Status Embedding(const void* table, int64_t vocab, int64_t hidden, const int32_t* ids,
                       int64_t n, void* out, DType dtype, uint64_t* error_word,
                       cudaStream_t stream) {
  static_assert(sizeof(uint64_t) == sizeof(unsigned long long));
  if (vocab < 0 || hidden < 0 || n < 0) {
    return absl::InvalidArgumentError(absl::StrCat("Embedding: negative shape (vocab ", vocab,
                                                   ", hidden ", hidden, ", n ", n, ")"));
  }
  if (n > INT32_MAX - 1) {
    return absl::InvalidArgumentError(absl::StrCat("Embedding: n ", n, " exceeds 2^31 - 2"));
  }
  if (dtype != DType::kF32 && dtype != DType::kF16 && dtype != DType::kBF16) {
    return absl::InvalidArgumentError(
        absl::StrCat("Embedding: unsupported element type ", static_cast<int>(dtype)));
  }
  if (n == 0 || hidden == 0) return absl::OkStatus();
  if (ids == nullptr || out == nullptr || (vocab > 0 && table == nullptr)) {
    return absl::InvalidArgumentError("Embedding: null table, ids or out");
  }
  const dim3 grid = RowColGrid(n, hidden);
  auto* word = reinterpret_cast<unsigned long long*>(error_word);
  if (dtype == DType::kF32) {
    EmbeddingKernel<uint32_t><<<grid, kThreads, 0, stream>>>(
        static_cast<const uint32_t*>(table), vocab, hidden, ids, n, static_cast<uint32_t*>(out),
        word);
  } else {
    EmbeddingKernel<uint16_t><<<grid, kThreads, 0, stream>>>(
        static_cast<const uint16_t*>(table), vocab, hidden, ids, n, static_cast<uint16_t*>(out),
        word);
  }
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

absl::Status EmbeddingErrorToStatus(uint64_t error_word, int64_t vocab) {
  if (error_word == 0) return absl::OkStatus();
  const int64_t position = INT32_MAX - static_cast<int64_t>(error_word >> 32);
  const int32_t id = static_cast<int32_t>(static_cast<uint32_t>(error_word & 0xFFFFFFFFu));
  return absl::InvalidArgumentError(absl::StrCat("Embedding: token id ", id, " at position ",
                                                 position, " is outside [0, ", vocab, ")"));
}

absl::Status SiluMul(const void* gate, int64_t gate_stride, const void* up, int64_t up_stride,
                     int64_t rows, int64_t cols, void* out, int64_t out_stride, DType dtype,
                     cudaStream_t stream) {
  if (absl::Status st = CheckRows("SiluMul", rows, cols); !st.ok()) return st;
  if (gate_stride < cols || up_stride < cols || out_stride < cols) {
    return absl::InvalidArgumentError(absl::StrCat(
        "SiluMul: row strides (gate ", gate_stride, ", up ", up_stride, ", out ", out_stride,
        ") must be >= cols ", cols));
  }
  if (rows == 0 || cols == 0) return DispatchDType(dtype, [](auto) { return absl::OkStatus(); });
  if (gate == nullptr || up == nullptr || out == nullptr) {
    return absl::InvalidArgumentError("SiluMul: null gate, up or out");
  }
  return DispatchDType(dtype, [&](auto tag) -> absl::Status {
    using T = typename decltype(tag)::type;
    SiluMulKernel<T><<<RowColGrid(rows, cols), kThreads, 0, stream>>>(
        static_cast<const T*>(gate), gate_stride, static_cast<const T*>(up), up_stride, rows,
        cols, static_cast<T*>(out), out_stride);
    KVSCOPE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    return absl::OkStatus();
  });
}

absl::Status Relu(void* x, int64_t n, DType dtype, cudaStream_t stream) {
  if (n < 0) return absl::InvalidArgumentError(absl::StrCat("Relu: negative n ", n));
  if (n == 0) return DispatchDType(dtype, [](auto) { return absl::OkStatus(); });
  if (absl::Status st = CheckNotNull("Relu", "x", x); !st.ok()) return st;
  return DispatchDType(dtype, [&](auto tag) -> absl::Status {
    using T = typename decltype(tag)::type;
    ReluKernel<T><<<GridFor(n, kThreads), kThreads, 0, stream>>>(static_cast<T*>(x), n);
    KVSCOPE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    return absl::OkStatus();
  });
}

absl::Status AddInPlace(void* y, const void* x, int64_t n, DType dtype, cudaStream_t stream) {
  if (n < 0) return absl::InvalidArgumentError(absl::StrCat("AddInPlace: negative n ", n));
  if (n == 0) return DispatchDType(dtype, [](auto) { return absl::OkStatus(); });
  if (y == nullptr || x == nullptr) return absl::InvalidArgumentError("AddInPlace: null x or y");
  return DispatchDType(dtype, [&](auto tag) -> absl::Status {
    using T = typename decltype(tag)::type;
    AddInPlaceKernel<T><<<GridFor(n, kThreads), kThreads, 0, stream>>>(
        static_cast<T*>(y), static_cast<const T*>(x), n);
    KVSCOPE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    return absl::OkStatus();
  });
}

absl::Status AddBias(void* x, const void* bias, int64_t rows, int64_t cols, DType dtype,
                     cudaStream_t stream) {
  if (rows > 0 && cols > 0 && bias == nullptr) {
    return absl::InvalidArgumentError("AddBias: bias is null");
  }
  return AddRows("AddBias", x, /*a=*/nullptr, bias, rows, cols, dtype, stream);
}

absl::Status AddBiasResidual(void* residual, const void* x, const void* bias, int64_t rows,
                             int64_t cols, DType dtype, cudaStream_t stream) {
  if (rows > 0 && cols > 0 && x == nullptr) {
    return absl::InvalidArgumentError("AddBiasResidual: x is null");
  }
  return AddRows("AddBiasResidual", residual, x, bias, rows, cols, dtype, stream);
}

}  // namespace kvscope::kernels::cuda
