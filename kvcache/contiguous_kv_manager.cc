#include "kvcache/contiguous_kv_manager.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/units.h"
#include "kvcache/capacity.h"

namespace kvscope::kvcache {
namespace {

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

absl::StatusOr<std::unique_ptr<ContiguousKvManager>> ContiguousKvManager::Create(
    const KvManagerContext& context, const Options& options) {
  if (options.block_size < 1 || options.block_size > 1024) {
    return absl::InvalidArgumentError(
        absl::StrCat("block_size must be in [1, 1024], got ", options.block_size));
  }
  KVSCOPE_ASSIGN_OR_RETURN(
      const int32_t num_blocks,
      BlocksForBudget(context.kv_memory_bytes, options.block_size, context.geometry, "KV memory"));
  if (options.reserve == Reserve::kMaxModelLen) {
    if (context.max_model_len <= 0) {
      return absl::InvalidArgumentError(
          "contiguous with reserve=max_model_len needs max_model_len > 0");
    }
    const int64_t blocks = CeilDiv(context.max_model_len, options.block_size);
    if (blocks > num_blocks) {
      const int64_t needed = blocks * options.block_size * context.geometry.BytesPerToken();
      return absl::InvalidArgumentError(absl::StrCat(
          "KV memory of ", context.kv_memory_bytes, " bytes (",
          FormatBytes(context.kv_memory_bytes),
          ") cannot hold one sequence's reservation: ", "max_model_len ", context.max_model_len,
          " tokens needs ", needed, " bytes (", FormatBytes(needed), ")"));
    }
  }
  return std::unique_ptr<ContiguousKvManager>(
      new ContiguousKvManager(context, options, num_blocks));
}

ContiguousKvManager::ContiguousKvManager(const KvManagerContext& context, const Options& options,
                                         int32_t num_blocks)
    : context_(context), options_(options), pool_(num_blocks, /*enable_prefix_caching=*/false) {}

int64_t ContiguousKvManager::ReservationTokens(const SeqRequest& seq) const {
  switch (options_.reserve) {
    case Reserve::kMaxModelLen:
      return context_.max_model_len;
    case Reserve::kPromptPlusOutput: {
      const int64_t want = static_cast<int64_t>(seq.tokens.size()) + seq.max_new_tokens;
      return context_.max_model_len > 0 ? std::min(want, context_.max_model_len) : want;
    }
  }
  return 0;
}

Admission ContiguousKvManager::CanAdmit(const SeqRequest& seq) const {
  const int64_t n = static_cast<int64_t>(seq.tokens.size());
  if (n == 0) {
    return {AdmitStatus::kNever, absl::StrCat("sequence ", seq.seq_id, " has no tokens")};
  }
  const int64_t reserve = ReservationTokens(seq);
  if (n > reserve) {
    return {AdmitStatus::kNever,
            absl::StrCat("prompt of ", n, " tokens exceeds the reservation of ", reserve,
                         " tokens (max_model_len ", context_.max_model_len, ")")};
  }
  const int64_t blocks = CeilDiv(reserve, options_.block_size);
  if (blocks > pool_.num_blocks()) {
    return {AdmitStatus::kNever,
            absl::StrCat("a reservation of ", reserve, " tokens needs ", blocks, " blocks of ",
                         options_.block_size, " tokens but the KV pool holds ", pool_.num_blocks(),
                         " blocks (", CapacityTokens(), " tokens)")};
  }
  if (blocks > pool_.num_free()) return {AdmitStatus::kLater, ""};
  return {AdmitStatus::kOk, ""};
}

absl::StatusOr<int32_t> ContiguousKvManager::Admit(const SeqRequest& seq) {
  if (seqs_.contains(seq.seq_id)) {
    return absl::AlreadyExistsError(absl::StrCat("sequence ", seq.seq_id, " is already admitted"));
  }
  const Admission admission = CanAdmit(seq);
  switch (admission.status) {
    case AdmitStatus::kOk:
      break;
    case AdmitStatus::kNever:
      return absl::InvalidArgumentError(admission.reason);
    case AdmitStatus::kLater:
      return absl::ResourceExhaustedError(absl::StrCat(
          "sequence ", seq.seq_id, " cannot be admitted now: ", pool_.num_free(), " free blocks"));
  }
  const int64_t reserve = ReservationTokens(seq);
  BlockTable& table = seqs_[seq.seq_id];
  table.blocks.resize(CeilDiv(reserve, options_.block_size));
  for (int32_t& block : table.blocks) block = pool_.Allocate();
  table.slots.reserve(reserve);
  table.positions.reserve(reserve);
  reserved_blocks_ += static_cast<int64_t>(table.blocks.size());
  return 0;
}

bool ContiguousKvManager::Append(int64_t seq_id, absl::Span<const int32_t> tokens) {
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end()) return false;
  BlockTable& table = it->second;
  const int64_t capacity = static_cast<int64_t>(table.blocks.size()) * options_.block_size;
  if (table.num_tokens() + static_cast<int64_t>(tokens.size()) > capacity) return false;
  for (size_t i = 0; i < tokens.size(); ++i) table.PushToken(options_.block_size);
  held_tokens_ += static_cast<int64_t>(tokens.size());
  return true;
}

void ContiguousKvManager::Free(int64_t seq_id) {
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end()) return;
  pool_.FreeBlocks(it->second.blocks);
  reserved_blocks_ -= static_cast<int64_t>(it->second.blocks.size());
  held_tokens_ -= it->second.num_tokens();
  seqs_.erase(it);
}

int32_t ContiguousKvManager::NumTokens(int64_t seq_id) const {
  auto it = seqs_.find(seq_id);
  return it == seqs_.end() ? 0 : it->second.num_tokens();
}

absl::StatusOr<const StepPlan*> ContiguousKvManager::Plan(absl::Span<const SeqStep> steps) {
  auto find = [this](int64_t id) -> BlockTable* {
    auto it = seqs_.find(id);
    return it == seqs_.end() ? nullptr : &it->second;
  };
  KVSCOPE_RETURN_IF_ERROR(FillStepPlan(steps, find, ++plan_stamp_, &planned_.plan));
  ++planned_.generation;
  return &planned_.plan;
}

KvUsage ContiguousKvManager::Usage() const {
  KvUsage usage;
  usage.reserved_bytes = reserved_blocks_ * BlockBytes();
  usage.used_bytes = held_tokens_ * context_.geometry.BytesPerToken();
  usage.capacity_bytes = static_cast<int64_t>(pool_.num_blocks()) * BlockBytes();
  return usage;
}

std::unique_ptr<KvCache> ContiguousKvManager::CreateRankCache(int rank) {
  ManagedKvCache::Options options;
  options.shape = context_.geometry.RankShape();
  options.block_size = options_.block_size;
  options.num_device_blocks = pool_.num_blocks();
  options.allocate_storage = context_.host_kv_storage;
  return std::make_unique<ManagedKvCache>(this, &planned_, options);
}

}  // namespace kvscope::kvcache
