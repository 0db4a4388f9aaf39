#include "kvcache/infinigen_kv_cache.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kvcache/infinigen_selection.h"
#include "kvcache/managed_kv_cache.h"

namespace kvscope::kvcache {

InfinigenKvCache::InfinigenKvCache(InfinigenKvManager* manager,
                                   const InfinigenKvManager::Planned* planned, int rank,
                                   InfinigenRankStats* stats)
    : manager_(manager),
      planned_(planned),
      rank_(rank),
      stats_(stats),
      shape_(manager->geometry().RankShape()),
      heads_per_rank_(manager->geometry().num_heads_per_rank),
      partial_dim_(manager->partial_dim()),
      k_(shape_.num_layers),
      v_(shape_.num_layers),
      pk_(shape_.num_layers),
      sel_slots_(shape_.num_layers),
      sel_pos_(shape_.num_layers),
      views_(shape_.num_layers),
      speculated_(shape_.num_layers, false) {}

absl::Status InfinigenKvCache::PrepareStep(absl::Span<const SeqStep> seqs) {
  KVSCOPE_RETURN_IF_ERROR(CheckStepsMatchPlan(planned_->generation, planned_->plan, seqs));
  const InfinigenSkew* skew = manager_->skew();
  if (skew == nullptr) {
    return absl::FailedPreconditionError(
        "infinigen: no skewing matrices; the engine calibrates them when it is created "
        "(engine/infinigen_calibration.h)");
  }
  if (model_kv_head_.empty()) {
    const KvGeometry& g = manager_->geometry();
    for (int32_t h = 0; h < shape_.num_kv_heads; ++h) {
      model_kv_head_.push_back(
          ModelKvHead(skew->num_kv_heads, g.num_heads_per_rank, g.tp_size, rank_, h));
    }
  }
  const int64_t block_floats = static_cast<int64_t>(shape_.num_kv_heads) * kBlock * shape_.head_dim;
  const int64_t host_blocks = (planned_->host_slots + kBlock - 1) / kBlock;
  const int64_t staging_blocks = (planned_->staging_slots + kBlock - 1) / kBlock;
  num_blocks_ = host_blocks + 2 * staging_blocks;
  staging_base_[0] = host_blocks * kBlock;
  staging_base_[1] = (host_blocks + staging_blocks) * kBlock;
  const size_t pool_floats = static_cast<size_t>(num_blocks_ * block_floats);
  const size_t pk_floats =
      static_cast<size_t>(planned_->host_slots) * shape_.num_kv_heads * partial_dim_;
  for (int32_t l = 0; manager_->host_kv_storage() && l < shape_.num_layers; ++l) {
    if (k_[l].size() < pool_floats) {
      k_[l].resize(pool_floats, 0.0f);
      v_[l].resize(pool_floats, 0.0f);
    }
    if (l >= manager_->dense_layers() && pk_[l].size() < pk_floats) pk_[l].resize(pk_floats, 0.0f);
  }

  // Full views: every token of each sequence, shared by all heads.
  const auto& pseqs = planned_->seqs;
  size_t total = 0;
  for (const auto& ps : pseqs) total += ps.seq->planned_length;
  full_slots_.resize(total);
  full_pos_.resize(total);
  full_views_.resize(pseqs.size());
  spec_rows_.clear();
  spec_seq_.clear();
  const int64_t head_token_bytes = 2LL * shape_.head_dim * static_cast<int64_t>(sizeof(float));
  const int32_t full_layers = std::min(shape_.num_layers, manager_->dense_layers());
  size_t at = 0;
  for (size_t i = 0; i < pseqs.size(); ++i) {
    InfinigenKvManager::Seq& s = *pseqs[i].seq;
    const int32_t n = s.planned_length;
    for (int32_t p = 0; p < n; ++p) {
      full_slots_[at + p] = s.slots[p];
      full_pos_[at + p] = p;
    }
    full_views_[i] = kernels::SeqKvView{full_slots_.data() + at, full_pos_.data() + at, n, 0};
    at += n;
    if (pseqs[i].decode) {
      const int32_t position = planned_->plan.steps[i].start_position;
      // Dense layers load every earlier token's K/V (the new one is computed on device).
      stats_->h2d_bytes += full_layers * shape_.num_kv_heads * position * head_token_bytes;
    }
    if (pseqs[i].sparse) {
      spec_rows_.push_back(pseqs[i].token_row);
      spec_seq_.push_back(static_cast<int32_t>(i));
      if (s.host_limit > 0) EvictForDecode(s, planned_->plan.steps[i].start_position);
    }
  }
  std::fill(speculated_.begin(), speculated_.end(), false);
  return absl::OkStatus();
}

void InfinigenKvCache::EvictForDecode(InfinigenKvManager::Seq& s, int32_t position) {
  const int32_t g = manager_->global_kv_heads();
  for (int32_t sl = 0; sl < manager_->sparse_layers(); ++sl) {
    for (int32_t h = 0; h < shape_.num_kv_heads; ++h) {
      const int64_t i = static_cast<int64_t>(sl) * g + rank_ * shape_.num_kv_heads + h;
      uint8_t* alive = s.alive.data() + i * s.peak;
      const int32_t* count = s.count.data() + i * s.peak;
      while (s.alive_count[i] > s.host_limit) {
        int32_t victim = -1;
        for (int32_t limit : {position / 2, position}) {
          for (int32_t p = 0; p < limit; ++p) {
            if (alive[p] && (victim < 0 || count[p] < count[victim])) victim = p;
          }
          if (victim >= 0) break;
        }
        if (victim < 0) break;
        alive[victim] = 0;
        --s.alive_count[i];
        ++stats_->evicted_tokens;
      }
    }
  }
}

kernels::KvPoolView InfinigenKvCache::Pool(int32_t layer) {
  return kernels::KvPoolView{k_[layer].data(),    v_[layer].data(), num_blocks_,
                             shape_.num_kv_heads, kBlock,           shape_.head_dim};
}

absl::Span<const kernels::SeqKvView> InfinigenKvCache::SeqViews(int32_t layer) {
  if (speculated_[layer]) return views_[layer];
  return full_views_;
}

absl::Status InfinigenKvCache::Speculate(int32_t layer, const float* partial_q) {
  if (!manager_->host_kv_storage()) {
    return absl::FailedPreconditionError(
        "infinigen: this cache keeps no host K/V (created for a GPU engine, "
        "KvManagerContext::host_kv_storage false); the CPU engine needs one with storage");
  }
  if (layer < manager_->dense_layers() || layer >= shape_.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat("infinigen: cannot speculate for layer ", layer,
                                                   " (layers ", manager_->dense_layers(), "..",
                                                   shape_.num_layers - 1, " do)"));
  }
  const int32_t kvh = shape_.num_kv_heads;
  const int32_t d = shape_.head_dim;
  const int32_t pd = partial_dim_;
  const int32_t group = heads_per_rank_ / kvh;
  const double alpha = manager_->alpha();
  const int64_t base = staging_base_[layer & 1];
  const int32_t g = manager_->global_kv_heads();
  const int64_t head_token_bytes = 2LL * d * static_cast<int64_t>(sizeof(float));

