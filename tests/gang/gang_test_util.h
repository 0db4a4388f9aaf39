// File: tests/gang/gang_test_util.h
//
// What the gang tests share (CPU and GPU engines): an in-memory engine::GangChannel pair
// (driver and follower in one process without sockets), and serving a request list while
// keeping every step's logits.
#ifndef KVSCOPE_TESTS_GANG_GANG_TEST_UTIL_H_
#define KVSCOPE_TESTS_GANG_GANG_TEST_UTIL_H_

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/gang_channel.h"
#include "engine/serving.h"
#include "kvcache/kv_manager.h"

namespace kvscope::testing {

// Two ends of an in-memory channel; closing one end makes the other's calls fail.
// Receive honours a timeout (DeadlineExceeded), as the TCP channel does.
class Pipe {
 public:
  class End final : public engine::GangChannel {
   public:
    End(Pipe* pipe, int side) : pipe_(pipe), side_(side) {}
    ~End() override { pipe_->Close(); }
    absl::Status Send(const std::string& frame) override {
      std::lock_guard<std::mutex> lock(pipe_->mu_);
      if (pipe_->closed_) return absl::UnavailableError("pipe closed");
      pipe_->queues_[1 - side_].push_back(frame);
      pipe_->cv_.notify_all();
      return absl::OkStatus();
    }
    absl::StatusOr<std::string> Receive(double timeout_s) override {
      std::unique_lock<std::mutex> lock(pipe_->mu_);
      auto ready = [&] { return pipe_->closed_ || !pipe_->queues_[side_].empty(); };
      if (timeout_s > 0) {
        if (!pipe_->cv_.wait_for(lock, std::chrono::duration<double>(timeout_s), ready)) {
          return absl::DeadlineExceededError("no frame in time");
        }
      } else {
        pipe_->cv_.wait(lock, ready);
      }
      if (pipe_->queues_[side_].empty()) return absl::UnavailableError("pipe closed");
      std::string frame = std::move(pipe_->queues_[side_].front());
      pipe_->queues_[side_].pop_front();
      return frame;
    }

   private:
    Pipe* pipe_;
    int side_;
  };
  void Close() {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::string> queues_[2];
  bool closed_ = false;
};

// Serves `requests` through `forward` (chunked prefill: 32 tokens a step, max_model_len
// 256), appending every successful step's logits to `logits`.
inline engine::ServingResult ServeKeepingLogits(kvcache::KvManager& kv,
                                                const std::vector<engine::RequestSpec>& requests,
                                                const engine::StepForward& forward,
                                                std::vector<std::vector<float>>* logits) {
  engine::ServingOptions serving;
  serving.scheduler.max_model_len = 256;
  serving.scheduler.max_num_batched_tokens = 32;  // chunked prefill, several steps
  return engine::RunServing(
      [&](absl::Span<const engine::SeqInput> batch,
          const kvcache::StepPlan& plan) -> absl::StatusOr<engine::ForwardOutput> {
        absl::StatusOr<engine::ForwardOutput> out = forward(batch, plan);
        if (out.ok()) logits->push_back(out->logits);
        return out;
      },
      kv, requests, serving);
}

}  // namespace kvscope::testing

#endif  // KVSCOPE_TESTS_GANG_GANG_TEST_UTIL_H_
