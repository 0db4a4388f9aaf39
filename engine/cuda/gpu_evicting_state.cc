#include "engine/cuda/gpu_evicting_state.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/h2o_ops.h"
#include "kernels/cuda/streaming_ops.h"
#include "kvcache/h2o_kv_manager.h"
#include "kvcache/streaming_kv_manager.h"

namespace kvscope::engine::cuda {
namespace {

using kernels::cuda::DeviceBuffer;
using kernels::cuda::PinnedBuffer;
using kvcache::EvictingKvManager;

int64_t AlignUp(int64_t n, int64_t a) { return (n + a - 1) / a * a; }

absl::Status GrowDevice(DeviceBuffer& buffer, size_t bytes) {
  if (buffer.data() != nullptr && buffer.bytes() >= bytes) return absl::OkStatus();
  buffer = DeviceBuffer();
  KVSCOPE_ASSIGN_OR_RETURN(buffer, DeviceBuffer::Allocate(std::max<size_t>(bytes, 256)));
  return absl::OkStatus();
}

absl::Status GrowPinned(PinnedBuffer& buffer, size_t bytes) {
  if (buffer.data() != nullptr && buffer.bytes() >= bytes) return absl::OkStatus();
  buffer = PinnedBuffer();
  KVSCOPE_ASSIGN_OR_RETURN(buffer, PinnedBuffer::Allocate(std::max<size_t>(bytes, 256)));
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckGpuSupportsEvictionPolicy(const kvcache::EvictingKvCache& kv) {
  const kvcache::EvictionPolicy& policy = kv.manager().policy();
  if (dynamic_cast<const kvcache::H2oPolicy*>(&policy) != nullptr ||
      dynamic_cast<const kvcache::StreamingPolicy*>(&policy) != nullptr) {
    return absl::OkStatus();
  }
  return absl::UnimplementedError(absl::StrCat(
      "the GPU engine has no device kernels for the eviction policy '", policy.name(),
      "' (h2o and streaming only); use the CPU backend"));
}

absl::StatusOr<EvictingStepImage> PackEvictingStep(const kvcache::EvictingKvCache& kv,
                                                   int32_t num_layers, int32_t kv_heads,
                                                   int32_t num_heads, int64_t pool_slots) {
  KVSCOPE_RETURN_IF_ERROR(CheckGpuSupportsEvictionPolicy(kv));
  const EvictingKvManager& manager = kv.manager();
  const EvictingKvManager::Planned& planned = kv.planned();
  const kvcache::EvictionPolicy& policy = manager.policy();
  if (kv.shape().num_kv_heads != kv_heads || kv.shape().num_layers != num_layers ||
      kv_heads < 1 || num_heads < 1 || num_heads % kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "GPU evicting state: the cache holds ", kv.shape().num_layers, " layers x ",
        kv.shape().num_kv_heads, " KV heads, the shard ", num_layers, " x ", kv_heads,
        " KV heads for ", num_heads, " query heads"));
  }
  EvictingStepImage im;
  im.num_layers = num_layers;
  im.kv_heads = kv_heads;
  im.num_heads = num_heads;
  im.num_seqs = static_cast<int32_t>(planned.seqs.size());
  im.is_h2o = dynamic_cast<const kvcache::H2oPolicy*>(&policy) != nullptr;
  im.uses_scores = policy.UsesScores();
  const int64_t g = manager.global_kv_heads();
  const int64_t head0 = static_cast<int64_t>(kv.rank()) * kv_heads;

