// File: common/dtype.h
//
// Element types of stored tensors and exact conversions to float32. Compute on the CPU is
// always float32; bf16/f16 appear only in files (and later on the GPU).
#ifndef KVSCOPE_COMMON_DTYPE_H_
#define KVSCOPE_COMMON_DTYPE_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

#include "absl/status/statusor.h"

namespace kvscope {

enum class DType { kF32, kBF16, kF16 };

// Bytes per element.
size_t DTypeSize(DType dtype);
// "F32", "BF16", "F16": the safetensors spelling.
std::string_view DTypeName(DType dtype);
// Parses the safetensors spelling; InvalidArgument for anything else.
absl::StatusOr<DType> ParseDType(std::string_view name);

// bfloat16 bits -> float32 (exact).
inline float Bf16ToF32(uint16_t bits) {
  uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// float32 -> bfloat16 bits, round to nearest even (NaN stays NaN).
uint16_t F32ToBf16(float value);

// IEEE half bits -> float32 (exact, subnormals and inf/NaN included).
float F16ToF32(uint16_t bits);

// float32 -> IEEE half bits, round to nearest even.
uint16_t F32ToF16(float value);

// Converts `count` elements of `dtype` at `src` into float32 at `dst`.
void ConvertToF32(DType dtype, const void* src, size_t count, float* dst);

}  // namespace kvscope

#endif  // KVSCOPE_COMMON_DTYPE_H_
