#include "kvcache/full_kv_cache.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace kvscope::kvcache {

FullKvCache::FullKvCache(const KvShape& shape, const Options& options)
    : shape_(shape), options_(options), k_(shape.num_layers), v_(shape.num_layers) {}

void FullKvCache::GrowPool(int64_t num_blocks) {
  const int64_t block_floats =
      static_cast<int64_t>(shape_.num_kv_heads) * options_.block_size * shape_.head_dim;
  for (int32_t layer = 0; options_.allocate_storage && layer < shape_.num_layers; ++layer) {
    k_[layer].resize(num_blocks * block_floats);
    v_[layer].resize(num_blocks * block_floats);
  }
  for (int64_t b = num_blocks - 1; b >= num_blocks_; --b) {
    free_blocks_.push_back(static_cast<int32_t>(b));
  }
  num_blocks_ = num_blocks;
}

int32_t FullKvCache::AllocateBlock() {
  if (free_blocks_.empty()) GrowPool(std::max<int64_t>(8, num_blocks_ * 2));
  int32_t block = free_blocks_.back();
  free_blocks_.pop_back();
  ++held_blocks_;
  return block;
}

absl::Status FullKvCache::PrepareStep(absl::Span<const SeqStep> seqs) {
  // Validate everything before changing anything.
  int64_t new_tokens = 0;
  for (const SeqStep& step : seqs) {
    if (step.num_new_tokens < 0 || step.start_position < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequence ", step.seq_id, ": negative token count or position"));
    }
    auto it = seqs_.find(step.seq_id);
    const int64_t held = it == seqs_.end() ? 0 : it->second.slots.size();
    if (step.start_position != held) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sequence ", step.seq_id, ": step starts at position ", step.start_position,
          " but the cache holds ", held, " tokens"));
    }
    new_tokens += step.num_new_tokens;
  }
  if (options_.max_tokens > 0 && held_tokens_ + new_tokens > options_.max_tokens) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "KV cache full: holding ", held_tokens_, " tokens, step needs ", new_tokens,
        " more, capacity ", options_.max_tokens));
  }
  new_slots_.clear();
  new_slots_.reserve(new_tokens);
  for (const SeqStep& step : seqs) {
    Sequence& seq = seqs_[step.seq_id];
    for (int32_t i = 0; i < step.num_new_tokens; ++i) {
      const int64_t logical = seq.slots.size();
      if (logical % options_.block_size == 0) seq.blocks.push_back(AllocateBlock());
      const int32_t slot = seq.blocks.back() * options_.block_size +
                           static_cast<int32_t>(logical % options_.block_size);
      seq.slots.push_back(slot);
      seq.positions.push_back(step.start_position + i);
      new_slots_.push_back(slot);
    }
    held_tokens_ += step.num_new_tokens;
  }
  // Views point into the sequences' vectors; they stay valid until the next PrepareStep
  // because nothing else touches those vectors in between.
  views_.clear();
  for (const SeqStep& step : seqs) {
    const Sequence& seq = seqs_.at(step.seq_id);
    views_.push_back(kernels::SeqKvView{seq.slots.data(), seq.positions.data(),
                                        static_cast<int32_t>(seq.slots.size()), 0});
  }
  return absl::OkStatus();
}

kernels::KvPoolView FullKvCache::Pool(int32_t layer) {
  if (!options_.allocate_storage) {
    return kernels::KvPoolView{nullptr, nullptr, num_blocks_, shape_.num_kv_heads,
                               options_.block_size, shape_.head_dim};
  }
  return kernels::KvPoolView{k_[layer].data(), v_[layer].data(), num_blocks_,
                             shape_.num_kv_heads, options_.block_size, shape_.head_dim};
}

void FullKvCache::Release(int64_t seq_id) {
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end()) return;
  for (int32_t block : it->second.blocks) free_blocks_.push_back(block);
  held_blocks_ -= it->second.blocks.size();
  held_tokens_ -= it->second.slots.size();
  seqs_.erase(it);
}

int32_t FullKvCache::NumTokens(int64_t seq_id) const {
  auto it = seqs_.find(seq_id);
  return it == seqs_.end() ? 0 : static_cast<int32_t>(it->second.slots.size());
}

int64_t FullKvCache::ReservedBytes() const {
  return held_blocks_ * options_.block_size * shape_.BytesPerTokenPerLayer() * shape_.num_layers;
}

int64_t FullKvCache::UsedBytes() const {
  return held_tokens_ * shape_.BytesPerTokenPerLayer() * shape_.num_layers;
}

}  // namespace kvscope::kvcache
