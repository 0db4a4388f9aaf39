// File: tests/engine/engine_test_util.h
//
// Shared helpers for the engine tests: loading models, building engines, comparing logits.
#ifndef KVSCOPE_TESTS_ENGINE_ENGINE_TEST_UTIL_H_
#define KVSCOPE_TESTS_ENGINE_ENGINE_TEST_UTIL_H_

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "engine/generator.h"
#include "engine/weights.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace kvscope::testing {

inline std::shared_ptr<const engine::ModelWeights> LoadWeightsOrDie(const std::string& dir) {
  auto weights = engine::LoadModelWeights(dir);
  EXPECT_TRUE(weights.ok()) << weights.status();
  if (!weights.ok()) return nullptr;
  return std::make_shared<engine::ModelWeights>(std::move(*weights));
}

inline std::unique_ptr<engine::Engine> MakeEngine(std::shared_ptr<const engine::ModelWeights> w,
                                                  int tp = 1) {
  engine::EngineOptions options;
  options.tp_size = tp;
  auto engine = engine::Engine::Create(std::move(w), options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? std::move(*engine) : nullptr;
}

// Largest |a - b| over two equally long vectors (infinity if the sizes differ).
inline double MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(double(a[i]) - double(b[i])));
  return m;
}

inline nlohmann::json ReadJsonOrDie(const std::string& path) {
  return nlohmann::json::parse(ReadFileOrDie(path));
}

// Rows [row, row + 1) of a flat row-major [rows, vocab] JSON array.
inline std::vector<float> JsonRow(const nlohmann::json& flat, int64_t row, int64_t vocab) {
  std::vector<float> out(vocab);
  for (int64_t i = 0; i < vocab; ++i) out[i] = flat[row * vocab + i].get<float>();
  return out;
}

}  // namespace kvscope::testing

#endif  // KVSCOPE_TESTS_ENGINE_ENGINE_TEST_UTIL_H_
