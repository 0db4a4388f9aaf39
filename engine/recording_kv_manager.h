// File: engine/recording_kv_manager.h
//
// Keeping a gang's KV managers in step. The driver's scheduler talks to one KvManager; the
// rank caches of the followers' ranks read a manager too (their plans, views, slots), so
// each follower keeps a replica of the same strategy built from the same context, and
// replays on it every mutating call the driver made (Admit, Append, Free, SwapOut, SwapIn,
// Fork, Plan), in order, before the step that follows them. Managers are deterministic in
// their calls, so the replica reaches the same state; ReplayKvOps checks each call's outcome
// against the driver's and fails (Internal, naming the call) on the first difference rather
// than letting the ranks compute on diverged caches.
//
// Rank-fed statistics (infinigen's h2d bytes and selections, its host bytes) are counted
// by the rank caches of each process; the driver's Counters()/Usage() see its own ranks'.
#ifndef KVSCOPE_ENGINE_RECORDING_KV_MANAGER_H_
#define KVSCOPE_ENGINE_RECORDING_KV_MANAGER_H_

#include <memory>
#include <string>
#include <vector>

#include "engine/gang_messages.h"
#include "kvcache/kv_manager.h"

namespace kvscope::engine {

// Forwards every call to `inner` and records the mutating ones.
class RecordingKvManager final : public kvcache::KvManager {
 public:
  explicit RecordingKvManager(std::unique_ptr<kvcache::KvManager> inner)
      : inner_(std::move(inner)) {}

  // The calls recorded since the last TakeOps, in call order.
  std::vector<KvOp> TakeOps() { return std::move(ops_); }
  kvcache::KvManager& inner() { return *inner_; }

  std::string name() const override { return inner_->name(); }
  const kvcache::KvGeometry& geometry() const override { return inner_->geometry(); }
  int64_t CapacityTokens() const override { return inner_->CapacityTokens(); }
  int64_t PeakTokens(const kvcache::SeqRequest& seq) const override {
    return inner_->PeakTokens(seq);
  }
  kvcache::Admission CanAdmit(const kvcache::SeqRequest& seq) const override {
    return inner_->CanAdmit(seq);
  }
  absl::StatusOr<int32_t> Admit(const kvcache::SeqRequest& seq) override;
  bool Append(int64_t seq_id, absl::Span<const int32_t> tokens) override;
  void Free(int64_t seq_id) override;
  bool SupportsSwap() const override { return inner_->SupportsSwap(); }
  bool SwapOut(int64_t seq_id) override;
  bool CanSwapIn(int64_t seq_id) const override { return inner_->CanSwapIn(seq_id); }
  absl::Status SwapIn(int64_t seq_id) override;
  absl::Status Fork(int64_t parent, int64_t child) override;
  int32_t NumTokens(int64_t seq_id) const override { return inner_->NumTokens(seq_id); }
  absl::StatusOr<const kvcache::StepPlan*> Plan(absl::Span<const kvcache::SeqStep> steps) override;
  kvcache::KvUsage Usage() const override { return inner_->Usage(); }
  kvcache::KvCounters Counters() const override { return inner_->Counters(); }
  std::unique_ptr<kvcache::KvCache> CreateRankCache(int rank) override {
    return inner_->CreateRankCache(rank);
  }

 private:
  std::unique_ptr<kvcache::KvManager> inner_;
  std::vector<KvOp> ops_;
};

// Applies the driver's calls to `replica`; Internal naming the call when an outcome differs.
// `last_plan` (optional) gets the plan of the last successful Plan call replayed, null if
// none or if another call followed it; valid until the replica's next call: the step's plan, whose block transfers the
// GPU engine mirrors as the driver's does.
absl::Status ReplayKvOps(absl::Span<const KvOp> ops, kvcache::KvManager& replica,
                         const kvcache::StepPlan** last_plan = nullptr);

}  // namespace kvscope::engine

#endif  // KVSCOPE_ENGINE_RECORDING_KV_MANAGER_H_
