// The TCP communicators of a gang (engine/tcp_comm_group.h): the same bits as the
// in-process group, and failures that end collectives instead of hanging them.
#include "engine/tcp_comm_group.h"

#include <chrono>
#include <cmath>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "engine/communicator.h"
#include "gtest/gtest.h"

namespace kvscope::engine {
namespace {

// Runs one AllReduceSum per rank, each on its own thread.
std::vector<absl::Status> AllReduceOnThreads(std::vector<Communicator*> comms,
                                             std::vector<std::vector<float>>& data) {
  std::vector<absl::Status> status(comms.size());
  std::vector<std::thread> threads;
  for (size_t r = 0; r < comms.size(); ++r) {
    threads.emplace_back([&, r] {
      status[r] = comms[r]->AllReduceSum(data[r].data(), static_cast<int64_t>(data[r].size()));
    });
  }
  for (auto& t : threads) t.join();
  return status;
}

TEST(TcpCommGroupTest, AllReduceIsBitwiseEqualToTheLocalGroup) {
  std::mt19937 rng(7);
  std::normal_distribution<float> value(0.0f, 100.0f);
  for (int size : {1, 2, 3, 4}) {
    absl::StatusOr<std::vector<std::unique_ptr<Communicator>>> tcp =
        CreateLoopbackTcpGroup(size, TcpCommOptions{10});
    ASSERT_TRUE(tcp.ok()) << tcp.status();
    LocalCommGroup local_group(size);
    std::vector<std::unique_ptr<Communicator>> local;
    for (int r = 0; r < size; ++r) local.push_back(local_group.ForRank(r));
    std::vector<Communicator*> tcp_ptrs, local_ptrs;
    for (int r = 0; r < size; ++r) {
      tcp_ptrs.push_back((*tcp)[r].get());
      local_ptrs.push_back(local[r].get());
    }
    // Odd sizes, mixed magnitudes and signs (-0.0f included), so any other summation order
    // or a missing 0.0f start would show in the bits. Repeated: sequence numbers advance.
    for (int64_t n : {1, 3, 17, 1001, 65537}) {
      std::vector<std::vector<float>> a(size, std::vector<float>(n));
      for (auto& row : a) {
        for (float& x : row) x = value(rng) * std::pow(10.0f, static_cast<float>(rng() % 7) - 3);
        row[0] = -0.0f;
      }
      std::vector<std::vector<float>> b = a;
      for (const absl::Status& s : AllReduceOnThreads(tcp_ptrs, a)) ASSERT_TRUE(s.ok()) << s;
      for (const absl::Status& s : AllReduceOnThreads(local_ptrs, b)) ASSERT_TRUE(s.ok()) << s;
      for (int r = 0; r < size; ++r) {
        ASSERT_EQ(0, std::memcmp(a[r].data(), b[r].data(), n * sizeof(float)))
            << "size " << size << " n " << n << " rank " << r;
      }
    }
  }
}

TEST(TcpCommGroupTest, APeerThatClosesMidCollectiveFailsTheOthersQuickly) {
  for (int closing : {0, 2}) {  // the hub, or a spoke
    absl::StatusOr<std::vector<std::unique_ptr<Communicator>>> tcp =
        CreateLoopbackTcpGroup(3, TcpCommOptions{30});
    ASSERT_TRUE(tcp.ok()) << tcp.status();
    std::vector<std::vector<float>> data(3, std::vector<float>(1000, 1.0f));
    std::vector<absl::Status> status(3);
    const auto start = std::chrono::steady_clock::now();
    std::vector<std::thread> threads;
    for (int r = 0; r < 3; ++r) {
      if (r == closing) continue;
      threads.emplace_back([&, r] { status[r] = (*tcp)[r]->AllReduceSum(data[r].data(), 1000); });
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    (*tcp)[closing].reset();  // its process went away: the sockets close
    for (auto& t : threads) t.join();
    const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_LT(waited, 5.0) << "a closed peer must not leave the others waiting for the timeout";
    for (int r = 0; r < 3; ++r) {
      if (r == closing) continue;
      EXPECT_FALSE(status[r].ok()) << "rank " << r;
      EXPECT_TRUE(absl::IsUnavailable(status[r]) || absl::IsAborted(status[r])) << status[r];
      // Later collectives fail at once.
      EXPECT_FALSE((*tcp)[r]->AllReduceSum(data[r].data(), 1000).ok());
    }
  }
}

TEST(TcpCommGroupTest, AbortWakesEveryRankBlockedInACollective) {
  absl::StatusOr<std::vector<std::unique_ptr<Communicator>>> tcp =
      CreateLoopbackTcpGroup(3, TcpCommOptions{30});
  ASSERT_TRUE(tcp.ok()) << tcp.status();
  std::vector<float> a(4, 1.0f), b(4, 1.0f);
  absl::Status sa, sb;
  std::thread ta([&] { sa = (*tcp)[0]->AllReduceSum(a.data(), 4); });
  std::thread tb([&] { sb = (*tcp)[1]->AllReduceSum(b.data(), 4); });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  (*tcp)[2]->Abort();  // rank 2 fails instead of joining
  ta.join();
  tb.join();
  EXPECT_FALSE(sa.ok());
  EXPECT_FALSE(sb.ok());
}

TEST(TcpCommGroupTest, ASilentPeerEndsTheCollectiveAtTheTimeout) {
  absl::StatusOr<std::vector<std::unique_ptr<Communicator>>> tcp =
      CreateLoopbackTcpGroup(2, TcpCommOptions{0.3});
  ASSERT_TRUE(tcp.ok()) << tcp.status();
  std::vector<float> a(4, 1.0f);
  const absl::Status s = (*tcp)[0]->AllReduceSum(a.data(), 4);  // rank 1 never calls
  EXPECT_TRUE(absl::IsDeadlineExceeded(s)) << s;
  EXPECT_NE(s.message().find("rank 1"), absl::string_view::npos) << s;
}

TEST(TcpCommGroupTest, RanksAtDifferentCollectivesAreAnError) {
  absl::StatusOr<std::vector<std::unique_ptr<Communicator>>> tcp =
      CreateLoopbackTcpGroup(2, TcpCommOptions{5});
  ASSERT_TRUE(tcp.ok()) << tcp.status();
  std::vector<float> a(4, 1.0f), b(5, 1.0f);
  absl::Status sa, sb;
  std::thread ta([&] { sa = (*tcp)[0]->AllReduceSum(a.data(), 4); });
  sb = (*tcp)[1]->AllReduceSum(b.data(), 5);
  ta.join();
  EXPECT_TRUE(absl::IsInternal(sa)) << sa;
  EXPECT_NE(sa.message().find("different steps"), absl::string_view::npos) << sa;
  EXPECT_FALSE(sb.ok());
}

}  // namespace
}  // namespace kvscope::engine
