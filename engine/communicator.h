// File: engine/communicator.h
//
// Collective operations between the ranks of a tensor-parallel group. The CPU
// implementation runs each rank as a thread of one process; engine/tcp_comm_group.h spans
// processes (gangs) with the same summation order; the NCCL implementation (CUDA builds)
// sits behind the same interface.
#ifndef KVSCOPE_ENGINE_COMMUNICATOR_H_
#define KVSCOPE_ENGINE_COMMUNICATOR_H_

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/status/status.h"

namespace kvscope::engine {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // In place: every rank's data[0, n) becomes the element-wise sum over ranks. All ranks
  // must call it with the same n. The result is bitwise identical on every rank (the sum
  // runs in rank order). Aborted if the group was aborted (a rank failed), so that no rank
  // waits forever.
  virtual absl::Status AllReduceSum(float* data, int64_t n) = 0;
  // Marks the group failed and wakes every rank blocked in a collective.
  virtual void Abort() = 0;
};

// A group of `size` ranks that are threads of this process. Create the group, hand
// ForRank(r) to the thread of rank r. The group must outlive its communicators.
class LocalCommGroup {
 public:
  explicit LocalCommGroup(int size);
  std::unique_ptr<Communicator> ForRank(int rank);
  int size() const { return size_; }

  // Internal: a reusable barrier that returns false once the group is aborted.
  bool Wait();
  void Abort();
  bool aborted();
  std::vector<float*>& buffers() { return buffers_; }

 private:
  const int size_;
  std::mutex mu_;
  std::condition_variable cv_;
  int arrived_ = 0;
  int64_t generation_ = 0;
  bool aborted_ = false;
  std::vector<float*> buffers_;
};

}  // namespace kvscope::engine

#endif  // KVSCOPE_ENGINE_COMMUNICATOR_H_
