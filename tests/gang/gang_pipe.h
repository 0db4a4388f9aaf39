// File: tests/gang/gang_pipe.h
//
// An in-memory engine::GangChannel pair for the gang tests (driver and follower in one
// process without sockets).
#ifndef KVSCOPE_TESTS_GANG_GANG_PIPE_H_
#define KVSCOPE_TESTS_GANG_GANG_PIPE_H_

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/gang_channel.h"

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

}  // namespace kvscope::testing

#endif  // KVSCOPE_TESTS_GANG_GANG_PIPE_H_
