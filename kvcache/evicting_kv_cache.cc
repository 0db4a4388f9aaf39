#include "kvcache/evicting_kv_cache.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/units.h"
#include "kvcache/capacity.h"
#include "kvcache/managed_kv_cache.h"
#include "kvcache/plan_check.h"

namespace kvscope::kvcache {

absl::StatusOr<std::unique_ptr<EvictingKvManager>> EvictingKvManager::Create(
    const KvManagerContext& context, std::unique_ptr<EvictionPolicy> policy) {
  KVSCOPE_RETURN_IF_ERROR(ValidateGeometry(context.geometry));
  const int64_t per_token = context.geometry.BytesPerToken();
  const int64_t slots = context.kv_memory_bytes / per_token;
  if (slots < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KV memory of ", context.kv_memory_bytes, " bytes cannot hold one token (", per_token,
        " bytes, ", FormatBytes(per_token), ")"));
  }
  if (slots > (int64_t{1} << 30)) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV memory of ", context.kv_memory_bytes, " bytes holds ", slots,
                     " tokens, more than the 2^30 slots ", policy->name(), " addresses"));
  }
  return std::unique_ptr<EvictingKvManager>(
      new EvictingKvManager(context, std::move(policy), slots));
}

EvictingKvManager::EvictingKvManager(const KvManagerContext& context,
                                     std::unique_ptr<EvictionPolicy> policy, int64_t num_slots)
    : context_(context), policy_(std::move(policy)), num_slots_(num_slots) {
  free_.reserve(num_slots);
  for (int64_t s = num_slots - 1; s >= 0; --s) free_.push_back(static_cast<int32_t>(s));
}

absl::StatusOr<int64_t> EvictingKvManager::Reservation(const SeqRequest& seq, EvictBudget* budget,
                                                       int32_t* decode_slots) const {
  const int64_t n = static_cast<int64_t>(seq.tokens.size());
  if (n == 0) return absl::InvalidArgumentError(absl::StrCat("sequence ", seq.seq_id, " has no tokens"));
  const int64_t max_new = std::max<int64_t>(1, seq.max_new_tokens);
  KVSCOPE_ASSIGN_OR_RETURN(*budget, policy_->Budget(n, max_new));
  if (budget->total < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        policy_->name(), ": a budget of zero tokens for a prompt of ", n,
        " tokens (raise the budget parameters)"));
  }
  *decode_slots = static_cast<int32_t>(std::min<int64_t>(budget->total + 1LL, n + max_new));
  const int64_t reserve = std::max<int64_t>(n, *decode_slots);
  if (reserve > num_slots_) {
    return absl::InvalidArgumentError(absl::StrCat(
        policy_->name(), ": the prompt of ", n, " tokens needs ", reserve,
        " token slots during prefill but the KV pool holds ", num_slots_, " tokens"));
  }
  return reserve;
}

int64_t EvictingKvManager::PeakTokens(const SeqRequest& seq) const {
  EvictBudget budget;
  int32_t decode_slots;
  absl::StatusOr<int64_t> reserve = Reservation(seq, &budget, &decode_slots);
  // Unservable sequences report their full length; CanAdmit gives the reason.
  return reserve.ok() ? *reserve : KvManager::PeakTokens(seq);
}

Admission EvictingKvManager::CanAdmit(const SeqRequest& seq) const {
  EvictBudget budget;
  int32_t decode_slots;
  absl::StatusOr<int64_t> reserve = Reservation(seq, &budget, &decode_slots);
  if (!reserve.ok()) return {AdmitStatus::kNever, std::string(reserve.status().message())};
  if (*reserve > static_cast<int64_t>(free_.size())) return {AdmitStatus::kLater, ""};
  return {AdmitStatus::kOk, ""};
}