  // Entry offsets of the step's sequences inside one layer, and the subsets.
  for (int32_t i = 0; i < im.num_seqs; ++i) {
    const EvictingKvManager::PlannedSeq& ps = planned.seqs[i];
    const EvictingKvManager::Seq& s = *ps.seq;
    if (ps.view_n < 1 || ps.view_n > s.stride) {
      return absl::InternalError(absl::StrCat("GPU evicting state: sequence ", s.id, " lists ",
                                              ps.view_n, " entries of ", s.stride));
    }
    im.seq_offset.push_back(im.layer_entries);
    const bool compress = ps.action == EvictingKvManager::Action::kCompress;
    const int32_t below = policy.ShiftedKeysBelow(s.budget);
    // See the file comment: a decode eviction drops one token; a compression keeps `total`.
    const int32_t evicted = ps.action == EvictingKvManager::Action::kNone ? 0
                            : compress                                    ? ps.view_n - s.budget.total
                                                                          : 1;
    auto add = [&](EvictingStepImage::Subset& sub) {
      sub.index.push_back(i);
      sub.head_offset.push_back(im.layer_entries);
      sub.head_stride.push_back(ps.view_n);
      sub.view_n.push_back(ps.view_n);
      sub.length.push_back(ps.length);
      sub.total.push_back(s.budget.total);
      sub.recent.push_back(s.budget.recent);
      sub.held.push_back(s.budget.total);
      sub.shift_below.push_back(below);
      for (int32_t h = 0; h < kv_heads; ++h) sub.evicted.push_back(evicted);
    };
    add(im.all);
    im.max_view_n = std::max(im.max_view_n, ps.view_n);
    if (ps.action != EvictingKvManager::Action::kNone) {
      add(compress ? im.compress : im.evict);
      im.rolling = im.rolling || below > 0;
      if (compress) im.keep_stride = std::max(im.keep_stride, ps.view_n);
    }
    im.layer_entries += static_cast<int64_t>(kv_heads) * ps.view_n;
  }

  // Entry arrays of every layer, this rank's heads.
  const int64_t entries = static_cast<int64_t>(num_layers) * im.layer_entries;
  im.positions.resize(entries);
  im.slots.resize(entries);
  if (im.uses_scores) im.scores.resize(entries);
  int64_t bad_slot = -1;
  for (int32_t l = 0; l < num_layers; ++l) {
    for (int32_t i = 0; i < im.num_seqs; ++i) {
      const EvictingKvManager::Seq& s = *planned.seqs[i].seq;
      const int32_t n = planned.seqs[i].view_n;
      for (int32_t h = 0; h < kv_heads; ++h) {
        const int64_t src = ((l * g) + head0 + h) * s.stride;
        const int64_t dst = l * im.layer_entries + im.seq_offset[i] + static_cast<int64_t>(h) * n;
        std::copy_n(s.head_pos.data() + src, n, im.positions.data() + dst);
        std::copy_n(s.head_slots.data() + src, n, im.slots.data() + dst);
        if (im.uses_scores) std::copy_n(s.head_score.data() + src, n, im.scores.data() + dst);
        for (int32_t j = 0; j < n; ++j) {
          const int32_t slot = s.head_slots[src + j];
          if (slot < 0 || slot >= pool_slots) bad_slot = std::max<int64_t>(bad_slot, slot);
        }
      }
    }
  }
  if (bad_slot >= 0) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the KV cache uses slot ", bad_slot, " but the GPU pool has ", pool_slots,
        " slots: give the GPU pool the strategy's blocks (num_kv_blocks)"));
  }
  return im;
}

void CommitEvictingStep(const kvcache::EvictingKvCache& kv, const EvictingStepImage& im,
                        const int32_t* positions, const double* scores) {
  const EvictingKvManager::Planned& planned = kv.planned();
  const int64_t g = kv.manager().global_kv_heads();
  const int64_t head0 = static_cast<int64_t>(kv.rank()) * im.kv_heads;
  for (int32_t l = 0; l < im.num_layers; ++l) {
    for (int32_t i = 0; i < im.num_seqs; ++i) {
      EvictingKvManager::Seq& s = *planned.seqs[i].seq;
      const int32_t n = planned.seqs[i].view_n;
      for (int32_t h = 0; h < im.kv_heads; ++h) {
        const int64_t dst = ((l * g) + head0 + h) * s.stride;
        const int64_t src = l * im.layer_entries + im.seq_offset[i] + static_cast<int64_t>(h) * n;
        std::copy_n(positions + src, n, s.head_pos.data() + dst);
        if (im.uses_scores && scores != nullptr) {
          std::copy_n(scores + src, n, s.head_score.data() + dst);
        }
      }
    }
  }
}

