#include "engine/communicator.h"

#include <algorithm>

namespace kvscope::engine {
namespace {

class LocalCommunicator final : public Communicator {
 public:
  LocalCommunicator(LocalCommGroup* group, int rank) : group_(group), rank_(rank) {}

  int rank() const override { return rank_; }
  int size() const override { return group_->size(); }

  absl::Status AllReduceSum(float* data, int64_t n) override {
    const int size = group_->size();
    if (size == 1) return absl::OkStatus();
    // 1. Publish this rank's buffer. 2. Each rank sums its chunk over all buffers (rank
    // order, so every rank gets identical bits) into a private copy. 3. Once everyone has
    // read, each rank writes its chunk into every buffer.
    group_->buffers()[rank_] = data;
    if (!group_->Wait()) return Aborted();
    const int64_t chunk = (n + size - 1) / size;
    const int64_t begin = std::min<int64_t>(n, chunk * rank_);
    const int64_t end = std::min<int64_t>(n, begin + chunk);
    scratch_.assign(end - begin, 0.0f);
    for (int r = 0; r < size; ++r) {
      const float* src = group_->buffers()[r];
      for (int64_t i = begin; i < end; ++i) scratch_[i - begin] += src[i];
    }
    if (!group_->Wait()) return Aborted();
    for (int r = 0; r < size; ++r) {
      std::copy(scratch_.begin(), scratch_.end(), group_->buffers()[r] + begin);
    }
    if (!group_->Wait()) return Aborted();
    return absl::OkStatus();
  }

  void Abort() override { group_->Abort(); }

 private:
  static absl::Status Aborted() {
    return absl::AbortedError("tensor-parallel group aborted: another rank failed");
  }

  LocalCommGroup* group_;
  int rank_;
  std::vector<float> scratch_;
};

}  // namespace

LocalCommGroup::LocalCommGroup(int size) : size_(size), buffers_(size, nullptr) {}

std::unique_ptr<Communicator> LocalCommGroup::ForRank(int rank) {
  return std::make_unique<LocalCommunicator>(this, rank);
}

bool LocalCommGroup::Wait() {
  std::unique_lock<std::mutex> lock(mu_);
  if (aborted_) return false;
  const int64_t generation = generation_;
  if (++arrived_ == size_) {
    arrived_ = 0;
    ++generation_;
    cv_.notify_all();
    return true;
  }
  cv_.wait(lock, [&] { return generation_ != generation || aborted_; });
  return !aborted_ || generation_ != generation;
}

void LocalCommGroup::Abort() {
  std::lock_guard<std::mutex> lock(mu_);
  aborted_ = true;
  cv_.notify_all();
}

bool LocalCommGroup::aborted() {
  std::lock_guard<std::mutex> lock(mu_);
  return aborted_;
}

}  // namespace kvscope::engine
