// File: tests/quality/quality_test_util.h
//
// A finished run's workload and records, as the quality tests (tests/quality/,
// tests/gpu_engine/gpu_quality_test.cc) hand them to MeasureBenchQuality. Test code only.
#ifndef KVSCOPE_TESTS_QUALITY_QUALITY_TEST_UTIL_H_
#define KVSCOPE_TESTS_QUALITY_QUALITY_TEST_UTIL_H_

#include <cstdint>
#include <vector>

#include "engine/metrics.h"
#include "engine/workload.h"

namespace kvscope::testing {

// n single-turn requests, request i with a prompt of prompt_len + step * i deterministic
// ids below `vocab` and `output_len` output tokens, and their records as a completed run
// leaves them (input_tokens set).
inline void SingleTurnRun(int n, int prompt_len, int step, int32_t output_len, int32_t vocab,
                          std::vector<engine::RequestSpec>* workload,
                          std::vector<engine::RequestRecord>* records) {
  for (int i = 0; i < n; ++i) {
    engine::RequestSpec r;
    r.id = i;
    for (int j = 0; j < prompt_len + step * i; ++j) {
      r.prompt.push_back((j * 13 + i * 7 + 1) % vocab);
    }
    r.output_len = output_len;
    workload->push_back(r);
    engine::RequestRecord rec;
    rec.id = i;
    rec.input_tokens = static_cast<int64_t>(r.prompt.size());
    rec.completed = true;
    records->push_back(rec);
  }
}

}  // namespace kvscope::testing

#endif  // KVSCOPE_TESTS_QUALITY_QUALITY_TEST_UTIL_H_