  std::vector<kernels::SeqKvView>& views = views_[layer];
  views = full_views_;
  size_t backing = 0;
  for (int32_t i : spec_seq_)
    backing += static_cast<size_t>(kvh) * (planned_->seqs[i].seq->max_num_kv + 1);
  std::vector<int32_t>& sel_slots = sel_slots_[layer];
  std::vector<int32_t>& sel_pos = sel_pos_[layer];
  sel_slots.resize(backing);
  sel_pos.resize(backing);
  size_t at = 0;
  const float* pk = pk_[layer].data();
  std::vector<std::vector<int32_t>> cands(kvh);
  for (size_t r = 0; r < spec_seq_.size(); ++r) {
    const int32_t i = spec_seq_[r];
    const InfinigenKvManager::PlannedSeq& ps = planned_->seqs[i];
    InfinigenKvManager::Seq& s = *ps.seq;
    const int32_t position = planned_->plan.steps[i].start_position;
    // Candidates per local KV head: earlier tokens still in the host pool.
    const int32_t n = Candidates(layer, static_cast<int32_t>(r), cands);
    // Partial scores [heads][n] (every KV head holds the same number of live tokens).
    scores_.assign(static_cast<size_t>(heads_per_rank_) * n, 0.0);
    for (int32_t h = 0; h < heads_per_rank_; ++h) {
      const int32_t kh = h / group;
      const float* q = partial_q + (r * heads_per_rank_ + h) * static_cast<int64_t>(pd);
      for (int32_t j = 0; j < n; ++j) {
        const float* key = pk + (static_cast<int64_t>(s.slots[cands[kh][j]]) * kvh + kh) * pd;
        double dot = 0;
        for (int32_t c = 0; c < pd; ++c) dot += static_cast<double>(q[c]) * key[c];
        scores_[static_cast<size_t>(h) * n + j] = dot;
      }
    }
    const int32_t count = SpeculatedCount(scores_.data(), heads_per_rank_, n, alpha, s.max_num_kv);
    const int32_t stride = count + 1;
    for (int32_t kh = 0; kh < kvh; ++kh) {
      agg_.assign(n, -INFINITY);
      for (int32_t h = kh * group; h < (kh + 1) * group; ++h) {
        for (int32_t j = 0; j < n; ++j) {
          agg_[j] = std::max(agg_[j], scores_[static_cast<size_t>(h) * n + j]);
        }
      }
      TopKAscending(agg_.data(), n, count, &pick_);
      int32_t* slots = sel_slots.data() + at + static_cast<size_t>(kh) * stride;
      int32_t* pos = sel_pos.data() + at + static_cast<size_t>(kh) * stride;
      const int64_t e =
          (static_cast<int64_t>(layer - manager_->dense_layers()) * g + rank_ * kvh + kh) * s.peak;
      for (int32_t j = 0; j < count; ++j) {
        const int32_t p = cands[kh][pick_[j]];
        const int64_t dst = base + ps.staging_offset + j;
        const int64_t src = s.slots[p];
        std::memcpy(k_[layer].data() + Offset(dst, kh), k_[layer].data() + Offset(src, kh),
                    sizeof(float) * d);
        std::memcpy(v_[layer].data() + Offset(dst, kh), v_[layer].data() + Offset(src, kh),
                    sizeof(float) * d);
        slots[j] = static_cast<int32_t>(dst);
        pos[j] = p;
        if (s.host_limit > 0) ++s.count[e + p];
      }
      slots[count] = s.slots[position];  // the new token, written this step
      pos[count] = position;
    }
    views[i] = kernels::SeqKvView{sel_slots.data() + at, sel_pos.data() + at, stride, stride};
    at += static_cast<size_t>(kvh) * stride;
    stats_->h2d_bytes += static_cast<int64_t>(count) * kvh * head_token_bytes;
    stats_->selected_tokens_per_layer[layer] += count;
    stats_->selections_per_layer[layer] += 1;
  }
  speculated_[layer] = true;
  return absl::OkStatus();
}