absl::StatusOr<int32_t> EvictingKvManager::Admit(const SeqRequest& seq) {
  if (seqs_.contains(seq.seq_id)) {
    return absl::AlreadyExistsError(absl::StrCat("sequence ", seq.seq_id, " is already admitted"));
  }
  EvictBudget budget;
  int32_t decode_slots;
  KVSCOPE_ASSIGN_OR_RETURN(const int64_t reserve, Reservation(seq, &budget, &decode_slots));
  if (reserve > static_cast<int64_t>(free_.size())) {
    return absl::ResourceExhaustedError(absl::StrCat("sequence ", seq.seq_id, " needs ", reserve,
                                                     " slots, ", free_.size(), " free"));
  }
  auto s = std::make_unique<Seq>();
  s->id = seq.seq_id;
  s->prompt_len = static_cast<int32_t>(seq.tokens.size());
  s->budget = budget;
  s->decode_slots = decode_slots;
  s->stride = static_cast<int32_t>(reserve);
  s->slots.resize(reserve);
  for (int32_t& slot : s->slots) {
    slot = free_.back();
    free_.pop_back();
  }
  const int64_t entries =
      static_cast<int64_t>(context_.geometry.num_layers) * global_kv_heads() * s->stride;
  s->head_slots.resize(entries);
  s->head_pos.assign(entries, 0);
  s->head_score.assign(entries, 0.0);
  for (int64_t e = 0; e < entries; ++e) s->head_slots[e] = s->slots[e % s->stride];
  seqs_[seq.seq_id] = std::move(s);
  return 0;
}

bool EvictingKvManager::Append(int64_t seq_id, absl::Span<const int32_t> tokens) {
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end()) return false;
  Seq& s = *it->second;
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (s.length < s.prompt_len) {
    if (s.length + n > s.prompt_len) return false;  // prefill chunks stay within the prompt
  } else {
    // Decode: one token at a time, into entry `held` or the incoming entry `budget`.
    if (n != 1 || s.length != s.planned_length) return false;
    const int32_t entry = std::min(s.held, s.budget.total);
    if (entry >= static_cast<int32_t>(s.slots.size())) return false;
  }
  s.length += static_cast<int32_t>(n);
  return true;
}

void EvictingKvManager::Free(int64_t seq_id) {
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end()) return;
  for (auto s = it->second->slots.rbegin(); s != it->second->slots.rend(); ++s) free_.push_back(*s);
  seqs_.erase(it);
}

int32_t EvictingKvManager::NumTokens(int64_t seq_id) const {
  auto it = seqs_.find(seq_id);
  return it == seqs_.end() ? 0 : it->second->held;
}

absl::StatusOr<const StepPlan*> EvictingKvManager::Plan(absl::Span<const SeqStep> steps) {
  KVSCOPE_RETURN_IF_ERROR(
      CheckPlanSteps(steps, seqs_, ++plan_stamp_, StepExtent::kWholeRemainder));
  Planned& p = planned_;
  p.plan.steps.assign(steps.begin(), steps.end());
  p.plan.new_slots.clear();
  p.plan.views.clear();
  p.seqs.clear();
  p.max_view_n = 0;
  const int64_t heads = static_cast<int64_t>(context_.geometry.num_layers) * global_kv_heads();
  for (const SeqStep& step : steps) {
    Seq& s = *seqs_.at(step.seq_id);
    PlannedSeq ps;
    ps.seq = &s;
    const int32_t end = step.start_position + step.num_new_tokens;
    ps.length = end;
    auto write_entry = [&](int32_t entry, int32_t position) {
      for (int64_t lh = 0; lh < heads; ++lh) {
        const int64_t e = lh * s.stride + entry;
        s.head_pos[e] = position;
        s.head_score[e] = 0.0;
      }
      p.plan.new_slots.push_back(s.slots[entry]);
    };
    if (step.start_position < s.prompt_len) {
      for (int32_t pos = step.start_position; pos < end; ++pos) write_entry(pos, pos);
      ps.view_n = end;
      if (end == s.prompt_len && s.prompt_len > s.budget.total) {
        ps.action = Action::kCompress;
        s.held = s.budget.total;
        // Slots beyond decode_slots are read by this step's compaction only.
        while (static_cast<int32_t>(s.slots.size()) > s.decode_slots) {
          free_.push_back(s.slots.back());
          s.slots.pop_back();
        }
      } else {
        s.held = end;
      }
    } else {
      const int32_t entry = std::min(s.held, s.budget.total);
      write_entry(entry, step.start_position);
      ps.view_n = entry + 1;
      if (entry == s.budget.total) {
        ps.action = Action::kEvict;
      } else {
        s.held = entry + 1;
      }
    }
    s.planned_length = end;
    p.max_view_n = std::max(p.max_view_n, ps.view_n);
    p.seqs.push_back(ps);
    // Layer 0, rank 0 view, for information (ranks build their own per layer).
    p.plan.views.push_back(kernels::SeqKvView{s.head_slots.data(), s.head_pos.data(), ps.view_n,
                                              s.stride});
  }
  ++p.generation;
  return &p.plan;
}

