#include "engine/communicator.h"

#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace kvscope::engine {
namespace {

TEST(LocalCommunicatorTest, AllReduceSumsInRankOrderOnEveryRank) {
  for (int size : {1, 2, 3, 4}) {
    for (int64_t n : {1, 5, 1000, 1001}) {
      LocalCommGroup group(size);
      std::vector<std::vector<float>> data(size, std::vector<float>(n));
      for (int r = 0; r < size; ++r) {
        for (int64_t i = 0; i < n; ++i) data[r][i] = 0.1f * (r + 1) + 1e-3f * i;
      }
      std::vector<std::thread> threads;
      std::vector<absl::Status> status(size);
      for (int r = 0; r < size; ++r) {
        threads.emplace_back([&, r] {
          auto comm = group.ForRank(r);
          // Twice, so the barrier is reused.
          status[r] = comm->AllReduceSum(data[r].data(), n);
          if (status[r].ok()) status[r] = comm->AllReduceSum(data[r].data(), n);
        });
      }
      for (auto& t : threads) t.join();
      for (int r = 0; r < size; ++r) {
        ASSERT_TRUE(status[r].ok()) << status[r];
        for (int64_t i = 0; i < n; ++i) {
          float once = 0;
          for (int q = 0; q < size; ++q) once += 0.1f * (q + 1) + 1e-3f * i;
          float twice = 0;
          for (int q = 0; q < size; ++q) twice += once;
          ASSERT_EQ(data[r][i], twice) << "size " << size << " rank " << r << " i " << i;
        }
      }
    }
  }
}

TEST(LocalCommunicatorTest, AbortWakesRanksWaitingInACollective) {
  LocalCommGroup group(3);
  std::vector<float> a(4, 1.0f), b(4, 1.0f);
  absl::Status sa, sb;
  std::thread ta([&] { sa = group.ForRank(0)->AllReduceSum(a.data(), 4); });
  std::thread tb([&] { sb = group.ForRank(1)->AllReduceSum(b.data(), 4); });
  // Rank 2 fails instead of joining the collective.
  group.ForRank(2)->Abort();
  ta.join();
  tb.join();
  EXPECT_TRUE(absl::IsAborted(sa)) << sa;
  EXPECT_TRUE(absl::IsAborted(sb)) << sb;
}

}  // namespace
}  // namespace kvscope::engine