absl::Status GpuEvictingState::Prepare(kvcache::EvictingKvCache& kv, int32_t num_layers,
                                       int32_t kv_heads, int32_t num_heads, int64_t pool_slots,
                                       cudaStream_t stream, int64_t* h2d_bytes) {
  kv_ = nullptr;
  KVSCOPE_ASSIGN_OR_RETURN(image_,
                           PackEvictingStep(kv, num_layers, kv_heads, num_heads, pool_slots));
  const EvictingStepImage& im = image_;
  if (im.rolling && inv_freq_.data() == nullptr) {
    const std::vector<float>& inv_freq = kv.manager().geometry().rope_inv_freq;
    if (inv_freq.empty()) {
      return absl::InvalidArgumentError(
          "streaming positions=rolling without RoPE frequencies in the KV geometry");
    }
    KVSCOPE_ASSIGN_OR_RETURN(DeviceBuffer freq, DeviceBuffer::Allocate(inv_freq.size() * 4));
    // On `stream`, not through CopyFromHost: a pageable cudaMemcpy may return before its DMA
    // has landed, and the shard's stream is non-blocking, so ShiftSinkKeys could read it early.
    KVSCOPE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(freq.data(), inv_freq.data(),
                                                 inv_freq.size() * 4, cudaMemcpyHostToDevice,
                                                 stream));
    inv_freq_ = std::move(freq);  // kept (and not uploaded again) only once the copy is queued
    *h2d_bytes += static_cast<int64_t>(inv_freq.size() * 4);
    rot_half_ = static_cast<int32_t>(inv_freq.size());
  }

  // Staging layout (byte offsets, 16-byte aligned): scores, positions (the downloaded part),
  // slots, the subsets' values, the views; then device-only scratch.
  const int64_t entries = static_cast<int64_t>(im.num_layers) * im.layer_entries;
  int64_t at = 0;
  auto take = [&at](int64_t bytes) {
    const int64_t o = at;
    at = AlignUp(at + bytes, 16);
    return o;
  };
  scores_at_ = take(im.uses_scores ? entries * 8 : 0);
  positions_at_ = take(entries * 4);
  slots_at_ = take(entries * 4);
  struct Placed {
    const EvictingStepImage::Subset* host = nullptr;
    Subset* dev = nullptr;
    int64_t head_offset = 0, head_stride = 0, view_n = 0, length = 0, total = 0, recent = 0,
            held = 0, shift_below = 0, evicted = 0;
  };
  Placed placed[3];
  placed[0].host = &im.all;
  placed[0].dev = &all_;
  placed[1].host = &im.compress;
  placed[1].dev = &compress_;
  placed[2].host = &im.evict;
  placed[2].dev = &evict_;
  for (Placed& p : placed) {
    const int64_t n = p.host->count();
    p.head_offset = take(n * 8);
    p.head_stride = take(n * 4);
    p.view_n = take(n * 4);
    p.length = take(n * 4);
    p.total = take(n * 4);
    p.recent = take(n * 4);
    p.held = take(n * 4);
    p.shift_below = take(n * 4);
    p.evicted = take(n * im.kv_heads * 4);
  }
  const int64_t views_at =
      take(static_cast<int64_t>(im.num_layers) * im.num_seqs * sizeof(kernels::SeqKvView));
  upload_bytes_ = at;
  const int64_t comp = im.compress.count(), evict = im.evict.count();
  const int64_t keep_at = take(comp * im.kv_heads * im.keep_stride * 4);
  const int64_t keep_count_at = take(comp * im.kv_heads * 4);
  const int64_t victims_at = take(evict * im.kv_heads * 4);
  KVSCOPE_RETURN_IF_ERROR(GrowPinned(staging_, static_cast<size_t>(upload_bytes_)));
  KVSCOPE_RETURN_IF_ERROR(GrowDevice(dev_, static_cast<size_t>(at)));
  char* host = staging_.as<char>();
  char* dev = dev_.as<char>();
  auto put = [host](int64_t offset, const void* src, int64_t bytes) {
    if (bytes > 0) std::memcpy(host + offset, src, bytes);
  };
  put(scores_at_, im.scores.data(), static_cast<int64_t>(im.scores.size()) * 8);
  put(positions_at_, im.positions.data(), entries * 4);
  put(slots_at_, im.slots.data(), entries * 4);
  for (Placed& p : placed) {
    const EvictingStepImage::Subset& h = *p.host;
    const int64_t n = h.count();
    put(p.head_offset, h.head_offset.data(), n * 8);
    put(p.head_stride, h.head_stride.data(), n * 4);
    put(p.view_n, h.view_n.data(), n * 4);
    put(p.length, h.length.data(), n * 4);
    put(p.total, h.total.data(), n * 4);
    put(p.recent, h.recent.data(), n * 4);
    put(p.held, h.held.data(), n * 4);
    put(p.shift_below, h.shift_below.data(), n * 4);
    put(p.evicted, h.evicted.data(), n * im.kv_heads * 4);
    Subset& d = *p.dev;
    d = Subset{};
    d.count = static_cast<int32_t>(n);
    d.head_offset = reinterpret_cast<const int64_t*>(dev + p.head_offset);
    d.head_stride = reinterpret_cast<const int32_t*>(dev + p.head_stride);
    d.view_n = reinterpret_cast<const int32_t*>(dev + p.view_n);
    d.length = reinterpret_cast<const int32_t*>(dev + p.length);
    d.total = reinterpret_cast<const int32_t*>(dev + p.total);
    d.recent = reinterpret_cast<const int32_t*>(dev + p.recent);
    d.held = reinterpret_cast<const int32_t*>(dev + p.held);
    d.shift_below = reinterpret_cast<const int32_t*>(dev + p.shift_below);
    d.evicted = reinterpret_cast<const int32_t*>(dev + p.evicted);
  }
  // Views: per layer and sequence, per-head lists of view_n entries into the device arrays.
  kernels::SeqKvView* views = reinterpret_cast<kernels::SeqKvView*>(host + views_at);
  const int32_t* dev_positions = reinterpret_cast<const int32_t*>(dev + positions_at_);
  const int32_t* dev_slots = reinterpret_cast<const int32_t*>(dev + slots_at_);
  for (int32_t l = 0; l < im.num_layers; ++l) {
    for (int32_t i = 0; i < im.num_seqs; ++i) {
      const int64_t first = l * im.layer_entries + im.seq_offset[i];
      const int32_t n = im.all.view_n[i];
      const kernels::SeqKvView v{dev_slots + first, dev_positions + first, n, n};
      std::memcpy(&views[static_cast<int64_t>(l) * im.num_seqs + i], &v, sizeof(v));
    }
  }
  views_ = reinterpret_cast<kernels::SeqKvView*>(dev + views_at);
  keep_ = reinterpret_cast<int32_t*>(dev + keep_at);
  keep_count_ = reinterpret_cast<int32_t*>(dev + keep_count_at);
  victims_ = reinterpret_cast<int32_t*>(dev + victims_at);

  if (upload_bytes_ > 0) {
    KVSCOPE_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(dev, host, upload_bytes_, cudaMemcpyHostToDevice, stream));
    *h2d_bytes += upload_bytes_;
  }
  // The attention-mass buffer (h2o), zeroed: the attention op adds into it.
  mass_ = nullptr;
  mass_bytes_ = 0;
  if (im.uses_scores && im.num_seqs > 0) {
    mass_bytes_ = static_cast<int64_t>(im.num_seqs) * im.num_heads * im.max_view_n * 4;
    KVSCOPE_RETURN_IF_ERROR(GrowDevice(mass_buffer_, static_cast<size_t>(mass_bytes_)));
    mass_ = mass_buffer_.as<float>();
    KVSCOPE_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(mass_, 0, mass_bytes_, stream));
  }
  kv_ = &kv;
  return absl::OkStatus();
}