KvUsage EvictingKvManager::Usage() const {
  KvUsage usage;
  const int64_t per_token = context_.geometry.BytesPerToken();
  int64_t owned = 0, held = 0;
  for (const auto& [id, s] : seqs_) {
    owned += static_cast<int64_t>(s->slots.size());
    held += s->held;
  }
  usage.reserved_bytes = owned * per_token;
  usage.used_bytes = held * per_token;
  usage.capacity_bytes = num_slots_ * per_token;
  return usage;
}

std::vector<int32_t> EvictingKvManager::HeldPositions(int64_t seq_id, int32_t layer,
                                                      int32_t kv_head) const {
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end()) return {};
  const Seq& s = *it->second;
  const int32_t* base =
      s.head_pos.data() + (static_cast<int64_t>(layer) * global_kv_heads() + kv_head) * s.stride;
  return std::vector<int32_t>(base, base + s.held);
}

EvictBudget EvictingKvManager::BudgetOf(int64_t seq_id) const {
  auto it = seqs_.find(seq_id);
  return it == seqs_.end() ? EvictBudget{} : it->second->budget;
}

int32_t EvictingKvManager::OwnedSlots(int64_t seq_id) const {
  auto it = seqs_.find(seq_id);
  return it == seqs_.end() ? 0 : static_cast<int32_t>(it->second->slots.size());
}

std::unique_ptr<KvCache> EvictingKvManager::CreateRankCache(int rank) {
  return std::make_unique<EvictingKvCache>(this, &planned_, rank, num_slots_);
}

// ---------------------------------------------------------------------------------------

EvictingKvCache::EvictingKvCache(EvictingKvManager* manager,
                                 const EvictingKvManager::Planned* planned, int rank,
                                 int64_t num_slots)
    : manager_(manager),
      planned_(planned),
      rank_(rank),
      shape_(manager->geometry().RankShape()),
      num_blocks_((num_slots + kBlockSize - 1) / kBlockSize),
      k_(shape_.num_layers),
      v_(shape_.num_layers),
      views_(shape_.num_layers) {
  const int64_t floats = num_blocks_ * shape_.num_kv_heads * kBlockSize * shape_.head_dim;
  for (int32_t l = 0; manager->host_kv_storage() && l < shape_.num_layers; ++l) {
    k_[l].assign(floats, 0.0f);
    v_[l].assign(floats, 0.0f);
  }
}

absl::Status EvictingKvCache::PrepareStep(absl::Span<const SeqStep> seqs) {
  KVSCOPE_RETURN_IF_ERROR(CheckStepsMatchPlan(planned_->generation, planned_->plan, seqs));
  const int64_t g = manager_->global_kv_heads();
  const int64_t head0 = static_cast<int64_t>(rank_) * shape_.num_kv_heads;
  for (int32_t l = 0; l < shape_.num_layers; ++l) {
    std::vector<kernels::SeqKvView>& views = views_[l];
    views.resize(planned_->seqs.size());
    for (size_t i = 0; i < planned_->seqs.size(); ++i) {
      const EvictingKvManager::PlannedSeq& ps = planned_->seqs[i];
      const int64_t offset = (l * g + head0) * ps.seq->stride;
      views[i] = kernels::SeqKvView{ps.seq->head_slots.data() + offset,
                                    ps.seq->head_pos.data() + offset, ps.view_n, ps.seq->stride};
    }
  }
  return absl::OkStatus();
}

kernels::KvPoolView EvictingKvCache::Pool(int32_t layer) {
  if (!manager_->host_kv_storage()) {  // bookkeeping only (a device engine keeps the K/V)
    return kernels::KvPoolView{nullptr, nullptr, num_blocks_, shape_.num_kv_heads, kBlockSize,
                               shape_.head_dim};
  }
  return kernels::KvPoolView{k_[layer].data(), v_[layer].data(), num_blocks_,
                             shape_.num_kv_heads, kBlockSize,     shape_.head_dim};
}

float* EvictingKvCache::AttentionMassBuffer(int32_t layer, int32_t num_heads_local,
                                            int64_t* max_cached) {
  mass_valid_ = false;
  if (!manager_->policy().UsesScores() || planned_->seqs.empty() ||
      num_heads_local % shape_.num_kv_heads != 0) {
    *max_cached = 0;
    return nullptr;
  }
  mass_heads_ = num_heads_local;
  mass_stride_ = std::max<int64_t>(1, planned_->max_view_n);
  mass_.assign(planned_->seqs.size() * num_heads_local * mass_stride_, 0.0f);
  mass_valid_ = true;
  *max_cached = mass_stride_;
  return mass_.data();
}