int32_t InfinigenKvCache::Candidates(int32_t layer, int32_t r,
                                     std::vector<std::vector<int32_t>>& cands) const {
  const int32_t kvh = shape_.num_kv_heads;
  const int32_t g = manager_->global_kv_heads();
  const InfinigenKvManager::Seq& s = *planned_->seqs[spec_seq_[r]].seq;
  const int32_t position = planned_->plan.steps[spec_seq_[r]].start_position;
  cands.resize(kvh);
  int32_t n = position;
  for (int32_t kh = 0; kh < kvh; ++kh) {
    std::vector<int32_t>& c = cands[kh];
    c.clear();
    const int64_t e =
        (static_cast<int64_t>(layer - manager_->dense_layers()) * g + rank_ * kvh + kh) * s.peak;
    for (int32_t p = 0; p < position; ++p) {
      if (s.host_limit == 0 || s.alive[e + p]) c.push_back(p);
    }
    n = std::min<int32_t>(n, static_cast<int32_t>(c.size()));
  }
  return n;
}

void InfinigenKvCache::SpeculationCandidates(int32_t layer, int32_t r,
                                             std::vector<std::vector<int32_t>>* cands) const {
  const int32_t n = Candidates(layer, r, *cands);
  for (std::vector<int32_t>& c : *cands) c.resize(n);
}

