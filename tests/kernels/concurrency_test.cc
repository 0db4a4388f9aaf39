// File: tests/kernels/concurrency_test.cc
//
// The ops are called at the same time from several threads (tensor-parallel ranks): each
// thread runs RmsNorm, Rope, Linear and Attention on its own buffers and must get the same
// result as a single-threaded run.
#include <cstdint>
#include <random>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/ops.h"
#include "tests/kernels/reference_ops.h"

namespace kvscope::kernels {
namespace {

using reference::RandomFloats;

struct RankWork {
  static constexpr int64_t kTokens = 17, kHidden = 256, kHeads = 4, kHeadDim = 64;
  std::vector<float> x, norm_w, w, k_pool, v_pool, inv_freq;
  std::vector<int32_t> slots, positions, token_seq;

  explicit RankWork(uint32_t seed) {
    std::mt19937 rng(seed);
    x = RandomFloats(rng, kTokens * kHidden);
    norm_w = RandomFloats(rng, kHidden, 0.5f, 1.5f);
    w = RandomFloats(rng, kHidden * kHidden, -0.1f, 0.1f);
    k_pool = RandomFloats(rng, kTokens * kHeads * kHeadDim);  // block_size 1, one block/token
    v_pool = RandomFloats(rng, kTokens * kHeads * kHeadDim);
    for (int64_t i = 0; i < kHeadDim / 2; ++i) inv_freq.push_back(1.0f / (1.0f + i));
    for (int32_t t = 0; t < kTokens; ++t) {
      slots.push_back(kTokens - 1 - t);
      positions.push_back(t);
      token_seq.push_back(0);
    }
  }

  // Returns the attention output for the rank's inputs.
  std::vector<float> Run() const {
    std::vector<float> h(kTokens * kHidden), y(kTokens * kHidden), out(kTokens * kHidden);
    RmsNorm(x.data(), norm_w.data(), 1e-6f, kTokens, kHidden, h.data());
    Linear(h.data(), kTokens, kHidden, w.data(), kHidden, kHidden, nullptr, y.data());
    Rope(y.data(), kTokens, kHeads, kHeadDim, kHidden, positions.data(), inv_freq.data(),
         kHeadDim, 1.0f);
    const KvPoolView pool{const_cast<float*>(k_pool.data()), const_cast<float*>(v_pool.data()),
                          kTokens, static_cast<int32_t>(kHeads), 1,
                          static_cast<int32_t>(kHeadDim)};
    const SeqKvView seq{slots.data(), positions.data(), static_cast<int32_t>(kTokens), 0};
    EXPECT_TRUE(Attention(y.data(), kHidden, kTokens, kHeads, kHeadDim, token_seq.data(),
                          positions.data(), pool, &seq, 1, 0.125f, out.data(), kHidden,
                          nullptr, 0)
                    .ok());
    return out;
  }
};

TEST(ConcurrencyTest, ParallelCallersGetTheSerialResult) {
  constexpr int kRanks = 4;
  std::vector<RankWork> work;
  std::vector<std::vector<float>> serial;
  for (int r = 0; r < kRanks; ++r) {
    work.emplace_back(100 + r);
    serial.push_back(work.back().Run());
  }
  std::vector<std::vector<float>> parallel(kRanks);
  std::vector<std::thread> threads;
  for (int r = 0; r < kRanks; ++r) {
    threads.emplace_back([&, r] {
      for (int iter = 0; iter < 10; ++iter) parallel[r] = work[r].Run();
    });
  }
  for (std::thread& t : threads) t.join();
  for (int r = 0; r < kRanks; ++r) {
    ASSERT_EQ(parallel[r].size(), serial[r].size());
    for (size_t i = 0; i < serial[r].size(); ++i) {
      ASSERT_NEAR(parallel[r][i], serial[r][i], 1e-6f) << "rank " << r << " element " << i;
    }
  }
}

}  // namespace
}  // namespace kvscope::kernels