void EvictingKvCache::MoveHead(int32_t layer, int32_t head, int32_t src, int32_t dst) {
  if (src == dst || k_[layer].empty()) return;  // (no storage: bookkeeping only)
  const int64_t d = shape_.head_dim;
  auto at = [&](int32_t slot) {
    return ((static_cast<int64_t>(slot / kBlockSize) * shape_.num_kv_heads + head) * kBlockSize +
            slot % kBlockSize) *
           d;
  };
  std::memcpy(k_[layer].data() + at(dst), k_[layer].data() + at(src), d * sizeof(float));
  std::memcpy(v_[layer].data() + at(dst), v_[layer].data() + at(src), d * sizeof(float));
}

void EvictingKvCache::ShiftKey(int32_t layer, int32_t head, int32_t slot, int32_t delta) {
  if (k_[layer].empty()) return;  // no storage: bookkeeping only
  const std::vector<float>& inv_freq = manager_->geometry().rope_inv_freq;
  const int64_t half = static_cast<int64_t>(inv_freq.size());
  float* x = k_[layer].data() +
             ((static_cast<int64_t>(slot / kBlockSize) * shape_.num_kv_heads + head) * kBlockSize +
              slot % kBlockSize) *
                 shape_.head_dim;
  for (int64_t i = 0; i < half; ++i) {
    const double angle = static_cast<double>(delta) * static_cast<double>(inv_freq[i]);
    const double c = std::cos(angle), sn = std::sin(angle);
    const double a = x[i], b = x[i + half];
    x[i] = static_cast<float>(a * c - b * sn);
    x[i + half] = static_cast<float>(b * c + a * sn);
  }
}

void EvictingKvCache::OnAttention(int32_t layer) {
  const EvictionPolicy& policy = manager_->policy();
  const int64_t g = manager_->global_kv_heads();
  const int32_t kvh = shape_.num_kv_heads;
  for (size_t i = 0; i < planned_->seqs.size(); ++i) {
    const EvictingKvManager::PlannedSeq& ps = planned_->seqs[i];
    EvictingKvManager::Seq& s = *ps.seq;
    const int32_t shifted_below = policy.ShiftedKeysBelow(s.budget);
    for (int32_t h = 0; h < kvh; ++h) {
      const int64_t base = (layer * g + static_cast<int64_t>(rank_) * kvh + h) * s.stride;
      int32_t* pos = s.head_pos.data() + base;
      double* score = s.head_score.data() + base;
      const int32_t* slots = s.head_slots.data() + base;
      if (mass_valid_) {
        const int32_t group = mass_heads_ / kvh;
        for (int32_t q = h * group; q < (h + 1) * group; ++q) {
          const float* m = mass_.data() + (i * mass_heads_ + q) * mass_stride_;
          for (int32_t j = 0; j < ps.view_n; ++j) score[j] += m[j];
        }
      }
      int32_t evicted = 0;
      if (ps.action == EvictingKvManager::Action::kCompress) {
        policy.SelectKeep(pos, score, ps.view_n, ps.length, s.budget, &keep_);
        for (int32_t j = 0; j < static_cast<int32_t>(keep_.size()); ++j) {
          const int32_t k = keep_[j];
          if (k == j) continue;
          MoveHead(layer, h, slots[k], slots[j]);
          pos[j] = pos[k];
          score[j] = score[k];
        }
        evicted = ps.view_n - static_cast<int32_t>(keep_.size());
      } else if (ps.action == EvictingKvManager::Action::kEvict) {
        const int32_t incoming = ps.view_n - 1;
        const int32_t victim = policy.Victim(pos, score, ps.view_n, ps.length, s.budget);
        if (victim != incoming) {
          MoveHead(layer, h, slots[incoming], slots[victim]);
          pos[victim] = pos[incoming];
          score[victim] = score[incoming];
        }
        evicted = 1;
      }
      // Rolling positions: the keys below the bound (the sinks) move `evicted` positions
      // later, so their distance to the next queries is their distance in the cache.
      if (evicted > 0 && shifted_below > 0) {
        for (int32_t j = 0; j < s.budget.total; ++j) {
          if (pos[j] < shifted_below) ShiftKey(layer, h, slots[j], evicted);
        }
      }
    }
  }
  mass_valid_ = false;
}

}  // namespace kvscope::kvcache
