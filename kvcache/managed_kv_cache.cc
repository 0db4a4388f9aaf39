#include "kvcache/managed_kv_cache.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace kvscope::kvcache {
namespace {

std::string StepText(const SeqStep& s) {
  return absl::StrCat("(seq ", s.seq_id, ", ", s.num_new_tokens, " tokens from ", s.start_position,
                      ")");
}

}  // namespace

ManagedKvCache::ManagedKvCache(const KvManager* manager, const PlannedStep* planned,
                               const Options& options)
    : manager_(manager),
      planned_(planned),
      options_(options),
      block_floats_(static_cast<int64_t>(options.shape.num_kv_heads) * options.block_size *
                    options.shape.head_dim),
      k_(options.shape.num_layers),
      v_(options.shape.num_layers),
      host_k_(options.shape.num_layers),
      host_v_(options.shape.num_layers) {
  for (int32_t l = 0; options.allocate_storage && l < options.shape.num_layers; ++l) {
    k_[l].assign(options.num_device_blocks * block_floats_, 0.0f);
    v_[l].assign(options.num_device_blocks * block_floats_, 0.0f);
    host_k_[l].assign(options.num_host_blocks * block_floats_, 0.0f);
    host_v_[l].assign(options.num_host_blocks * block_floats_, 0.0f);
  }
}

void ManagedKvCache::CopyBlocks(const std::vector<std::vector<float>>& src_k,
                                const std::vector<std::vector<float>>& src_v,
                                std::vector<std::vector<float>>& dst_k,
                                std::vector<std::vector<float>>& dst_v,
                                const std::vector<BlockCopy>& copies, int64_t src_blocks,
                                int64_t dst_blocks) {
  const size_t bytes = block_floats_ * sizeof(float);
  for (const BlockCopy& c : copies) {
    if (c.src < 0 || c.src >= src_blocks || c.dst < 0 || c.dst >= dst_blocks) {
      // The manager produced an id outside its own pools: a broken internal invariant.
      std::fprintf(stderr, "ManagedKvCache: block copy %d -> %d outside the pools\n", c.src, c.dst);
      std::abort();
    }
    for (size_t l = 0; l < dst_k.size(); ++l) {
      std::memmove(dst_k[l].data() + c.dst * block_floats_, src_k[l].data() + c.src * block_floats_,
                   bytes);
      std::memmove(dst_v[l].data() + c.dst * block_floats_, src_v[l].data() + c.src * block_floats_,
                   bytes);
    }
  }
}

absl::Status CheckStepsMatchPlan(uint64_t generation, const StepPlan& plan,
                                 absl::Span<const SeqStep> seqs) {
  if (generation == 0) {
    return absl::FailedPreconditionError("PrepareStep before the manager planned any step");
  }
  if (seqs.size() != plan.steps.size()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "PrepareStep got ", seqs.size(), " sequences but the manager planned ", plan.steps.size()));
  }
  for (size_t i = 0; i < seqs.size(); ++i) {
    const SeqStep& a = seqs[i];
    const SeqStep& b = plan.steps[i];
    if (a.seq_id != b.seq_id || a.num_new_tokens != b.num_new_tokens ||
        a.start_position != b.start_position) {
      return absl::FailedPreconditionError(absl::StrCat(
          "PrepareStep's step ", i, " is ", StepText(a), " but the manager planned ", StepText(b)));
    }
  }
  return absl::OkStatus();
}

absl::Status ManagedKvCache::PrepareStep(absl::Span<const SeqStep> seqs) {
  KVSCOPE_RETURN_IF_ERROR(CheckStepsMatchPlan(planned_->generation, planned_->plan, seqs));
  const StepPlan& plan = planned_->plan;
  if (options_.allocate_storage && applied_generation_ != planned_->generation) {
    const int64_t dev = options_.num_device_blocks;
    const int64_t host = options_.num_host_blocks;
    CopyBlocks(k_, v_, host_k_, host_v_, plan.swap_out, dev, host);
    CopyBlocks(host_k_, host_v_, k_, v_, plan.swap_in, host, dev);
    CopyBlocks(k_, v_, k_, v_, plan.copies, dev, dev);
    applied_generation_ = planned_->generation;
  }
  return absl::OkStatus();
}

kernels::KvPoolView ManagedKvCache::Pool(int32_t layer) {
  if (!options_.allocate_storage) {
    return kernels::KvPoolView{nullptr, nullptr, options_.num_device_blocks,
                               options_.shape.num_kv_heads, options_.block_size,
                               options_.shape.head_dim};
  }
  return kernels::KvPoolView{k_[layer].data(),           v_[layer].data(),
                             options_.num_device_blocks, options_.shape.num_kv_heads,
                             options_.block_size,        options_.shape.head_dim};
}

kernels::KvPoolView ManagedKvCache::HostPool(int32_t layer) {
  if (!options_.allocate_storage) {
    return kernels::KvPoolView{nullptr, nullptr, options_.num_host_blocks,
                               options_.shape.num_kv_heads, options_.block_size,
                               options_.shape.head_dim};
  }
  return kernels::KvPoolView{host_k_[layer].data(),    host_v_[layer].data(),
                             options_.num_host_blocks, options_.shape.num_kv_heads,
                             options_.block_size,      options_.shape.head_dim};
}

absl::Span<const int32_t> ManagedKvCache::NewTokenSlots() const { return planned_->plan.new_slots; }

absl::Span<const kernels::SeqKvView> ManagedKvCache::SeqViews(int32_t layer) {
  return planned_->plan.views;
}

}  // namespace kvscope::kvcache