kernels::cuda::EntryLists GpuEvictingState::Lists(int32_t layer, const Subset& subset) const {
  char* dev = dev_.as<char>();
  const int64_t first = static_cast<int64_t>(layer) * image_.layer_entries;
  kernels::cuda::EntryLists e;
  e.positions = reinterpret_cast<int32_t*>(dev + positions_at_) + first;
  e.slots = reinterpret_cast<int32_t*>(dev + slots_at_) + first;
  e.scores = image_.uses_scores ? reinterpret_cast<double*>(dev + scores_at_) + first : nullptr;
  e.head_offset = subset.head_offset;
  e.head_stride = subset.head_stride;
  e.num_seqs = subset.count;
  e.num_kv_heads = image_.kv_heads;
  return e;
}

kernels::cuda::EvictStep GpuEvictingState::Step(const Subset& subset) const {
  return kernels::cuda::EvictStep{subset.view_n, subset.length, subset.total, subset.recent};
}

absl::Status GpuEvictingState::OnAttention(int32_t layer, const kernels::cuda::CudaKvPool& pool,
                                           cudaStream_t stream) {
  namespace kc = kernels::cuda;
  const EvictingStepImage& im = image_;
  if (kv_ == nullptr || im.num_seqs == 0) return absl::OkStatus();
  if (im.uses_scores) {
    KVSCOPE_RETURN_IF_ERROR(kc::AccumulateH2oScores(mass_, im.num_heads, im.max_view_n,
                                                    Lists(layer, all_), all_.view_n, stream));
    KVSCOPE_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(mass_, 0, mass_bytes_, stream));
  }
  if (compress_.count > 0) {
    const kc::EntryLists lists = Lists(layer, compress_);
    const kc::EvictStep step = Step(compress_);
    if (im.is_h2o) {
      KVSCOPE_RETURN_IF_ERROR(
          kc::H2oSelectKeep(lists, step, keep_, im.keep_stride, keep_count_, stream));
    } else {
      KVSCOPE_RETURN_IF_ERROR(
          kc::StreamingSelectKeep(lists, step, keep_, im.keep_stride, keep_count_, stream));
    }
    KVSCOPE_RETURN_IF_ERROR(
        kc::CompactKept(pool, lists, keep_, im.keep_stride, keep_count_, stream));
    if (im.rolling) {
      KVSCOPE_RETURN_IF_ERROR(kc::ShiftSinkKeys(pool, lists, compress_.held, compress_.shift_below,
                                                compress_.evicted, inv_freq_.as<float>(),
                                                rot_half_, stream));
    }
  }
  if (evict_.count > 0) {
    const kc::EntryLists lists = Lists(layer, evict_);
    const kc::EvictStep step = Step(evict_);
    if (im.is_h2o) {
      KVSCOPE_RETURN_IF_ERROR(kc::H2oVictims(lists, step, victims_, stream));
    } else {
      KVSCOPE_RETURN_IF_ERROR(kc::StreamingVictims(lists, step, victims_, stream));
    }
    KVSCOPE_RETURN_IF_ERROR(kc::ReplaceVictims(pool, lists, evict_.view_n, victims_, stream));
    if (im.rolling) {
      KVSCOPE_RETURN_IF_ERROR(kc::ShiftSinkKeys(pool, lists, evict_.held, evict_.shift_below,
                                                evict_.evicted, inv_freq_.as<float>(), rot_half_,
                                                stream));
    }
  }
  return absl::OkStatus();
}

absl::Status GpuEvictingState::EnqueueDownload(cudaStream_t stream, int64_t* d2h_bytes) {
  // Scores and positions are the first slots_at_ bytes of both buffers.
  if (kv_ == nullptr || image_.num_seqs == 0 || slots_at_ == 0) return absl::OkStatus();
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(staging_.data(), dev_.data(), slots_at_,
                                               cudaMemcpyDeviceToHost, stream));
  *d2h_bytes += slots_at_;
  return absl::OkStatus();
}

void GpuEvictingState::CommitToHost() {
  if (kv_ == nullptr || image_.num_seqs == 0) return;
  const char* host = staging_.as<char>();
  CommitEvictingStep(*kv_, image_, reinterpret_cast<const int32_t*>(host + positions_at_),
                     image_.uses_scores ? reinterpret_cast<const double*>(host + scores_at_)
                                        : nullptr);
  kv_ = nullptr;  // once per Prepare
}

}  // namespace kvscope::engine::cuda
