// File: tests/gpu_engine/gpu_engine_test_util.h
//
// Helpers shared by the GPU engine tests (gpu_model_shard_test.cc, gpu_evicting_test.cc,
// gpu_infinigen_test.cc): preset weights, logit comparisons and the per-dtype tolerance of
// the GPU engine against the CPU engine. Header-only; test code only.
#ifndef KVSCOPE_TESTS_GPU_ENGINE_GPU_ENGINE_TEST_UTIL_H_
#define KVSCOPE_TESTS_GPU_ENGINE_GPU_ENGINE_TEST_UTIL_H_

#include <cctype>
#include <cstdint>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "common/dtype.h"
#include "engine/model.h"
#include "engine/presets.h"
#include "engine/weights.h"
#include "gtest/gtest.h"
#include "tests/gpu_kernels/gpu_test_util.h"

namespace kvscope::testing {

// Synthetic weights of preset `name` (seeded); null (with a test failure) if it fails.
inline std::shared_ptr<const engine::ModelWeights> PresetWeights(const std::string& name,
                                                         uint64_t seed = 7) {
  auto config = engine::PresetConfig(name);
  EXPECT_TRUE(config.ok()) << config.status();
  if (!config.ok()) return nullptr;
  auto weights = engine::SyntheticWeights(*config, seed);
  EXPECT_TRUE(weights.ok()) << weights.status();
  if (!weights.ok()) return nullptr;
  return std::make_shared<engine::ModelWeights>(std::move(*weights));
}

// Normalized L2 error of `got` against `want` (infinity for a size mismatch or NaN/inf).
inline double NormErr(const std::vector<float>& got, const std::vector<float>& want) {
  return kernels::cuda::testing::NormalizedError(got, kernels::cuda::testing::ToDouble(want));
}

// Row `row` of a step's logits.
inline std::vector<float> RowOf(const engine::ForwardOutput& out, int64_t row) {
  return std::vector<float>(out.Row(row), out.Row(row) + out.vocab_size);
}

// The first largest entry of a logit row.
inline int32_t ArgmaxRow(const float* row, int64_t vocab) {
  int64_t best = 0;
  for (int64_t i = 1; i < vocab; ++i) {
    if (row[i] > row[best]) best = i;
  }
  return static_cast<int32_t>(best);
}

// Normalized logit error the GPU engine may show against the CPU engine (float32
// arithmetic everywhere; the storage type rounds weights, activations and KV).
inline double Tolerance(DType dtype) {
  switch (dtype) {
    case DType::kF32: return 1e-4;
    case DType::kF16: return 1e-2;
    case DType::kBF16: return 2e-2;
  }
  return 0;
}

// gtest name of a (preset, dtype) parameter: "llama_tiny_bf16".
inline std::string PresetDTypeName(
    const ::testing::TestParamInfo<std::tuple<std::string, DType>>& info) {
  std::string name =
      std::get<0>(info.param) + "_" + kernels::cuda::testing::DTypeLabel(std::get<1>(info.param));
  for (char& c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  }
  return name;
}

}  // namespace kvscope::testing

#endif  // KVSCOPE_TESTS_GPU_ENGINE_GPU_ENGINE_TEST_UTIL_H_