absl::Status InfinigenKvCache::RecordSpeculation(int32_t layer, absl::Span<const int32_t> counts,
                                                 absl::Span<const int32_t> positions,
                                                 int32_t stride) {
  const int32_t kvh = shape_.num_kv_heads;
  if (layer < manager_->dense_layers() || layer >= shape_.num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("infinigen: cannot record a selection for layer ", layer));
  }
  if (counts.size() != spec_seq_.size() ||
      positions.size() < spec_seq_.size() * static_cast<size_t>(kvh) * stride) {
    return absl::InvalidArgumentError(absl::StrCat(
        "infinigen: RecordSpeculation got ", counts.size(), " counts and ", positions.size(),
        " positions for ", spec_seq_.size(), " sparse sequences"));
  }
  const int32_t g = manager_->global_kv_heads();
  const int64_t head_token_bytes = 2LL * shape_.head_dim * static_cast<int64_t>(sizeof(float));
  std::vector<kernels::SeqKvView>& views = views_[layer];
  views = full_views_;
  size_t backing = 0;
  for (int32_t c : counts) backing += static_cast<size_t>(kvh) * (std::max(c, 0) + 1);
  std::vector<int32_t>& sel_slots = sel_slots_[layer];
  std::vector<int32_t>& sel_pos = sel_pos_[layer];
  sel_slots.resize(backing);
  sel_pos.resize(backing);
  size_t at = 0;
  for (size_t r = 0; r < spec_seq_.size(); ++r) {
    const int32_t i = spec_seq_[r];
    InfinigenKvManager::Seq& s = *planned_->seqs[i].seq;
    const int32_t position = planned_->plan.steps[i].start_position;
    const int32_t count = counts[r];
    if (count < 0 || count > s.max_num_kv || count > position || count > stride) {
      return absl::InvalidArgumentError(absl::StrCat("infinigen: recorded count ", count,
                                                     " for a sequence at position ", position,
                                                     " with max_num_kv ", s.max_num_kv));
    }
    const int64_t base = PrefetchSlot(layer, static_cast<int32_t>(r));
    const int32_t view_stride = count + 1;
    for (int32_t kh = 0; kh < kvh; ++kh) {
      int32_t* slots = sel_slots.data() + at + static_cast<size_t>(kh) * view_stride;
      int32_t* pos = sel_pos.data() + at + static_cast<size_t>(kh) * view_stride;
      const int32_t* picked = positions.data() + (r * kvh + kh) * static_cast<size_t>(stride);
      const int64_t e =
          (static_cast<int64_t>(layer - manager_->dense_layers()) * g + rank_ * kvh + kh) * s.peak;
      for (int32_t j = 0; j < count; ++j) {
        const int32_t p = picked[j];
        if (p < 0 || p >= position) {
          return absl::InvalidArgumentError(absl::StrCat(
              "infinigen: recorded position ", p, " outside [0, ", position, ")"));
        }
        slots[j] = static_cast<int32_t>(base + j);
        pos[j] = p;
        if (s.host_limit > 0) ++s.count[e + p];
      }
      slots[count] = s.slots[position];
      pos[count] = position;
    }
    views[i] = kernels::SeqKvView{sel_slots.data() + at, sel_pos.data() + at, view_stride,
                                  view_stride};
    at += static_cast<size_t>(kvh) * view_stride;
    stats_->h2d_bytes += static_cast<int64_t>(count) * kvh * head_token_bytes;
    stats_->selected_tokens_per_layer[layer] += count;
    stats_->selections_per_layer[layer] += 1;
  }
  speculated_[layer] = true;
  return absl::OkStatus();
}

void InfinigenKvCache::OnAttention(int32_t layer) {
  if (layer < manager_->dense_layers() || !manager_->host_kv_storage()) return;
  const InfinigenSkew* skew = manager_->skew();
  const int32_t kvh = shape_.num_kv_heads;
  float* pk = pk_[layer].data();
  for (int32_t slot : planned_->plan.new_slots) {
    if (slot < 0) continue;
    for (int32_t kh = 0; kh < kvh; ++kh) {
      const int32_t* cols = skew->Columns(layer, model_kv_head_[kh]);
      const float* key = KeyAt(layer, slot, kh);
      float* dst = pk + (static_cast<int64_t>(slot) * kvh + kh) * partial_dim_;
      for (int32_t c = 0; c < partial_dim_; ++c) dst[c] = key[cols[c]];
    }
  }
}

bool InfinigenKvCache::WantsMassSample(int32_t layer) const {
  if (layer < manager_->dense_layers() || !speculated_[layer] || !manager_->host_kv_storage()) {
    return false;
  }
  for (int32_t i : spec_seq_) {
    if (planned_->seqs[i].sample_mass) return true;
  }
  return false;
}

void InfinigenKvCache::SampleAttentionMass(int32_t layer, const float* q, int64_t q_stride,
                                           float scale) {
  if (!WantsMassSample(layer)) return;
  const int32_t kvh = shape_.num_kv_heads;
  const int32_t d = shape_.head_dim;
  const int32_t group = heads_per_rank_ / kvh;
  std::vector<double> logits;
  std::vector<char> kept;
  for (size_t r = 0; r < spec_seq_.size(); ++r) {
    const int32_t i = spec_seq_[r];
    if (!planned_->seqs[i].sample_mass) continue;
    const InfinigenKvManager::Seq& s = *planned_->seqs[i].seq;
    const int32_t position = planned_->plan.steps[i].start_position;
    const kernels::SeqKvView& view = views_[layer][i];
    const float* qt = q + static_cast<int64_t>(spec_rows_[r]) * q_stride;
    double share_sum = 0;
    for (int32_t h = 0; h < heads_per_rank_; ++h) {
      const int32_t kh = h / group;
      logits.assign(position + 1, 0.0);
      double max = -INFINITY;
      for (int32_t p = 0; p <= position; ++p) {
        const float* key = KeyAt(layer, s.slots[p], kh);
        double dot = 0;
        for (int32_t c = 0; c < d; ++c) dot += static_cast<double>(qt[h * d + c]) * key[c];
        logits[p] = dot * scale;
        max = std::max(max, logits[p]);
      }
      kept.assign(position + 1, 0);
      for (int32_t j = 0; j < view.num_cached; ++j)
        kept[view.positions[kh * view.head_stride + j]] = 1;
      double total = 0, held = 0;
      for (int32_t p = 0; p <= position; ++p) {
        const double e = std::exp(logits[p] - max);
        total += e;
        if (kept[p]) held += e;
      }
      share_sum += held / total;
    }
    stats_->mass_captured_sum += share_sum / heads_per_rank_;
    stats_->mass_samples += 1;
  }
}

std::vector<int32_t> InfinigenKvCache::SelectedPositions(int32_t layer, int32_t i,
                                                         int32_t kv_head) const {
  if (layer < 0 || layer >= shape_.num_layers || !speculated_[layer] || i < 0 ||
      i >= static_cast<int32_t>(planned_->seqs.size()) || !planned_->seqs[i].sparse) {
    return {};
  }
  const kernels::SeqKvView& v = views_[layer][i];
  const int32_t* pos = v.positions + kv_head * v.head_stride;
  return std::vector<int32_t>(pos, pos + v.num_cached - 1);
}

const float* InfinigenKvCache::PartialKey(int32_t layer, int32_t slot, int32_t kv_head) const {
  return pk_[layer].data() +
         (static_cast<int64_t>(slot) * shape_.num_kv_heads + kv_head) * partial_dim_;
}

}  // namespace kvscope::kvcache
